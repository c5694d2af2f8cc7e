//! The MongoDB store, on the official driver: the seed's layout (database
//! `nanda_private_registry`, collections `agents` and `agent_facts`).
//!
//! All or nothing: where the deployment runs transactions (a replica set or a
//! sharded cluster — Atlas always), each operation's two writes share one
//! multi-document transaction. Elsewhere (a standalone server) the writes
//! are ordered so the first is the one that counts, and a failure of the
//! second undoes the first (a compensating write).
//!
//! No lost updates: every agent document carries a revision (`rev`);
//! `update` reads, applies the patch and writes back only if `rev` is still
//! what it read (compare-and-swap), retrying on a clash. Facts carry the
//! revision they were built from (`agent_rev`) and are only replaced by a
//! newer one, never upserted, so an update racing a delete cannot bring
//! deleted facts back.

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, ClientSession, Collection, IndexModel};
use serde_json::Value;

use super::{AgentStore, FaultHook, StoreError, StoreResult};
use crate::model::{
    Agent, AgentFilter, AgentPatch, Page, PageRequest, facts_username, refresh_facts,
};

pub const DEFAULT_DATABASE: &str = "nanda_private_registry";
const DUPLICATE_KEY: i32 = 11000;
/// Compare-and-swap rounds before an update gives up under contention.
const MAX_TRIES: usize = 64;

/// Whether to wrap each operation's writes in a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transactions {
    /// When the server says it can (replica set or sharded cluster).
    Auto,
    /// Always (fails at start if the server cannot).
    On,
    /// Never: ordered writes with compensation.
    Off,
}

pub struct MongoStore {
    client: Client,
    agents: Collection<Document>,
    facts: Collection<Document>,
    transactions: bool,
    faults: FaultHook,
}

/// Runs a driver action inside the operation's transaction when there is one.
macro_rules! run {
    ($action:expr, $txn:expr) => {
        match $txn.as_mut() {
            Some(session) => $action.session(&mut *session).await,
            None => $action.await,
        }
    };
}

/// One compare-and-swap round of `update`.
enum Round {
    Done(Option<Box<Agent>>),
    Clash,
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

fn is_transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Internal(m) if m.contains("TransientTransactionError") || m.contains("WriteConflict"))
}

fn to_doc(agent: &Agent, rev: i64) -> StoreResult<Document> {
    let mut doc = bson::to_document(agent).map_err(bson_err)?;
    // A lower-cased copy of the searchable text, like the SQLite column, so
    // that `query` is a plain substring match in both stores.
    doc.insert("search_text", agent.search_text());
    doc.insert("rev", rev);
    Ok(doc)
}

/// Matches the document at the revision that was read (legacy documents have none).
fn at_rev(agent_id: &str, rev: Option<i64>) -> Document {
    match rev {
        Some(r) => doc! { "agent_id": agent_id, "rev": r },
        None => doc! { "agent_id": agent_id, "rev": { "$exists": false } },
    }
}

fn from_doc(doc: Document) -> StoreResult<Agent> {
    bson::from_document(doc).map_err(bson_err)
}

