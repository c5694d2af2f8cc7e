//! `mcp-client a2a send AGENT_ID "message"`: look the agent up in the
//! registry (`get_agent`), then talk to it over A2A.

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Output;
use crate::connect::{Connection, result_text};

pub async fn send(
    conn: &Connection,
    http: &reqwest::Client,
    agent_id: &str,
    message: &str,
    context_id: Option<&str>,
    output: Output,
) -> Result<()> {
    let found = conn
        .call("get_agent", json!({ "agent_id": agent_id }))
        .await?;
    let text = result_text(&found);
    if found.is_error.unwrap_or(false) {
        bail!("get_agent {agent_id}: {text}");
    }
    let agent: serde_json::Value =
        serde_json::from_str(&text).context("get_agent returned no JSON")?;
    let url = agent["agent_url"]
        .as_str()
        .context("the agent has no agent_url")?;
    let reply = crate::a2a::send(http, url, message, context_id).await?;
    match output {
        Output::Json => println!(
            "{}",
            json!({"status": "success", "agent_name": reply.agent_name, "response": reply.text, "context_id": reply.context_id})
        ),
        Output::Pretty => {
            println!("{}: {}", reply.agent_name, reply.text);
            if let Some(c) = reply.context_id {
                eprintln!("(context id {c}; pass --context-id to continue)");
            }
        }
    }
    Ok(())
}
