//! `search_agents`: agents having any of the given capabilities, in a domain,
//! and/or whose id, url or description contains `query` (case-insensitive).
//!
//! Unlike the seed, all three filters apply, and `query` is plain text: it is
//! never run as a regular expression.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Registry, StringList, ToolResult, optional};
use crate::model::AgentFilter;
use crate::validate;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Params {
    /// Agents with any of these capabilities (a list, or one comma-separated string)
    #[serde(default)]
    pub capabilities: Option<StringList>,
    /// Only agents in this domain
    #[serde(default)]
    pub domain: Option<String>,
    /// Text to find (case-insensitive substring) in the agent's id, url or description
    #[serde(default)]
    pub query: Option<String>,
    /// Page size, 1-1000 (default 100)
    #[serde(default)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page
    #[serde(default)]
    pub cursor: Option<String>,
}

pub async fn run(registry: &Registry, p: Params) -> ToolResult {
    let capabilities = p.capabilities.map(StringList::into_vec).unwrap_or_default();
    validate::list("capabilities", &capabilities)?;
    let domain = optional(p.domain);
    if let Some(d) = &domain {
        validate::text("domain", d)?;
    }
    let query = optional(p.query);
    if let Some(q) = &query {
        validate::text("query", q)?;
    }
    let page = super::list_agents::page(p.limit, p.cursor)?;
    let filter = AgentFilter {
        status: None,
        capabilities: capabilities.clone(),
        domain: domain.clone(),
        query: query.as_deref().map(str::to_lowercase),
    };
    let result = registry.store.list(&filter, &page).await?;
    Ok(json!({
        "count": result.agents.len(),
        "agents": result.agents,
        "query": query,
        "capabilities": capabilities,
        "domain": domain,
        "next_cursor": result.next_cursor,
    }))
}