fn to_json(mut doc: Document) -> Value {
    doc.remove("_id");
    doc.remove("agent_rev");
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
    /// Connects, decides on transactions, and makes sure the indexes exist.
    pub async fn connect(uri: &str, database: &str, mode: Transactions) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(mongo_err)?;
        options.app_name = Some("registry-backend".into());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        let client = Client::with_options(options).map_err(mongo_err)?;
        let db = client.database(database);
        let hello = db
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(mongo_err)?;
        let can = hello.get_str("setName").is_ok() || hello.get_str("msg") == Ok("isdbgrid");
        let transactions = match mode {
            Transactions::Auto => can,
            Transactions::On if !can => {
                return Err(StoreError::Unavailable(
                    "this MongoDB deployment runs no transactions (standalone server)".into(),
                ));
            }
            Transactions::On => true,
            Transactions::Off => false,
        };
        let store = Self {
            agents: db.collection("agents"),
            facts: db.collection("agent_facts"),
            client,
            transactions,
            faults: FaultHook::default(),
        };
        store.ensure_indexes().await?;
        tracing::info!(transactions, "MongoDB store ready");
        Ok(store)
    }

    pub fn uses_transactions(&self) -> bool {
        self.transactions
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

    /// A started transaction, or `None` when this deployment runs without.
    async fn begin(&self) -> StoreResult<Option<ClientSession>> {
        if !self.transactions {
            return Ok(None);
        }
        let mut session = self.client.start_session().await.map_err(mongo_err)?;
        session.start_transaction().await.map_err(mongo_err)?;
        Ok(Some(session))
    }

    /// Commits on success, aborts on failure; returns the operation's result.
    async fn finish<T>(
        &self,
        txn: Option<ClientSession>,
        result: StoreResult<T>,
    ) -> StoreResult<T> {
        let Some(mut session) = txn else {
            return result;
        };
        match result {
            Ok(v) => {
                session.commit_transaction().await.map_err(mongo_err)?;
                Ok(v)
            }
            Err(e) => {
                let _ = session.abort_transaction().await;
                Err(e)
            }
        }
    }

    /// Who holds a facts username (for the clash message).
    async fn facts_owner(&self, username: &str) -> String {
        self.facts
            .find_one(doc! { "username": username })
            .await
            .ok()
            .flatten()
            .and_then(|d| d.get_str("agent_name").ok().map(str::to_owned))
            .unwrap_or_else(|| "another agent".into())
    }

    /// The agent, then its facts; compensated when there is no transaction.
    async fn insert_writes(
        &self,
        agent: &Agent,
        facts: &Value,
        txn: &mut Option<ClientSession>,
    ) -> StoreResult<()> {
        match run!(self.agents.insert_one(to_doc(agent, 1)?), txn) {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => return Err(StoreError::AlreadyExists),
            Err(e) => return Err(mongo_err(e)),
        }
        let username = facts_username(&agent.agent_id);
        let mut facts_doc = bson::to_document(facts).map_err(bson_err)?;
        facts_doc.insert("agent_rev", 1_i64);
        let second = match self.faults.check() {
            Err(e) => Err(e),
            Ok(()) => match run!(self.facts.insert_one(facts_doc), txn) {
                Ok(_) => Ok(()),
                Err(e) if is_duplicate(&e) => Err(StoreError::FactsNameTaken {
                    owner: self.facts_owner(&username).await,
                    username,
                }),
                Err(e) => Err(mongo_err(e)),
            },
        };
        if second.is_err() && txn.is_none() {
            // Undo the agent so the failed call leaves nothing behind.
            let _ = self
                .agents
                .delete_one(doc! { "agent_id": &agent.agent_id })
                .await;
        }
        second
    }

    /// One compare-and-swap round: read, patch, write back if unchanged, then the facts.
    async fn update_round(
        &self,
        agent_id: &str,
        patch: &AgentPatch,
        now: &str,
        txn: &mut Option<ClientSession>,
    ) -> StoreResult<Round> {
        let found =
            run!(self.agents.find_one(doc! { "agent_id": agent_id }), txn).map_err(mongo_err)?;
        let Some(before) = found else {
            return Ok(Round::Done(None));
        };
        let rev = before.get_i64("rev").ok();
        let mut agent = from_doc(before.clone())?;
        agent.apply(patch, now);
        let new_rev = rev.unwrap_or(0) + 1;
        let written = run!(
            self.agents
                .replace_one(at_rev(agent_id, rev), to_doc(&agent, new_rev)?),
            txn
        )
        .map_err(mongo_err)?;
        if written.matched_count == 0 {
            return Ok(Round::Clash); // changed or deleted since we read it
        }
        if let Err(e) = self.refresh_facts(&agent, new_rev, txn).await {
            if txn.is_none() {
                // Put the agent back as it was, unless it changed again since.
                let mut restore = before;
                restore.insert("rev", new_rev + 1);
                let _ = self
                    .agents
                    .replace_one(at_rev(agent_id, Some(new_rev)), restore)
                    .await;
            }
            return Err(e);
        }
        Ok(Round::Done(Some(Box::new(agent))))
    }

    /// Rebuilds an agent's facts at revision `rev`; never creates them, never
    /// replaces newer ones.
    async fn refresh_facts(
        &self,
        agent: &Agent,
        rev: i64,
        txn: &mut Option<ClientSession>,
    ) -> StoreResult<()> {
        self.faults.check()?;
        let found = run!(
            self.facts.find_one(doc! { "agent_name": &agent.agent_id }),
            txn
        )
        .map_err(mongo_err)?;
        let Some(found) = found else {
            return Ok(());
        };
        let mut facts = to_json(found);
        refresh_facts(&mut facts, agent);
        let mut doc = bson::to_document(&facts).map_err(bson_err)?;
        doc.insert("agent_rev", rev);
        let older = doc! {
            "agent_name": &agent.agent_id,
            "$or": [ { "agent_rev": { "$lt": rev } }, { "agent_rev": { "$exists": false } } ],
        };
        run!(self.facts.replace_one(older, doc), txn).map_err(mongo_err)?;
        Ok(())
    }

    /// The agent (the write that counts), then its facts; compensated without a transaction.
    async fn delete_writes(
        &self,
        agent_id: &str,
        txn: &mut Option<ClientSession>,
    ) -> StoreResult<bool> {
        let removed = run!(
            self.agents
                .find_one_and_delete(doc! { "agent_id": agent_id }),
            txn
        )
        .map_err(mongo_err)?;
        let second = match self.faults.check() {
            Err(e) => Err(e),
            Ok(()) => run!(self.facts.delete_many(doc! { "agent_name": agent_id }), txn)
                .map(|_| ())
                .map_err(mongo_err),
        };
        if let Err(e) = second {
            if let (Some(agent), None) = (removed, txn.as_ref()) {
                // Bring the agent back: its facts are still there.
                let _ = self.agents.insert_one(agent).await;
            }
            return Err(e);
        }
        Ok(removed.is_some())
    }
}

