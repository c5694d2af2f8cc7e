//! `delete_agent`: removes an agent and its facts.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Registry, ToolError, ToolResult};
use crate::validate;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Params {
    /// The agent's id
    pub agent_id: String,
}

pub async fn run(registry: &Registry, p: Params) -> ToolResult {
    validate::agent_id("agent_id", &p.agent_id)?;
    if !registry.store.delete(&p.agent_id).await? {
        return Err(ToolError::NotFound);
    }
    Ok(json!({
        "status": "success",
        "message": format!("Agent {} deleted", p.agent_id),
        "agent_id": p.agent_id,
    }))
}
