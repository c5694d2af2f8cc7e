//! Where agents live. One small trait, two implementations that pass the same
//! suite (`tests/store_suite.rs`): the embedded SQLite file (the default, safe
//! to share between processes on one host) and MongoDB.
//!
//! Invariant: every method either does all of its writes or none of them, so a
//! failed call never leaves an agent without its facts or the reverse.

use async_trait::async_trait;
use serde_json::Value;
use thiserror::Error;

use crate::model::{Agent, AgentFilter, AgentPatch, Page, PageRequest};

pub mod mongo;
pub mod sqlite;

pub use mongo::MongoStore;
pub use sqlite::SqliteStore;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("Agent ID already exists")]
    AlreadyExists,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// A short name for logs and health output ("sqlite", "mongodb").
    fn kind(&self) -> &'static str;

    /// Stores a new agent and its facts together; `AlreadyExists` if the id is taken.
    async fn insert(&self, agent: &Agent, facts: &Value) -> StoreResult<()>;

    async fn get(&self, agent_id: &str) -> StoreResult<Option<Agent>>;

    /// Agents matching `filter`, in id order, after the page cursor.
    async fn list(&self, filter: &AgentFilter, page: &PageRequest) -> StoreResult<Page>;

    /// Applies `patch` (and keeps the facts in step); `None` if there is no such agent.
    async fn update(
        &self,
        agent_id: &str,
        patch: &AgentPatch,
        now: &str,
    ) -> StoreResult<Option<Agent>>;

    /// Removes the agent and its facts; `false` if there was no such agent.
    async fn delete(&self, agent_id: &str) -> StoreResult<bool>;

    /// The facts document whose `username` or `agent_name` equals `name`.
    async fn facts(&self, name: &str) -> StoreResult<Option<Value>>;

    /// Cheap round trip proving the store answers.
    async fn ping(&self) -> StoreResult<()>;
}
