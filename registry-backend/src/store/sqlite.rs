//! The embedded store: one SQLite file in WAL mode.
//!
//! Several backend processes on one host may open the same file at once:
//! SQLite's own file locks serialise writers, WAL lets readers run beside a
//! writer, and `busy_timeout` turns a brief lock into a wait, not an error.
//! Each process keeps a small pool of connections; blocking calls run on
//! tokio's blocking pool so they never stall the async runtime.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use super::{AgentStore, FaultHook, StoreError, StoreResult};
use crate::model::{
    Agent, AgentFilter, AgentPatch, Page, PageRequest, facts_username, refresh_facts,
};

const POOL_SIZE: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    agent_id    TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    domain      TEXT NOT NULL,
    search_text TEXT NOT NULL,
    doc         TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agents_status ON agents(status, agent_id);
CREATE INDEX IF NOT EXISTS agents_domain ON agents(domain, agent_id);
CREATE TABLE IF NOT EXISTS agent_capabilities (
    capability TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    PRIMARY KEY (capability, agent_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agent_capabilities_agent ON agent_capabilities(agent_id);
CREATE TABLE IF NOT EXISTS agent_facts (
    username   TEXT PRIMARY KEY,
    agent_name TEXT NOT NULL UNIQUE,
    doc        TEXT NOT NULL
) WITHOUT ROWID;
";

pub struct SqliteStore {
    path: PathBuf,
    pool: Vec<Arc<Mutex<Connection>>>,
    next: AtomicUsize,
    faults: Arc<FaultHook>,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Internal(other.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Internal(format!("corrupt document: {e}"))
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the store file and its schema.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let mut pool = Vec::with_capacity(POOL_SIZE);
        for i in 0..POOL_SIZE {
            let conn = open(&path).map_err(db_err)?;
            if i == 0 {
                conn.execute_batch(SCHEMA).map_err(db_err)?;
            }
            pool.push(Arc::new(Mutex::new(conn)));
        }
        Ok(Self {
            path,
            pool,
            next: AtomicUsize::new(0),
            faults: Arc::default(),
        })
    }

    async fn with_conn<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let pool: Vec<_> = (0..self.pool.len())
            .map(|i| Arc::clone(&self.pool[(start + i) % self.pool.len()]))
            .collect();
        tokio::task::spawn_blocking(move || {
            // Take the first idle connection, so a write waiting on the
            // database lock does not hold up reads queued behind it; wait
            // on the round-robin choice only when every connection is busy.
            let idle = pool.iter().find_map(|conn| conn.try_lock().ok());
            let mut guard = match idle {
                Some(guard) => guard,
                None => pool[0]
                    .lock()
                    .map_err(|_| StoreError::Internal("connection poisoned".into()))?,
            };
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
    }
}

fn read_agent(doc: String) -> StoreResult<Agent> {
    serde_json::from_str(&doc).map_err(json_err)
}

fn write_capabilities(tx: &rusqlite::Transaction<'_>, agent: &Agent) -> StoreResult<()> {
    tx.execute(
        "DELETE FROM agent_capabilities WHERE agent_id = ?1",
        params![agent.agent_id],
    )
    .map_err(db_err)?;
    let mut stmt = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO agent_capabilities (capability, agent_id) VALUES (?1, ?2)",
        )
        .map_err(db_err)?;
    for cap in &agent.capabilities {
        stmt.execute(params![cap, agent.agent_id]).map_err(db_err)?;
    }
    Ok(())
}

fn write_agent(tx: &rusqlite::Transaction<'_>, agent: &Agent, replace: bool) -> StoreResult<()> {
    let doc = serde_json::to_string(agent).map_err(json_err)?;
    let sql = if replace {
        "UPDATE agents SET status = ?2, domain = ?3, search_text = ?4, doc = ?5 WHERE agent_id = ?1"
    } else {
        "INSERT INTO agents (agent_id, status, domain, search_text, doc) VALUES (?1, ?2, ?3, ?4, ?5)"
    };
    tx.execute(
        sql,
        params![
            agent.agent_id,
            agent.status,
            agent.domain,
            agent.search_text(),
            doc
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(code, _)
            if code.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::AlreadyExists
        }
        other => db_err(other),
    })?;
    write_capabilities(tx, agent)
}

#[async_trait]
impl AgentStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn insert(&self, agent: &Agent, facts: &Value) -> StoreResult<()> {
        let agent = agent.clone();
        let facts = serde_json::to_string(facts).map_err(json_err)?;
        let faults = Arc::clone(&self.faults);
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            write_agent(&tx, &agent, false)?;
            faults.check()?;
            let username = facts_username(&agent.agent_id);
            let owner: Option<String> = tx
                .query_row(
                    "SELECT agent_name FROM agent_facts WHERE username = ?1",
                    params![username],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if let Some(owner) = owner {
                // Dropping the transaction undoes the agent row.
                return Err(StoreError::FactsNameTaken { username, owner });
            }
            tx.execute(
                "INSERT INTO agent_facts (username, agent_name, doc) VALUES (?1, ?2, ?3)",
                params![username, agent.agent_id, facts],
            )
            .map_err(db_err)?;
            tx.commit().map_err(db_err)
        })
        .await
    }

    async fn get(&self, agent_id: &str) -> StoreResult<Option<Agent>> {
        let id = agent_id.to_owned();
        self.with_conn(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached("SELECT doc FROM agents WHERE agent_id = ?1")
                .map_err(db_err)?
                .query_row(params![id], |row| row.get(0))
                .optional()
                .map_err(db_err)?;
            doc.map(read_agent).transpose()
        })
        .await
    }

    async fn list(&self, filter: &AgentFilter, page: &PageRequest) -> StoreResult<Page> {
        let filter = filter.clone();
        let page = page.clone();
        self.with_conn(move |conn| {
            let mut sql = String::from(
                "SELECT a.doc FROM agents a WHERE a.agent_id > ?1 \
                 AND (?2 IS NULL OR a.status = ?2) \
                 AND (?3 IS NULL OR a.domain = ?3) \
                 AND (?4 IS NULL OR instr(a.search_text, ?4) > 0)",
            );
            let mut values: Vec<rusqlite::types::Value> = vec![
                page.after.clone().unwrap_or_default().into(),
                filter.status.clone().into(),
                filter.domain.clone().into(),
                filter.query.clone().into(),
            ];
            if !filter.capabilities.is_empty() {
                let marks: Vec<String> = (0..filter.capabilities.len())
                    .map(|i| format!("?{}", i + 6))
                    .collect();
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM agent_capabilities c \
                     WHERE c.agent_id = a.agent_id AND c.capability IN ({}))",
                    marks.join(", ")
                ));
            }
            sql.push_str(" ORDER BY a.agent_id LIMIT ?5");
            values.push(((page.limit + 1) as i64).into());
            values.extend(filter.capabilities.iter().cloned().map(Into::into));
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), |row| {
                    row.get::<_, String>(0)
                })
                .map_err(db_err)?;
            let mut agents = Vec::with_capacity(page.limit + 1);
            for doc in rows {
                agents.push(read_agent(doc.map_err(db_err)?)?);
            }
            Ok(Page::from_rows(agents, page.limit))
        })
        .await
    }

    async fn update(
        &self,
        agent_id: &str,
        patch: &AgentPatch,
        now: &str,
    ) -> StoreResult<Option<Agent>> {
        let id = agent_id.to_owned();
        let patch = patch.clone();
        let now = now.to_owned();
        let faults = Arc::clone(&self.faults);
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let doc: Option<String> = tx
                .query_row(
                    "SELECT doc FROM agents WHERE agent_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(doc) = doc else {
                return Ok(None);
            };
            let mut agent = read_agent(doc)?;
            agent.apply(&patch, &now);
            write_agent(&tx, &agent, true)?;
            faults.check()?;
            let facts: Option<String> = tx
                .query_row(
                    "SELECT doc FROM agent_facts WHERE agent_name = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            if let Some(facts) = facts {
                let mut facts: Value = serde_json::from_str(&facts).map_err(json_err)?;
                refresh_facts(&mut facts, &agent);
                tx.execute(
                    "UPDATE agent_facts SET doc = ?2 WHERE agent_name = ?1",
                    params![id, serde_json::to_string(&facts).map_err(json_err)?],
                )
                .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(Some(agent))
        })
        .await
    }

    async fn delete(&self, agent_id: &str) -> StoreResult<bool> {
        let id = agent_id.to_owned();
        let faults = Arc::clone(&self.faults);
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let n = tx
                .execute("DELETE FROM agents WHERE agent_id = ?1", params![id])
                .map_err(db_err)?;
            faults.check()?;
            tx.execute(
                "DELETE FROM agent_capabilities WHERE agent_id = ?1",
                params![id],
            )
            .map_err(db_err)?;
            tx.execute("DELETE FROM agent_facts WHERE agent_name = ?1", params![id])
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn facts(&self, name: &str) -> StoreResult<Option<Value>> {
        let name = name.to_owned();
        self.with_conn(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached(
                    "SELECT doc FROM agent_facts WHERE username = ?1 \
                     UNION ALL SELECT doc FROM agent_facts WHERE agent_name = ?1 LIMIT 1",
                )
                .map_err(db_err)?
                .query_row(params![name], |row| row.get(0))
                .optional()
                .map_err(db_err)?;
            doc.map(|d| serde_json::from_str(&d).map_err(json_err))
                .transpose()
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        let path = self.path.clone();
        self.with_conn(move |conn| {
            // A deleted or replaced file would still answer through the open
            // handle; make sure the path we serve is still there.
            if !path.exists() {
                return Err(StoreError::Unavailable(format!(
                    "{} no longer exists",
                    path.display()
                )));
            }
            conn.query_row(
                "SELECT count(*) FROM (SELECT 1 FROM agents LIMIT 1)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    fn faults(&self) -> &FaultHook {
        &self.faults
    }
}
