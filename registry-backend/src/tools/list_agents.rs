//! `list_agents`: every agent, optionally only those with one status, a page at a time.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{Registry, ToolResult, optional};
use crate::model::{AgentFilter, Cursor, PageRequest};
use crate::validate::{self, invalid};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Params {
    /// Only agents with this status (e.g. "active")
    #[serde(default)]
    pub status: Option<String>,
    /// Page size, 1-1000 (default 100)
    #[serde(default)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page
    #[serde(default)]
    pub cursor: Option<String>,
}

/// Turns the `cursor` argument into the id to continue after.
pub(crate) fn page(
    limit: Option<i64>,
    cursor: Option<String>,
) -> Result<PageRequest, validate::InvalidArgument> {
    let limit = validate::limit(limit)?;
    let after = match optional(cursor) {
        None => None,
        Some(c) => Some(
            Cursor::decode(&c)
                .ok_or_else(|| invalid("cursor", "is not a cursor this registry issued"))?,
        ),
    };
    Ok(PageRequest { after, limit })
}

pub async fn run(registry: &Registry, p: Params) -> ToolResult {
    let status = optional(p.status);
    if let Some(s) = &status {
        validate::text("status", s)?;
    }
    let page = page(p.limit, p.cursor)?;
    let filter = AgentFilter {
        status,
        ..AgentFilter::default()
    };
    let result = registry.store.list(&filter, &page).await?;
    Ok(json!({
        "count": result.agents.len(),
        "agents": result.agents,
        "next_cursor": result.next_cursor,
    }))
}
