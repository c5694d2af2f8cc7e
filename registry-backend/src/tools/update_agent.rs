//! `update_agent`: changes an agent's url, capabilities, domain, description or status.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Registry, StringList, ToolError, ToolResult};
use crate::model::{AgentPatch, now_rfc3339};
use crate::validate::{self, invalid};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Params {
    /// The agent's id
    pub agent_id: String,
    /// New A2A endpoint (http:// or https://)
    #[serde(default)]
    pub agent_url: Option<String>,
    /// New capabilities (replaces the old list)
    #[serde(default)]
    pub capabilities: Option<StringList>,
    /// New domain
    #[serde(default)]
    pub domain: Option<String>,
    /// New description
    #[serde(default)]
    pub description: Option<String>,
    /// New status (e.g. "active", "inactive")
    #[serde(default)]
    pub status: Option<String>,
}

pub async fn run(registry: &Registry, p: Params) -> ToolResult {
    validate::agent_id("agent_id", &p.agent_id)?;
    let patch = AgentPatch {
        agent_url: p.agent_url,
        capabilities: p.capabilities.map(StringList::into_vec),
        domain: p.domain,
        description: p.description,
        status: p.status,
    };
    if let Some(url) = &patch.agent_url {
        validate::url("agent_url", url)?;
    }
    if let Some(caps) = &patch.capabilities {
        validate::list("capabilities", caps)?;
    }
    if let Some(domain) = &patch.domain {
        validate::non_empty_text("domain", domain)?;
    }
    if let Some(description) = &patch.description {
        validate::text("description", description)?;
    }
    if let Some(status) = &patch.status {
        validate::non_empty_text("status", status)?;
    }
    if patch.is_empty() {
        return Err(invalid(
            "agent_url",
            "nothing to update: give agent_url, capabilities, domain, description or status",
        )
        .into());
    }
    let agent = registry
        .store
        .update(&p.agent_id, &patch, &now_rfc3339())
        .await?
        .ok_or(ToolError::NotFound)?;
    Ok(json!({
        "status": "success",
        "message": format!("Agent {} updated", agent.agent_id),
        "agent": agent,
    }))
}
