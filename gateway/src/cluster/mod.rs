//! The store several gateway replicas share (Redis 6+ or Valkey; `[cluster]
//! store`): global rate limits ([`gcra`]: one Lua script call per request
//! that passed the local limits) and ended sessions (a key per `DELETE`d
//! id, living as long as the id could).
//!
//! One multiplexed connection (the `redis` crate; requests pipeline on it,
//! no pool, no lock) is shared by every request. Whether the store is
//! usable is one atomic flag: every call has `store_timeout`, and a call
//! that fails or times out marks the store down (a log line and a metric on
//! each change), so the requests after it do not wait on it at all — they
//! are decided without it, as `[cluster] on_store_down` says (`policy/
//! shared.rs`). The watcher ([`Store::watch`], a background task) pings the
//! store every `store_recheck`, connects again while it is down, and marks
//! it up at the first answer. The connection is made on the runtime of the
//! requests (the first request that asks the store names it), so a call and
//! its answer never cross between runtimes.

pub mod gcra;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo};

pub use gcra::{Ask, Verdict};

use crate::config::{Cluster, StoreDown};
use crate::metrics::Histogram;

/// The store did not answer in time (down, slow, or not reached yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shared store is unavailable")]
pub struct Unavailable;

/// What the store did, for `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// Calls made (limit checks, ended sessions), and those that failed.
    pub calls: AtomicU64,
    pub timeouts: AtomicU64,
    pub errors: AtomicU64,
    /// Times the store went down or came back.
    pub changes: AtomicU64,
    /// Requests decided without the store (it was down), by mode.
    pub fail_open: AtomicU64,
    pub fail_closed: AtomicU64,
    /// Requests the global limits refused.
    pub refused: AtomicU64,
    /// Each call's round trip.
    pub seconds: Histogram,
    /// The watcher's last ping, in microseconds.
    pub ping_us: AtomicU64,
}

pub struct Store {
    client: Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    recheck: Duration,
    on_down: StoreDown,
    replicas: u32,
    up: AtomicBool,
    /// The requests' runtime, where the connection's task should live, and
    /// whether the connection in use was made there.
    home: OnceLock<tokio::runtime::Handle>,
    at_home: AtomicBool,
    /// The URL without credentials (logs, `--check-config`).
    shown: String,
    pub stats: Stats,
}

/// A URL as it may be shown: scheme, address and database, no credentials.
fn shown(info: &redis::ConnectionInfo) -> String {
    let db = info.redis_settings().db();
    match info.addr() {
        ConnectionAddr::TcpTls { .. } => format!("rediss://{}/{db}", info.addr()),
        ConnectionAddr::Unix(_) => format!("unix:{}", info.addr()),
        _ => format!("redis://{}/{db}", info.addr()),
    }
}

