//! `mcp-client repl`: an interactive shell over one session, with history
//! and tab completion of tool names. Lines are `TOOL key=value …`, `tools`,
//! `help` or `quit`. Reads plain lines when stdin is not a terminal.

use std::borrow::Cow;

use anyhow::Result;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use super::Output;
use crate::connect::Connection;

struct ToolNames(Vec<String>);

impl Completer for ToolNames {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        if head.contains(' ') {
            return Ok((pos, Vec::new()));
        }
        let words = self
            .0
            .iter()
            .map(String::as_str)
            .chain(["tools", "help", "quit"]);
        let matches = words
            .filter(|w| w.starts_with(head))
            .map(|w| Pair {
                display: w.to_owned(),
                replacement: format!("{w} "),
            })
            .collect();
        Ok((0, matches))
    }
}
impl Hinter for ToolNames {
    type Hint = String;
}
impl Highlighter for ToolNames {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        Cow::Borrowed(prompt)
    }
}
impl Validator for ToolNames {}
impl Helper for ToolNames {}

/// Splits a line into words, honouring single and double quotes.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

pub async fn run(conn: &Connection) -> Result<()> {
    let tools = conn.tools().await?;
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    let mut editor: Editor<ToolNames, rustyline::history::DefaultHistory> = Editor::new()?;
    editor.set_helper(Some(ToolNames(names.clone())));
    println!(
        "connected ({:?}); {} tools. Type `help`, a tool name (Tab completes), or `quit`.",
        conn.transport,
        names.len()
    );
    loop {
        let line = match editor.readline("mcp> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let words = split_words(&line);
        let Some((first, rest)) = words.split_first() else {
            continue;
        };
        let _ = editor.add_history_entry(line.as_str());
        match first.as_str() {
            "quit" | "exit" => break,
            "help" => println!(
                "TOOL key=value …   call a tool (values may be JSON)\ntools              list tools\nquit               leave"
            ),
            "tools" => print!("{}", super::tools::render(&tools)),
            tool => {
                let args = match super::call::build_args(rest, None) {
                    Ok(a) => a,
                    Err(e) => {
                        println!("error: {e:#}");
                        continue;
                    }
                };
                if let Err(e) = super::call::run(conn, tool, args, Output::Pretty).await {
                    println!("error: {e:#}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn words_respect_quotes() {
        assert_eq!(
            split_words(r#"get_agent agent_id='a b' x="c d"  y=1"#),
            vec!["get_agent", "agent_id=a b", "x=c d", "y=1"]
        );
        assert!(split_words("   ").is_empty());
    }
}
