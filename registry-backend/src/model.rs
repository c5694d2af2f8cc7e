//! The registry's documents: an agent, its AgentFacts, filters and pages.
//!
//! Field names follow the seed's MongoDB documents (`agent_id`, `agent_url`,
//! `agentFactsURL`) so data written by the seed and by us can live side by side.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One registered agent, as stored and as returned by the tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub agent_id: String,
    pub agent_url: String,
    #[serde(rename = "agentFactsURL")]
    pub agent_facts_url: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default = "default_general")]
    pub domain: String,
    #[serde(default = "default_general")]
    pub specialization: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

fn default_general() -> String {
    "general".to_owned()
}

fn default_status() -> String {
    "active".to_owned()
}

impl Agent {
    /// Lower-cased text that `query` searches: id, url and description, one per
    /// line so that a match never spans two fields.
    pub fn search_text(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.agent_id.to_lowercase(),
            self.agent_url.to_lowercase(),
            self.description.to_lowercase()
        )
    }

    /// Applies a patch; returns whether anything changed.
    pub fn apply(&mut self, patch: &AgentPatch, now: &str) {
        if let Some(url) = &patch.agent_url {
            self.agent_url = url.clone();
        }
        if let Some(caps) = &patch.capabilities {
            self.capabilities = caps.clone();
        }
        if let Some(domain) = &patch.domain {
            self.domain = domain.clone();
        }
        if let Some(description) = &patch.description {
            self.description = description.clone();
        }
        if let Some(status) = &patch.status {
            self.status = status.clone();
        }
        self.updated_at = Some(now.to_owned());
    }
}

/// The AgentFacts username for an agent id (the seed's rule: `-` becomes `_`).
pub fn facts_username(agent_id: &str) -> String {
    agent_id.replace('-', "_")
}

/// Where the registry says an agent's facts live: resolved by `get_agent_facts`.
pub fn facts_url(agent_id: &str) -> String {
    format!("registry://agent_facts/{}", facts_username(agent_id))
}

/// What `register_agent` needs beyond the agent itself to build its facts.
#[derive(Debug, Clone)]
pub struct FactsInput {
    pub modalities: Vec<String>,
    pub languages: Vec<String>,
    pub streaming: bool,
    pub batch: bool,
}

fn skills(capabilities: &[String], languages: &Value) -> Value {
    Value::Array(
        capabilities
            .iter()
            .map(|cap| {
                json!({
                    "id": cap,
                    "description": format!("Expert {} capability", cap.replace('_', " ")),
                    "inputModes": ["text"],
                    "outputModes": ["text"],
                    "supportedLanguages": languages,
                    "latencyBudgetMs": 2000,
                    "maxTokens": 4000,
                })
            })
            .collect(),
    )
}

/// Builds the AgentFacts document the seed built at registration.
pub fn build_facts(agent: &Agent, input: &FactsInput) -> Value {
    let languages = json!(input.languages);
    json!({
        "id": agent.agent_id,
        "username": facts_username(&agent.agent_id),
        "agent_name": agent.agent_id,
        "description": agent.description,
        "endpoints": { "static": [agent.agent_url] },
        "capabilities": {
            "modalities": input.modalities,
            "streaming": input.streaming,
            "batch": input.batch,
        },
        "skills": skills(&agent.capabilities, &languages),
        "evaluations": { "performanceScore": 0.0 },
        "certification": { "level": "self-declared", "issuer": "nanda-registry" },
        "created_at": agent.created_at,
    })
}

/// Keeps a stored facts document in step with an agent after `update_agent`.
pub fn refresh_facts(facts: &mut Value, agent: &Agent) {
    let languages = facts
        .pointer("/skills/0/supportedLanguages")
        .cloned()
        .unwrap_or_else(|| json!(["en"]));
    if let Some(obj) = facts.as_object_mut() {
        obj.insert("description".into(), json!(agent.description));
        obj.insert("endpoints".into(), json!({ "static": [agent.agent_url] }));
        obj.insert("skills".into(), skills(&agent.capabilities, &languages));
        if let Some(at) = &agent.updated_at {
            obj.insert("updated_at".into(), json!(at));
        }
    }
}

/// Fields `update_agent` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AgentPatch {
    pub agent_url: Option<String>,
    pub capabilities: Option<Vec<String>>,
    pub domain: Option<String>,
    pub description: Option<String>,
    pub status: Option<String>,
}

impl AgentPatch {
    pub fn is_empty(&self) -> bool {
        self.agent_url.is_none()
            && self.capabilities.is_none()
            && self.domain.is_none()
            && self.description.is_none()
            && self.status.is_none()
    }
}

/// Which agents `list_agents` and `search_agents` return. Every set field
/// must match; `capabilities` matches an agent having any of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFilter {
    pub status: Option<String>,
    pub capabilities: Vec<String>,
    pub domain: Option<String>,
    /// Already lower-cased; matched as a plain substring, never as a pattern.
    pub query: Option<String>,
}

/// A page request: agents sorted by id, strictly after `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: usize,
}

/// A page of agents and the cursor for the next one, if there is more.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub agents: Vec<Agent>,
    pub next_cursor: Option<String>,
}

impl Page {
    /// Builds a page from up to `limit + 1` rows fetched in id order.
    pub fn from_rows(mut rows: Vec<Agent>, limit: usize) -> Self {
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|a| Cursor::encode(&a.agent_id))
        } else {
            None
        };
        Page {
            agents: rows,
            next_cursor,
        }
    }
}

/// The opaque pagination cursor: the last id of the previous page.
pub struct Cursor;

impl Cursor {
    const PREFIX: &'static str = "v1:";

    pub fn encode(last_id: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}{last_id}", Self::PREFIX))
    }

    pub fn decode(cursor: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        text.strip_prefix(Self::PREFIX).map(str::to_owned)
    }
}

/// Current time as RFC 3339 (UTC), the format every timestamp here uses.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor::encode("agent-42");
        assert_eq!(Cursor::decode(&c).as_deref(), Some("agent-42"));
        assert_eq!(Cursor::decode("not base64 !"), None);
        assert_eq!(Cursor::decode("eHl6"), None); // "xyz": no version prefix
    }

    #[test]
    fn facts_username_replaces_dashes() {
        assert_eq!(facts_username("my-cool-agent"), "my_cool_agent");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Every id round-trips through a cursor.
        #[test]
        fn any_id_round_trips_through_a_cursor(id in "\\PC{0,200}") {
            proptest::prop_assert_eq!(Cursor::decode(&Cursor::encode(&id)), Some(id));
        }

        /// A cursor we did not issue is refused or decodes to some id; never a panic.
        #[test]
        fn arbitrary_cursors_never_panic(raw in "\\PC{0,300}") {
            let _ = Cursor::decode(&raw);
        }
    }
}