impl Store {
    /// The store `[cluster]` names, if any (not connected yet: the watcher
    /// connects, so a gateway starts while its store is down).
    pub fn new(c: &Cluster) -> Result<Option<Arc<Self>>> {
        let Some(url) = &c.store else {
            return Ok(None);
        };
        let mut info = url
            .as_str()
            .into_connection_info()
            .with_context(|| "[cluster] store")?;
        if let Some(password) = &c.store_password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
            pingora::tls::install_default_crypto_provider();
        }
        let shown = shown(&info);
        Ok(Some(Arc::new(Self {
            client: Client::open(info).with_context(|| "[cluster] store")?,
            conn: ArcSwapOption::empty(),
            script: redis::Script::new(gcra::SCRIPT),
            prefix: c.key_prefix.clone(),
            timeout: c.store_timeout,
            recheck: c.store_recheck,
            on_down: c.on_store_down,
            replicas: c.replicas,
            up: AtomicBool::new(false),
            home: OnceLock::new(),
            at_home: AtomicBool::new(false),
            shown,
            stats: Stats::default(),
        })))
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn on_down(&self) -> StoreDown {
        self.on_down
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Where the store is, without credentials.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The connection, if the store is up (no wait either way).
    fn ready(&self) -> Result<MultiplexedConnection, Unavailable> {
        if self.home.get().is_none()
            && let Ok(here) = tokio::runtime::Handle::try_current()
        {
            let _ = self.home.set(here);
        }
        if !self.is_up() {
            return Err(Unavailable);
        }
        self.conn.load().as_deref().cloned().ok_or(Unavailable)
    }

    /// One request's limits (and its session's ended mark), in one round trip.
    pub async fn check(
        &self,
        asks: &[Ask],
        ended: Option<&[u8; 12]>,
    ) -> Result<Verdict, Unavailable> {
        let mut conn = self.ready()?;
        let mut call = self.script.prepare_invoke();
        for a in asks {
            call.key(a.key.as_str());
        }
        if let Some(nonce) = ended {
            call.key(gcra::ended_key(&self.prefix, nonce));
        }
        call.arg(asks.len());
        for a in asks {
            call.arg(a.interval_us.saturating_mul(u64::from(a.cells)))
                .arg(a.interval_us.saturating_mul(u64::from(a.burst)));
        }
        let started = Instant::now();
        let reply = tokio::time::timeout(self.timeout, call.invoke_async::<(i64, i64)>(&mut conn));
        let verdict = self.finish(started, reply.await).map(Verdict::from_reply)?;
        if matches!(verdict, Verdict::Limited { .. }) {
            self.stats.refused.fetch_add(1, Relaxed);
        }
        Ok(verdict)
    }

    /// Records that a session id was ended, for `ttl` (its remaining life).
    pub async fn end_session(&self, nonce: &[u8; 12], ttl: Duration) -> Result<(), Unavailable> {
        let mut conn = self.ready()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(gcra::ended_key(&self.prefix, nonce))
            .arg(1)
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        let started = Instant::now();
        let reply = tokio::time::timeout(self.timeout, cmd.query_async::<()>(&mut conn));
        self.finish(started, reply.await)
    }

    /// Counts a call, and marks the store down if it failed.
    fn finish<T>(
        &self,
        started: Instant,
        reply: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, Unavailable> {
        self.stats.calls.fetch_add(1, Relaxed);
        self.stats.seconds.observe(started.elapsed());
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.stats.errors.fetch_add(1, Relaxed);
                self.went_down(&e.to_string());
                Err(Unavailable)
            }
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Relaxed);
                self.went_down(&format!("no answer within {:?}", self.timeout));
                Err(Unavailable)
            }
        }
    }

    fn went_down(&self, why: &str) {
        if self.up.swap(false, Relaxed) {
            self.stats.changes.fetch_add(1, Relaxed);
            let mode = match self.on_down {
                StoreDown::FailOpen => "fail_open: local limits, each 1/replicas of the configured",
                StoreDown::FailClosed => "fail_closed: requests get 503",
            };
            tracing::warn!(store = %self.shown, error = why, mode, "shared store down");
        }
    }

    fn came_back(&self) {
        if !self.up.swap(true, Relaxed) {
            self.stats.changes.fetch_add(1, Relaxed);
            tracing::info!(store = %self.shown, "shared store up: limits are global again");
        }
    }

    /// Pings the store every `store_recheck` (connecting again while it is
    /// down) until the process ends.
    pub async fn watch(&self) {
        let mut tick = tokio::time::interval(self.recheck);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut told = false;
        loop {
            tick.tick().await;
            match self.probe().await {
                Ok(()) => told = false,
                Err(e) => {
                    // Never up yet: say why once (later losses say it in went_down).
                    if !told && self.stats.changes.load(Relaxed) == 0 {
                        tracing::warn!(store = %self.shown, error = %e, "shared store not reached yet; retrying");
                        told = true;
                    }
                    self.went_down(&e);
                }
            }
        }
    }

    /// One ping, on the current connection while up, on a new one while
    /// down (or once the requests' runtime is known, to move there).
    async fn probe(&self) -> Result<(), String> {
        let home = self.home.get().cloned();
        let moving = home.is_some() && !self.at_home.load(Relaxed);
        let current = self.conn.load_full().filter(|_| self.is_up() && !moving);
        let conn = match current {
            Some(c) => c,
            None => {
                let made = Arc::new(self.connect(home.as_ref()).await?);
                self.at_home.store(home.is_some(), Relaxed);
                made
            }
        };
        let started = Instant::now();
        let mut pinging = (*conn).clone();
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, cmd.query_async::<String>(&mut pinging)).await {
            Ok(Ok(_)) => {
                let us = started.elapsed().as_micros() as u64;
                self.stats.ping_us.store(us, Relaxed);
                self.conn.store(Some(conn));
                self.came_back();
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer to PING within {:?}", self.timeout)),
        }
    }

    /// A new connection, its task spawned on `home` if given.
    async fn connect(
        &self,
        home: Option<&tokio::runtime::Handle>,
    ) -> Result<MultiplexedConnection, String> {
        let wait = self.recheck.max(self.timeout);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(wait))
            .set_response_timeout(Some(wait));
        let client = self.client.clone();
        let made = async move {
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| e.to_string())
        };
        match home {
            Some(home) => home.spawn(made).await.map_err(|e| e.to_string())?,
            None => made.await,
        }
    }
}

/// Runs [`Store::watch`] as one of pingora's background services.
pub struct Watcher(pub Arc<Store>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Watcher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        tokio::select! {
            _ = self.0.watch() => {}
            _ = shutdown.changed() => {}
        }
    }
}
