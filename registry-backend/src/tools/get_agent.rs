//! `get_agent`: one agent by id.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Registry, ToolError, ToolResult};
use crate::validate;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Params {
    /// The agent's id
    pub agent_id: String,
}

pub async fn run(registry: &Registry, p: Params) -> ToolResult {
    validate::agent_id("agent_id", &p.agent_id)?;
    let agent = registry
        .store
        .get(&p.agent_id)
        .await?
        .ok_or(ToolError::NotFound)?;
    serde_json::to_value(agent).map_err(|e| ToolError::Internal(e.to_string()))
}
