//! The eight registry tools, one file each. A tool file holds its argument
//! struct (which is also its input schema) and a `run` function that
//! validates, talks to the store and returns JSON; [`crate::server`] only
//! registers them with MCP. Every failure becomes a [`ToolError`], which the
//! server turns into an MCP tool error (`isError: true`).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::store::{AgentStore, StoreError};
use crate::validate::InvalidArgument;

pub mod delete_agent;
pub mod get_agent;
pub mod get_agent_facts;
pub mod health_check;
pub mod list_agents;
pub mod register_agent;
pub mod search_agents;
pub mod update_agent;

/// What every tool runs against.
pub struct Registry {
    pub store: Arc<dyn AgentStore>,
    pub instance: String,
    /// Tool latency and failures, for `/metrics`.
    pub metrics: crate::metrics::ToolMetrics,
}

#[derive(Debug, Error)]
pub enum ToolError {
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    #[error("Agent ID already exists")]
    AlreadyExists,
    /// The agent's facts username belongs to another agent.
    #[error("{0}")]
    FactsNameTaken(String),
    #[error("Agent not found")]
    NotFound,
    #[error("Agent facts not found")]
    FactsNotFound,
    #[error("Registry storage is unavailable, try again shortly ({0})")]
    Unavailable(String),
    #[error("Internal registry error ({0})")]
    Internal(String),
}

impl From<StoreError> for ToolError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists => ToolError::AlreadyExists,
            e @ StoreError::FactsNameTaken { .. } => ToolError::FactsNameTaken(e.to_string()),
            StoreError::Unavailable(m) => ToolError::Unavailable(m),
            StoreError::Internal(m) => ToolError::Internal(m),
        }
    }
}

impl ToolError {
    /// The seed's error shape, kept so its clients read our errors unchanged.
    pub fn to_json(&self) -> Value {
        json!({ "status": "error", "message": self.to_string() })
    }
}

pub type ToolResult = Result<Value, ToolError>;

/// A list argument given either as a JSON array or as one comma-separated
/// string (what people and models type); both mean the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StringList {
    Many(Vec<String>),
    Commas(String),
}

impl StringList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StringList::Many(items) => items.into_iter().map(|s| s.trim().to_owned()).collect(),
            StringList::Commas(text) => text
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

impl From<&[&str]> for StringList {
    fn from(items: &[&str]) -> Self {
        StringList::Many(items.iter().map(|s| (*s).to_owned()).collect())
    }
}

/// Turns an optional string argument into a filter value: blank means "any".
pub(crate) fn optional(value: Option<String>) -> Option<String> {
    value.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_lists_accept_arrays_and_commas() {
        let a: StringList = serde_json::from_value(json!(["chat", " code "])).unwrap();
        assert_eq!(a.into_vec(), vec!["chat", "code"]);
        let b: StringList = serde_json::from_value(json!("chat, code,,")).unwrap();
        assert_eq!(b.into_vec(), vec!["chat", "code"]);
    }
}
