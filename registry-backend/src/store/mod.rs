//! Where agents live. One small trait, two implementations that pass the same
//! suite (`tests/store_suite.rs`): the embedded SQLite file (the default, safe
//! to share between processes on one host) and MongoDB.
//!
//! Invariants, on both stores (each has a test in `tests/store_suite.rs`):
//! - every method either does all of its writes or none of them, so a failed
//!   call never leaves an agent without its facts or the reverse (SQLite: one
//!   transaction; MongoDB: a multi-document transaction where the deployment
//!   has them, else ordered writes with a compensating undo);
//! - an agent's facts are its own: a registration whose facts username (the
//!   id with `-` → `_`) belongs to another agent is refused, writing nothing;
//! - concurrent updates never lose each other's fields, and an update racing
//!   a delete never leaves facts behind.

use std::sync::atomic::{AtomicBool, Ordering};

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
    #[error(
        "AgentFacts username '{username}' is already used by agent '{owner}' (ids that differ only by '-' and '_' share a username); choose another agent_id"
    )]
    FactsNameTaken { username: String, owner: String },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A fault hook for tests: armed, it fails the next operation that writes
/// twice (insert, update, delete) right after its first write, so a test can
/// prove the store leaves nothing half-written. Unarmed it costs one atomic load.
#[derive(Debug, Default)]
pub struct FaultHook(AtomicBool);

impl FaultHook {
    pub fn arm(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Called between the two writes of an operation.
    pub fn check(&self) -> StoreResult<()> {
        if self.0.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Internal(
                "injected fault between two writes".into(),
            ));
        }
        Ok(())
    }
}

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

    /// The facts document whose `username` equals `name`, else the one whose
    /// `agent_name` does (the username wins, so a name never resolves to
    /// another agent's facts through the looser rule).
    async fn facts(&self, name: &str) -> StoreResult<Option<Value>>;

    /// Cheap round trip proving the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// The store's fault hook (tests arm it; see [`FaultHook`]).
    fn faults(&self) -> &FaultHook;
}
