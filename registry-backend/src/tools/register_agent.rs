//! `register_agent`: stores a new agent and the AgentFacts document built for it.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Registry, StringList, ToolError, ToolResult};
use crate::model::{Agent, FactsInput, build_facts, facts_url, facts_username, now_rfc3339};
use crate::validate;

fn default_capabilities() -> StringList {
    StringList::from(&["chat"][..])
}
fn default_general() -> String {
    "general".into()
}
fn default_modalities() -> StringList {
    StringList::from(&["text"][..])
}
fn default_languages() -> StringList {
    StringList::from(&["en"][..])
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Params {
    /// Unique id: 1-128 characters from A-Z a-z 0-9 . _ : -
    pub agent_id: String,
    /// The agent's A2A endpoint (http:// or https://)
    pub agent_url: String,
    /// What the agent can do, e.g. ["chat", "code_review"]
    #[serde(default = "default_capabilities")]
    pub capabilities: StringList,
    /// Domain of expertise
    #[serde(default = "default_general")]
    pub domain: String,
    /// Specialization within the domain
    #[serde(default = "default_general")]
    pub specialization: String,
    /// Free text; defaults to "Expert {specialization} agent in {domain} domain"
    #[serde(default)]
    pub description: Option<String>,
    /// Input/output modalities
    #[serde(default = "default_modalities")]
    pub modalities: StringList,
    /// Supported languages
    #[serde(default = "default_languages")]
    pub languages: StringList,
    /// Whether the agent streams responses
    #[serde(default)]
    pub streaming: bool,
    /// Whether the agent accepts batch requests
    #[serde(default = "default_true")]
    pub batch: bool,
}

pub async fn run(registry: &Registry, p: Params) -> ToolResult {
    validate::agent_id("agent_id", &p.agent_id)?;
    validate::url("agent_url", &p.agent_url)?;
    let capabilities = p.capabilities.into_vec();
    validate::list("capabilities", &capabilities)?;
    validate::non_empty_text("domain", &p.domain)?;
    validate::non_empty_text("specialization", &p.specialization)?;
    let description = match p.description.filter(|d| !d.trim().is_empty()) {
        Some(d) => d,
        None => format!("Expert {} agent in {} domain", p.specialization, p.domain),
    };
    validate::text("description", &description)?;
    let modalities = p.modalities.into_vec();
    validate::list("modalities", &modalities)?;
    let languages = p.languages.into_vec();
    validate::list("languages", &languages)?;

    let agent = Agent {
        agent_facts_url: facts_url(&p.agent_id),
        agent_id: p.agent_id,
        agent_url: p.agent_url,
        capabilities,
        domain: p.domain.trim().to_owned(),
        specialization: p.specialization,
        description,
        status: "active".into(),
        created_at: now_rfc3339(),
        updated_at: None,
    };
    let facts = build_facts(
        &agent,
        &FactsInput {
            modalities,
            languages,
            streaming: p.streaming,
            batch: p.batch,
        },
    );
    registry
        .store
        .insert(&agent, &facts)
        .await
        .map_err(ToolError::from)?;
    Ok(json!({
        "status": "success",
        "message": format!("Agent {} registered", agent.agent_id),
        "agent_id": agent.agent_id,
        "agent_facts_username": facts_username(&agent.agent_id),
        "agent": agent,
    }))
}