#[async_trait]
impl AgentStore for MongoStore {
    fn kind(&self) -> &'static str {
        "mongodb"
    }

    async fn insert(&self, agent: &Agent, facts: &Value) -> StoreResult<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut txn = self.begin().await?;
            let result = self.insert_writes(agent, facts, &mut txn).await;
            match self.finish(txn, result).await {
                // Another transaction touched the same documents: run it again.
                Err(e) if is_transient(&e) && tries < MAX_TRIES => {}
                result => return result,
            }
        }
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
        for _ in 0..MAX_TRIES {
            let mut txn = self.begin().await?;
            let round = self.update_round(agent_id, patch, now, &mut txn).await;
            match self.finish(txn, round).await {
                // Changed by someone else since we read it: read again.
                Ok(Round::Clash) => {}
                Err(e) if is_transient(&e) => {}
                Ok(Round::Done(agent)) => return Ok(agent.map(|a| *a)),
                Err(e) => return Err(e),
            }
            tokio::task::yield_now().await;
        }
        Err(StoreError::Unavailable(format!(
            "agent {agent_id} is being changed by too many callers at once; retry"
        )))
    }

    async fn delete(&self, agent_id: &str) -> StoreResult<bool> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut txn = self.begin().await?;
            let result = self.delete_writes(agent_id, &mut txn).await;
            match self.finish(txn, result).await {
                Err(e) if is_transient(&e) && tries < MAX_TRIES => tokio::task::yield_now().await,
                result => return result,
            }
        }
    }

    async fn facts(&self, name: &str) -> StoreResult<Option<Value>> {
        for key in ["username", "agent_name"] {
            let found = self
                .facts
                .find_one(doc! { key: name })
                .await
                .map_err(mongo_err)?;
            if let Some(doc) = found {
                return Ok(Some(to_json(doc)));
            }
        }
        Ok(None)
    }

    async fn ping(&self) -> StoreResult<()> {
        self.client
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(mongo_err)?;
        Ok(())
    }

    fn faults(&self) -> &FaultHook {
        &self.faults
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
