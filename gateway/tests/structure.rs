//! The gateway's shape, held by test: the floors of `gateway/src` are the
//! table between `<!-- floors -->` and `<!-- /floors -->` in ARCHITECTURE.md
//! (listed there once); every source file is on a floor, and none imports a
//! module on a floor above its own. Functions stay short: none in
//! `gateway/src` over [`MAX_FN_LINES`], and none on the request path (the
//! files named in [`REQUEST_PATH`]) over [`MAX_REQUEST_FN_LINES`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAX_FN_LINES: usize = 100;
const MAX_REQUEST_FN_LINES: usize = 80;
/// The files every MCP request runs through.
const REQUEST_PATH: &[&str] = &[
    "proxy.rs",
    "streamable.rs",
    "legacy/",
    "session/",
    "relay/",
    "respond.rs",
    "asks.rs",
    "policy/",
    "state.rs",
    "upstream.rs",
    "stdio/http.rs",
    "stdio/process.rs",
    "stdio/routes.rs",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src`, as a path relative to it ("legacy/stream.rs").
fn sources() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under src");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &src(), &mut out);
    out.sort();
    out
}

/// The floors, top first: each a list of file names (`x.rs`) and folders (`x/`).
fn floors() -> Vec<(String, Vec<String>)> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
    let text = std::fs::read_to_string(&doc).expect("ARCHITECTURE.md is readable");
    let start = text
        .find("<!-- floors -->")
        .expect("ARCHITECTURE.md marks its floors table");
    let end = text.find("<!-- /floors -->").expect("… and where it ends");
    text[start..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| floor"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let names = cells[2]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            (cells[1].to_owned(), names)
        })
        .collect()
}

/// The floor (0 = top) of a source file, by its name or its folder.
fn floor_of(file: &str, floors: &[(String, Vec<String>)]) -> Option<usize> {
    floors.iter().position(|(_, names)| {
        names
            .iter()
            .any(|n| n == file || (n.ends_with('/') && file.starts_with(n.as_str())))
    })
}

/// The top-level modules a file names through `crate::…` in its code
/// (comments, doc links among them, do not count).
fn imports(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let text = code.as_str();
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// The file (or folder) a top-level module lives in.
fn module_file(name: &str, files: &[String]) -> Option<String> {
    let file = format!("{name}.rs");
    if files.contains(&file) {
        return Some(file);
    }
    let folder = format!("{name}/");
    files
        .iter()
        .any(|f| f.starts_with(&folder))
        .then_some(folder)
}

fn code_without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn no_gateway_module_imports_one_on_a_floor_above_it() {
    let floors = floors();
    assert!(floors.len() >= 4, "the floors table: {floors:?}");
    let files = sources();
    let mut unlisted = Vec::new();
    let mut upward = Vec::new();
    for file in files.iter().filter(|f| *f != "lib.rs") {
        let Some(mine) = floor_of(file, &floors) else {
            unlisted.push(file.clone());
            continue;
        };
        let text = std::fs::read_to_string(src().join(file)).expect("a source file");
        for name in imports(code_without_tests(&text)) {
            let Some(target) = module_file(&name, &files) else {
                continue;
            };
            let theirs = floor_of(&target, &floors).unwrap_or(usize::MAX);
            if theirs < mine {
                upward.push(format!(
                    "{file} ({}) uses crate::{name} ({})",
                    floors[mine].0,
                    floors.get(theirs).map_or("no floor", |f| f.0.as_str())
                ));
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "files on no floor (add them to ARCHITECTURE.md): {unlisted:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that run up a floor: {upward:#?}"
    );
}

/// Module name (`relay`, `session`, …) of a source file.
fn module_of(file: &str) -> String {
    file.split(['/', '.']).next().unwrap_or(file).to_owned()
}

#[test]
fn no_two_gateway_modules_import_each_other_in_a_circle() {
    let files = sources();
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files.iter().filter(|f| *f != "lib.rs" && *f != "main.rs") {
        let text = std::fs::read_to_string(src().join(file)).expect("a source file");
        let from = module_of(file);
        for name in imports(code_without_tests(&text)) {
            if name != from && module_file(&name, &files).is_some() {
                let edges = graph.entry(from.clone()).or_default();
                if !edges.contains(&name) {
                    edges.push(name);
                }
            }
        }
    }
    // Depth-first search; a module met again on the current path closes a circle.
    fn visit(
        at: &str,
        graph: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            let mut circle = path[i..].to_vec();
            circle.push(at.to_owned());
            return Some(circle);
        }
        if done.iter().any(|d| d == at) {
            return None;
        }
        path.push(at.to_owned());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.push(at.to_owned());
        None
    }
    let mut done = Vec::new();
    for start in graph.keys() {
        let circle = visit(start, &graph, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "an import circle: {}",
            circle.unwrap_or_default().join(" → ")
        );
    }
}

/// Each function's length in lines (signature to closing brace), by file.
fn function_lengths() -> BTreeMap<String, Vec<(String, usize)>> {
    let mut out = BTreeMap::new();
    for file in sources() {
        let text = std::fs::read_to_string(src().join(&file)).expect("a source file");
        let lines: Vec<&str> = code_without_tests(&text).lines().collect();
        let mut found = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(super) fn ",
                "pub(super) async fn ",
                "pub(crate) fn ",
                "pub(crate) async fn ",
            ]
            .iter()
            .any(|p| trimmed.starts_with(p));
            if !is_fn {
                continue;
            }
            let name: String = trimmed
                .split("fn ")
                .nth(1)
                .unwrap_or("")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let closing = format!("{indent}}}");
            // A declaration without a body (a trait's) ends in ';' before any '{'.
            let body = lines[i..].iter().position(|l| *l == closing);
            let declared = lines[i..]
                .iter()
                .position(|l| l.trim_end().ends_with(';') || l.trim_end().ends_with('{'));
            if let (Some(end), Some(head)) = (body, declared)
                && lines[i + head].trim_end().ends_with('{')
            {
                found.push((name, end + 1));
            }
        }
        out.insert(file, found);
    }
    out
}

#[test]
fn functions_stay_short_and_request_path_ones_shorter() {
    let mut long = Vec::new();
    for (file, fns) in function_lengths() {
        let request_path = REQUEST_PATH
            .iter()
            .any(|p| file == *p || (p.ends_with('/') && file.starts_with(p)));
        let max = if request_path {
            MAX_REQUEST_FN_LINES
        } else {
            MAX_FN_LINES
        };
        for (name, n) in fns {
            if n > max {
                long.push(format!("{file}: {name} has {n} lines (at most {max})"));
            }
        }
    }
    assert!(long.is_empty(), "functions to split: {long:#?}");
}

#[test]
fn the_checks_see_imports_and_lengths() {
    // The parsers above, on known input: a test that could not fail is no test.
    let text = "use crate::relay::{self, Sink};\nfn f() { crate::state::State::new(); }\n//! [`x`](crate::asks::Tag)\n";
    assert_eq!(imports(text), vec!["relay", "state"]);
    let lengths = function_lengths();
    let relay = lengths
        .get("relay/mod.rs")
        .expect("relay/mod.rs is measured");
    assert!(
        relay.iter().any(|(name, n)| name == "refuse" && *n > 3),
        "{relay:?}"
    );
}
