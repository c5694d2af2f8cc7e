//! `mcp-client chat`: the seed's agentic loop. Each user message goes to the
//! model with every MCP tool plus a local `send_a2a_message`; tool calls run
//! (MCP through the session, A2A directly to the agent); results go back;
//! at most `--max-iterations` model calls per message. History is kept
//! across turns. Lines come from the terminal or from stdin.

use std::io::BufRead;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::connect::{Connection, result_text};
use crate::llm::{Conversation, Provider, ToolSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    Anthropic,
    Openai,
}

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// Which API to talk to.
    #[arg(long, value_enum, default_value = "anthropic")]
    pub provider: ProviderKind,
    /// Model name.
    #[arg(long, env = "MCP_CHAT_MODEL")]
    pub model: Option<String>,
    /// API base URL (Anthropic: https://api.anthropic.com; OpenAI-compatible: …/v1).
    #[arg(long, env = "MCP_CHAT_BASE_URL")]
    pub base_url: Option<String>,
    /// Most model calls per user message.
    #[arg(long, default_value_t = 10)]
    pub max_iterations: usize,
}

const SYSTEM: &str = "You coordinate AI agents. Use the NANDA registry tools to find agents \
and send_a2a_message to talk to them. Be concise.";

fn provider(args: &ChatArgs) -> Result<Provider> {
    Ok(match args.provider {
        ProviderKind::Anthropic => {
            let Ok(api_key) = std::env::var("ANTHROPIC_API_KEY") else {
                bail!("set ANTHROPIC_API_KEY (or use --provider openai with a local model)");
            };
            Provider::Anthropic {
                base_url: args
                    .base_url
                    .clone()
                    .or_else(|| std::env::var("ANTHROPIC_BASE_URL").ok())
                    .unwrap_or_else(|| "https://api.anthropic.com".into()),
                api_key,
                model: args
                    .model
                    .clone()
                    .unwrap_or_else(|| "claude-sonnet-4-5".into()),
            }
        }
        ProviderKind::Openai => Provider::OpenAi {
            base_url: args
                .base_url
                .clone()
                .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
                .unwrap_or_else(|| "http://127.0.0.1:11434/v1".into()),
            api_key: std::env::var("OPENAI_API_KEY").ok(),
            model: args.model.clone().unwrap_or_else(|| "llama3.1".into()),
        },
    })
}

fn a2a_tool() -> ToolSpec {
    ToolSpec {
        name: "send_a2a_message".into(),
        description: "Send a message to an A2A agent and return its reply".into(),
        schema: json!({"type": "object", "properties": {
            "agent_url": {"type": "string", "description": "The agent's URL (from the registry)"},
            "message": {"type": "string", "description": "What to say"},
            "context_id": {"type": "string", "description": "Continue an earlier conversation"}
        }, "required": ["agent_url", "message"]}),
    }
}

async fn run_tool(
    conn: &Connection,
    http: &reqwest::Client,
    name: &str,
    input: &Value,
) -> (String, bool) {
    if name == "send_a2a_message" {
        let url = input["agent_url"].as_str().unwrap_or_default();
        let message = input["message"].as_str().unwrap_or_default();
        return match crate::a2a::send(http, url, message, input["context_id"].as_str()).await {
            Ok(r) => (json!({"status": "success", "agent_name": r.agent_name, "response": r.text, "context_id": r.context_id}).to_string(), false),
            Err(e) => (json!({"status": "error", "message": format!("{e:#}")}).to_string(), true),
        };
    }
    match conn.call(name, input.clone()).await {
        Ok(r) => (result_text(&r), r.is_error.unwrap_or(false)),
        Err(e) => (
            json!({"status": "error", "message": format!("{e:#}")}).to_string(),
            true,
        ),
    }
}

pub async fn run(conn: &Connection, http: &reqwest::Client, args: &ChatArgs) -> Result<()> {
    let mut tools: Vec<ToolSpec> = conn
        .tools()
        .await?
        .into_iter()
        .map(|t| ToolSpec {
            name: t.name.to_string(),
            description: t.description.map(|d| d.to_string()).unwrap_or_default(),
            schema: Value::Object((*t.input_schema).clone()),
        })
        .collect();
    tools.push(a2a_tool());
    println!("✓ Available MCP tools: {}", tools.len() - 1);
    let mut convo = Conversation::new(provider(args)?, tools, SYSTEM);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("You: ");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let Some(Ok(line)) = lines.next() else { break };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if matches!(line, "quit" | "exit") {
            break;
        }
        convo.user(line);
        let mut done = false;
        for _ in 0..args.max_iterations {
            let turn = convo.step(http).await?;
            if !turn.text.is_empty() {
                println!("Assistant: {}", turn.text);
            }
            if turn.calls.is_empty() {
                done = true;
                break;
            }
            let mut results = Vec::new();
            for call in turn.calls {
                println!("  → {}({})", call.name, call.input);
                let (out, is_error) = run_tool(conn, http, &call.name, &call.input).await;
                results.push((call, out, is_error));
            }
            convo.tool_results(&results);
        }
        if !done {
            println!("(stopped after {} iterations)", args.max_iterations);
        }
    }
    Ok(())
}
