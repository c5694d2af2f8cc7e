//! The MongoDB store, on the official driver: the seed's layout (database
//! `nanda_private_registry`, collections `agents` and `agent_facts`).
//!
//! MongoDB has no multi-collection transaction without a replica set, so
//! `insert` writes the agent first (the unique index decides duplicates) and
//! undoes it if the facts cannot be written: a failed call leaves nothing.

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde_json::Value;

use super::{AgentStore, StoreError, StoreResult};
use crate::model::{
    Agent, AgentFilter, AgentPatch, Page, PageRequest, facts_username, refresh_facts,
};

pub const DEFAULT_DATABASE: &str = "nanda_private_registry";
const DUPLICATE_KEY: i32 = 11000;

pub struct MongoStore {
    client: Client,
    agents: Collection<Document>,
    facts: Collection<Document>,
}

fn mongo_err(e: mongodb::error::Error) -> StoreError {
    match *e.kind {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
        || matches!(&*e.kind, ErrorKind::Command(c) if c.code == DUPLICATE_KEY)
}

fn bson_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("document conversion: {e}"))
}

fn to_doc(agent: &Agent) -> StoreResult<Document> {
    let mut doc = bson::to_document(agent).map_err(bson_err)?;
    // A lower-cased copy of the searchable text, like the SQLite column, so
    // that `query` is a plain substring match in both stores.
    doc.insert("search_text", agent.search_text());
    Ok(doc)
}

fn from_doc(doc: Document) -> StoreResult<Agent> {
    bson::from_document(doc).map_err(bson_err)
}

fn to_json(mut doc: Document) -> Value {
    doc.remove("_id");
    Bson::Document(doc).into_relaxed_extjson()
}

/// Escapes every ASCII punctuation character so user text matches literally
/// (a backslash before a non-alphanumeric character is always a literal in
/// PCRE and in Python's `re`). User input is never run as a pattern.
pub fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn filter_doc(filter: &AgentFilter, after: Option<&str>) -> Document {
    let mut f = Document::new();
    if let Some(after) = after {
        f.insert("agent_id", doc! { "$gt": after });
    }
    if let Some(status) = &filter.status {
        f.insert("status", status.as_str());
    }
    if let Some(domain) = &filter.domain {
        f.insert("domain", domain.as_str());
    }
    if !filter.capabilities.is_empty() {
        f.insert("capabilities", doc! { "$in": filter.capabilities.clone() });
    }
    if let Some(q) = &filter.query {
        f.insert("search_text", doc! { "$regex": escape_regex(q) });
    }
    f
}

impl MongoStore {
    /// Connects and makes sure the indexes exist.
    pub async fn connect(uri: &str, database: &str) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(mongo_err)?;
        options.app_name = Some("registry-backend".into());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        let client = Client::with_options(options).map_err(mongo_err)?;
        let db = client.database(database);
        let store = Self {
            agents: db.collection("agents"),
            facts: db.collection("agent_facts"),
            client,
        };
        store.ensure_indexes().await?;
        Ok(store)
    }

    async fn ensure_indexes(&self) -> StoreResult<()> {
        let unique = |keys: Document| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(true).build())
                .build()
        };
        let plain = |keys: Document| IndexModel::builder().keys(keys).build();
        self.agents
            .create_index(unique(doc! { "agent_id": 1 }))
            .await
            .map_err(mongo_err)?;
        for keys in [
            doc! { "status": 1, "agent_id": 1 },
            doc! { "domain": 1, "agent_id": 1 },
            doc! { "capabilities": 1, "agent_id": 1 },
        ] {
            self.agents
                .create_index(plain(keys))
                .await
                .map_err(mongo_err)?;
        }
        self.facts
            .create_index(unique(doc! { "username": 1 }))
            .await
            .map_err(mongo_err)?;
        self.facts
            .create_index(plain(doc! { "agent_name": 1 }))
            .await
            .map_err(mongo_err)?;
        Ok(())
    }

    async fn write_facts(&self, agent_id: &str, facts: &Value) -> StoreResult<()> {
        let doc = bson::to_document(facts).map_err(bson_err)?;
        self.facts
            .replace_one(doc! { "username": facts_username(agent_id) }, doc)
            .upsert(true)
            .await
            .map_err(mongo_err)?;
        Ok(())
    }
}

#[async_trait]
impl AgentStore for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn insert(&self, agent: &Agent, facts: &Value) -> StoreResult<()> {
        match self.agents.insert_one(to_doc(agent)?).await {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => return Err(StoreError::AlreadyExists),
            Err(e) => return Err(mongo_err(e)),
        }
        if let Err(e) = self.write_facts(&agent.agent_id, facts).await {
            // Undo the agent so the failed call leaves nothing behind.
            let _ = self
                .agents
                .delete_one(doc! { "agent_id": &agent.agent_id })
                .await;
            return Err(e);
        }
        Ok(())
    }

    async fn get(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        self.agents
            .find_one(doc! { "agent_id": agent_id })
            .await
            .map_err(mongo_err)?
            .map(from_doc)
            .transpose()
    }

    async fn list(&self, filter: &AgentFilter, page: &PageRequest) -> StoreResult<Page> {
        let cursor = self
            .agents
            .find(filter_doc(filter, page.after.as_deref()))
            .sort(doc! { "agent_id": 1 })
            .limit((page.limit + 1) as i64)
            .await
            .map_err(mongo_err)?;
        let docs: Vec<Document> = cursor.try_collect().await.map_err(mongo_err)?;
        let agents = docs
            .into_iter()
            .map(from_doc)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Page::from_rows(agents, page.limit))
    }

    async fn update(
        &self,
        agent_id: &str,
        patch: &AgentPatch,
        now: &str,
    ) -> StoreResult<Option<Agent>> {
        let Some(mut agent) = self.get(agent_id).await? else {
            return Ok(None);
        };
        agent.apply(patch, now);
        let result = self
            .agents
            .replace_one(doc! { "agent_id": agent_id }, to_doc(&agent)?)
            .await
            .map_err(mongo_err)?;
        if result.matched_count == 0 {
            return Ok(None); // deleted between our read and write
        }
        if let Some(mut facts) = self.facts(agent_id).await? {
            refresh_facts(&mut facts, &agent);
            self.write_facts(agent_id, &facts).await?;
        }
        Ok(Some(agent))
    }

    async fn delete(&self, agent_id: &str) -> StoreResult<bool> {
        let result = self
            .agents
            .delete_one(doc! { "agent_id": agent_id })
            .await
            .map_err(mongo_err)?;
        self.facts
            .delete_many(doc! { "agent_name": agent_id })
            .await
            .map_err(mongo_err)?;
        Ok(result.deleted_count > 0)
    }

    async fn facts(&self, name: &str) -> StoreResult<Option<Value>> {
        Ok(self
            .facts
            .find_one(doc! { "$or": [ { "username": name }, { "agent_name": name } ] })
            .await
            .map_err(mongo_err)?
            .map(to_json))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(mongo_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::escape_regex;

    #[test]
    fn regex_metacharacters_are_escaped() {
        assert_eq!(escape_regex("a.b*(c)"), "a\\.b\\*\\(c\\)");
        assert_eq!(escape_regex("plain42"), "plain42");
        assert_eq!(escape_regex("é"), "é");
    }
}
