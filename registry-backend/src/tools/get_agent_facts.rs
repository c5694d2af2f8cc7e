//! `get_agent_facts`: the AgentFacts document stored at registration.

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Registry, ToolError, ToolResult};
use crate::validate;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Params {
    /// The facts username: the agent id with "-" replaced by "_" (the agent id itself also works)
    pub username: String,
}

pub async fn run(registry: &Registry, p: Params) -> ToolResult {
    validate::agent_id("username", &p.username)?;
    registry
        .store
        .facts(&p.username)
        .await?
        .ok_or(ToolError::FactsNotFound)
}
