//! Stdio MCP servers behind the gateway: a pool's in-process host.
//!
//! A stdio server serves one client over its stdin and stdout. A stdio pool
//! has one member, its [`StdioHost`]: a small Streamable HTTP server on
//! 127.0.0.1 (an ephemeral port, inside the gateway process) that maps each
//! MCP session it opens to one child process (`process.rs`). So a stdio
//! session's traffic takes the gateway's one backend exchange
//! (`session::exchange`) like any other pool's — TLS, auth, limits, sealed
//! session ids, both client transports, server→client requests, failover
//! and its replay rules — and only this module knows about processes:
//!
//! - `initialize` (no session) takes a warm process (`warm`, started ahead)
//!   or starts one, and answers with the process's answer and a session id
//!   of the host's (the gateway seals it into the client's id);
//! - every later POST is written to the process's stdin; its stdout is
//!   routed to the POST or `GET` stream it belongs to (`routes.rs`);
//! - a process that exits (or is killed) takes its session with it: the
//!   host answers 404 for it from then on, which the exchange reads as "not
//!   run here" and moves the session to a fresh process with the client's
//!   sealed `initialize` params; a request in flight when it died is cut,
//!   so the exchange's replay rules apply (sent again if read-only, else
//!   -32003);
//! - `DELETE`, `idle_timeout` and the gateway's stop end a process: stdin
//!   closed, SIGTERM to its process group at half of `stop_timeout`, SIGKILL
//!   at its end; each process has PR_SET_PDEATHSIG, and a guardian process
//!   (`guardian.rs`) ends every group if the gateway is killed outright;
//! - `max_processes` (sessions' and warm ones together): a new session
//!   beyond gets 503 + `Retry-After`.
//!
//! Bad children get a clear JSON-RPC error, a counted exit cause and a
//! warning naming the pool and slot: a stdout line that is not JSON-RPC
//! (`protocol`), a line over `max_body_bytes` (`oversize`), silence for
//! nine tenths of `upstream_idle_timeout` while a request waits (`silent`;
//! before the gateway's own deadline, so the client gets this error rather
//! than a cut), an exit before its first line (`start_failed`).
//!
//! The host is reached only through the gateway: every request but its
//! readiness probe carries the host's key ([`HOST_KEY_HEADER`], random per
//! start), which `upstream.rs` adds for this address only.

pub mod guardian;
mod http;
pub mod process;
pub mod routes;
pub mod spawn;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::StdioConfig;
use guardian::Guardian;
use process::Proc;
use spawn::{Launch, LaunchError, Started};

pub use crate::upstream::HOST_KEY_HEADER;

/// The identity of a stdio pool's host in its pool (`stdio@REPLICA` when
/// `[cluster] advertise` names this replica).
pub const STDIO_MEMBER: &str = "stdio";

/// How often warm processes are topped up and idle ones looked for.
const TEND_EVERY: Duration = Duration::from_millis(250);
/// Warm starts that fail wait this long before the next, doubling …
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// … up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Stderr lines logged per pool per second (the rest are counted).
const STDERR_LINES_PER_SEC: u64 = 50;

/// Why a process ended (`mcp_gateway_stdio_exits_total{cause}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Its client ended the session (`DELETE`).
    Deleted,
    /// No use for `idle_timeout`.
    Idle,
    /// The gateway stopped.
    Shutdown,
    /// It exited (or was killed) after it had started.
    Crashed,
    /// It could not be started, or exited before writing a line.
    StartFailed,
    /// It wrote a line that is not JSON-RPC.
    Protocol,
    /// It wrote a line over the body limit.
    Oversize,
    /// It wrote nothing for the silence limit while a request waited.
    Silent,
}

impl Exit {
    pub const ALL: [Exit; 8] = [
        Exit::Deleted,
        Exit::Idle,
        Exit::Shutdown,
        Exit::Crashed,
        Exit::StartFailed,
        Exit::Protocol,
        Exit::Oversize,
        Exit::Silent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Exit::Deleted => "deleted",
            Exit::Idle => "idle",
            Exit::Shutdown => "shutdown",
            Exit::Crashed => "crashed",
            Exit::StartFailed => "start_failed",
            Exit::Protocol => "protocol",
            Exit::Oversize => "oversize",
            Exit::Silent => "silent",
        }
    }

    /// What the process did, for a client's error message.
    pub fn says(self) -> &'static str {
        match self {
            Exit::Protocol => "wrote a line that is not JSON-RPC",
            Exit::Oversize => "wrote a message over the gateway's body limit",
            Exit::Silent => "wrote nothing for too long",
            Exit::StartFailed => "exited before answering",
            _ => "ended",
        }
    }

    /// Whether the requests in flight get an error answer (the process
    /// misbehaved while alive) rather than a cut stream (it is gone: the
    /// exchange's replay rules decide).
    fn answers_in_flight(self) -> bool {
        matches!(self, Exit::Protocol | Exit::Oversize | Exit::Silent)
    }

    /// Logged as a warning (the others are the ordinary ends of a process).
    fn is_bad(self) -> bool {
        !matches!(self, Exit::Deleted | Exit::Idle | Exit::Shutdown)
    }
}

/// A pool's counters (per pool in `/metrics`).
#[derive(Default)]
pub struct Counters {
    pub starts: AtomicU64,
    exits: [AtomicU64; Exit::ALL.len()],
    /// New sessions refused at `max_processes`.
    pub refused: AtomicU64,
    /// Server messages dropped from a full backlog (no `GET` stream open).
    backlog_dropped: AtomicU64,
    /// Stderr lines not logged (over the rate).
    pub stderr_dropped: AtomicU64,
}

impl Counters {
    pub fn exits(&self, why: Exit) -> u64 {
        let i = Exit::ALL.iter().position(|e| *e == why).unwrap_or(0);
        self.exits[i].load(Ordering::Relaxed)
    }

    fn exited(&self, why: Exit) {
        let i = Exit::ALL.iter().position(|e| *e == why).unwrap_or(0);
        self.exits[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn backlog_dropped(&self, n: usize) {
        if n > 0 {
            self.backlog_dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub fn dropped_from_backlog(&self) -> u64 {
        self.backlog_dropped.load(Ordering::Relaxed)
    }
}

/// What a host's processes share.
pub struct Shared {
    pub pool: String,
    pub counters: Counters,
    epoch: Instant,
    /// Longest stdout line (`max_body_bytes`; changes on reload).
    max_line: AtomicUsize,
    /// A process silent this long (ms) while a request waits is ended
    /// (nine tenths of `upstream_idle_timeout`; changes on reload).
    silence_ms: AtomicU64,
    stop_timeout: Duration,
    /// The stderr lines budget: the second it is for, and lines logged in it.
    stderr_second: AtomicU64,
    stderr_lines: AtomicU64,
}

impl Shared {
    /// Takes the gateway's limits (at start, and on each reload).
    fn set_limits(&self, limits: &HostLimits) {
        let silence = limits.upstream_idle_timeout.mul_f64(0.9);
        self.max_line
            .store(limits.max_body_bytes, Ordering::Relaxed);
        self.silence_ms
            .store(silence.as_millis() as u64, Ordering::Relaxed);
    }

    /// Longest stdout line (and request body) the host takes.
    pub fn max_line(&self) -> usize {
        self.max_line.load(Ordering::Relaxed)
    }

    /// How long a process may stay silent while a request waits.
    pub fn silence(&self) -> Duration {
        Duration::from_millis(self.silence_ms.load(Ordering::Relaxed))
    }

    /// How often a waiting stream looks for silence (and gets a keep-alive).
    pub fn tick(&self) -> Duration {
        (self.silence() / 3).clamp(Duration::from_millis(50), Duration::from_secs(15))
    }

    /// Milliseconds on the host's clock.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether one more stderr line may be logged this second.
    fn stderr_budget(&self) -> bool {
        let second = self.now_ms() / 1000;
        if self.stderr_second.swap(second, Ordering::Relaxed) != second {
            let dropped = self.stderr_lines.swap(0, Ordering::Relaxed);
            let over = dropped.saturating_sub(STDERR_LINES_PER_SEC);
            if over > 0 {
                tracing::debug!(pool = %self.pool, lines = over, "stdio stderr lines not logged (rate limit)");
            }
        }
        let n = self.stderr_lines.fetch_add(1, Ordering::Relaxed);
        if n >= STDERR_LINES_PER_SEC {
            self.counters.stderr_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Limits of the gateway a host needs.
#[derive(Clone, Copy)]
pub struct HostLimits {
    pub max_body_bytes: usize,
    pub upstream_idle_timeout: Duration,
}

/// Why no process could be had for a new session.
pub enum Refusal {
    /// `max_processes` are running (or the gateway is stopping).
    Full,
    /// The command could not be started.
    Spawn(String),
}

/// A stdio pool's host: the HTTP side (`http.rs`) and the processes.
pub struct StdioHost {
    pub shared: Arc<Shared>,
    launch: Launch,
    pub max_processes: usize,
    warm: usize,
    idle_timeout: Duration,
    key: String,
    addr: SocketAddr,
    listener: Mutex<Option<std::net::TcpListener>>,
    /// Sessions by the host's id (bounded: at most `max_processes`).
    sessions: DashMap<String, Arc<Proc>>,
    /// Started ahead, not yet given to a session.
    warm_queue: Mutex<VecDeque<Arc<Proc>>>,
    /// Every live process, by slot (for `/backends`, `/metrics`, the stop).
    live: Mutex<HashMap<u64, Arc<Proc>>>,
    /// Processes counted against `max_processes` (reserved before a start).
    count: AtomicUsize,
    slots: AtomicU64,
    stopping: AtomicBool,
    /// When a failed warm start allows the next one (ms), and the backoff.
    warm_after: AtomicU64,
    backoff_ms: AtomicU64,
    guardian: Option<Arc<Guardian>>,
    rng: SystemRandom,
}

/// A process's state, for operators.
pub struct ProcView {
    pub slot: u64,
    pub pid: u32,
    pub state: &'static str,
    pub idle_ms: u64,
}

impl StdioHost {
    /// Binds the host's listener (127.0.0.1, an ephemeral port) and settles
    /// how its processes start; it serves once started as a background service.
    pub fn bind(
        pool: &str,
        config: &StdioConfig,
        limits: HostLimits,
        guardian: Option<Arc<Guardian>>,
    ) -> Result<Arc<Self>, HostError> {
        let launch = Launch::new(pool, config)?;
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rng = SystemRandom::new();
        let shared = Shared {
            pool: pool.to_owned(),
            counters: Counters::default(),
            epoch: Instant::now(),
            max_line: AtomicUsize::new(0),
            silence_ms: AtomicU64::new(0),
            stop_timeout: config.stop_timeout,
            stderr_second: AtomicU64::new(0),
            stderr_lines: AtomicU64::new(0),
        };
        shared.set_limits(&limits);
        Ok(Arc::new(Self {
            shared: Arc::new(shared),
            launch,
            max_processes: config.max_processes,
            warm: config.warm,
            idle_timeout: config.idle_timeout,
            key: random_hex(&rng, 32).ok_or(HostError::Random)?,
            addr,
            listener: Mutex::new(Some(listener)),
            sessions: DashMap::new(),
            warm_queue: Mutex::new(VecDeque::new()),
            live: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            slots: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            warm_after: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(FIRST_BACKOFF.as_millis() as u64),
            guardian,
            rng,
        }))
    }

    /// Takes the gateway's reloaded `max_body_bytes` and
    /// `upstream_idle_timeout` (for lines and silences from now on).
    pub fn set_limits(&self, limits: &HostLimits) {
        self.shared.set_limits(limits);
    }

    /// The pool it serves.
    pub fn pool(&self) -> &str {
        &self.shared.pool
    }

    /// Where the host listens (the pool's one member).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key the gateway's requests carry.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Processes counted against `max_processes` now.
    pub fn processes(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Every live process and its state (`starting`, `warm`, `running`).
    pub fn view(&self) -> Vec<ProcView> {
        let live = self.live.lock().map(|l| l.clone()).unwrap_or_default();
        let mut out: Vec<ProcView> = live
            .values()
            .map(|p| ProcView {
                slot: p.slot,
                pid: p.pid,
                state: match (p.answered(), p.is_taken()) {
                    (false, _) => "starting",
                    (true, false) => "warm",
                    (true, true) => "running",
                },
                idle_ms: p.idle_ms(),
            })
            .collect();
        out.sort_by_key(|p| p.slot);
        out
    }

    fn session_id(&self) -> Option<String> {
        random_hex(&self.rng, 16)
    }

    /// A process for a new session: a warm one, else a new one.
    async fn acquire(self: &Arc<Self>) -> Result<Arc<Proc>, Refusal> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(Refusal::Full);
        }
        {
            // Under the warm queue's lock: a warm start under way is either
            // in the queue already or not yet counted.
            let mut warm = self.warm_queue.lock().map_err(|_| Refusal::Full)?;
            while let Some(p) = warm.pop_front() {
                if p.take() {
                    return Ok(p);
                } // else it is ending
            }
            if !self.reserve() {
                self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Full);
            }
        }
        self.start(true).map_err(|e| Refusal::Spawn(e.to_string()))
    }

    /// Starts one more warm process if the pool wants one and has room.
    fn top_up(self: &Arc<Self>) -> Option<Arc<Proc>> {
        let mut warm = self.warm_queue.lock().ok()?;
        let ready = self.shared.now_ms() >= self.warm_after.load(Ordering::Relaxed);
        if warm.len() >= self.warm || !ready || !self.reserve() {
            return None;
        }
        let p = self.start(false).ok()?;
        warm.push_back(Arc::clone(&p));
        Some(p)
    }

    /// Counts one more process against `max_processes`, if there is room.
    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_processes).then_some(n + 1)
            })
            .is_ok()
    }

    /// Starts a process (its place already reserved) and its watcher.
    fn start(self: &Arc<Self>, taken: bool) -> std::io::Result<Arc<Proc>> {
        let slot = self.slots.fetch_add(1, Ordering::Relaxed);
        let Started { mut child, dir } = match self.launch.start(slot) {
            Ok(started) => started,
            Err(e) => {
                self.count.fetch_sub(1, Ordering::AcqRel);
                self.shared.counters.exited(Exit::StartFailed);
                tracing::warn!(pool = %self.shared.pool, slot, error = %e, "stdio server could not be started");
                return Err(e);
            }
        };
        self.shared.counters.starts.fetch_add(1, Ordering::Relaxed);
        let proc = Proc::attach(Arc::clone(&self.shared), slot, &mut child, taken);
        if let Some(g) = &self.guardian {
            g.watch(proc.pid);
        }
        if let Ok(mut live) = self.live.lock() {
            live.insert(slot, Arc::clone(&proc));
        }
        tracing::debug!(pool = %self.shared.pool, slot, pid = proc.pid, taken, "stdio server started");
        tokio::spawn(Arc::clone(self).watch(Arc::clone(&proc), child, dir));
        Ok(proc)
    }

    /// Waits for a process to exit or be asked to end, then ends it and
    /// frees its place.
    async fn watch(
        self: Arc<Self>,
        proc: Arc<Proc>,
        mut child: tokio::process::Child,
        dir: Option<std::path::PathBuf>,
    ) {
        let exited = tokio::select! {
            status = child.wait() => status.ok(),
            _ = proc.ending() => child.try_wait().ok().flatten(),
        };
        let status = match exited {
            Some(status) => {
                // Gone on its own: what is left of its group goes at once.
                proc.end(if proc.answered() {
                    Exit::Crashed
                } else {
                    Exit::StartFailed
                });
                process::signal_group(proc.pid, libc::SIGKILL);
                self.release(&proc, dir.as_deref());
                self.forget(&proc);
                proc.close_streams(proc.cause().unwrap_or(Exit::Crashed));
                status.to_string()
            }
            None => {
                self.forget(&proc);
                proc.close_streams(proc.cause().unwrap_or(Exit::Shutdown));
                let status = proc.terminate(&mut child).await;
                self.release(&proc, dir.as_deref());
                status
            }
        };
        let why = proc.cause().unwrap_or(Exit::Crashed);
        self.shared.counters.exited(why);
        proc.set_status(status.clone());
        self.log_exit(&proc, why, &status);
    }

    fn log_exit(&self, proc: &Proc, why: Exit, status: &str) {
        let (pool, slot, pid) = (&self.shared.pool, proc.slot, proc.pid);
        if why.is_bad() {
            let stderr = proc.last_stderr();
            tracing::warn!(%pool, slot, pid, cause = why.name(), %status, last_stderr = %stderr, "stdio server ended");
        } else {
            tracing::info!(%pool, slot, pid, cause = why.name(), %status, "stdio server ended");
        }
        if why == Exit::StartFailed && !proc.is_taken() {
            // A warm start failed: wait longer before the next one.
            let backoff = self.backoff_ms.load(Ordering::Relaxed);
            self.warm_after
                .store(self.shared.now_ms() + backoff, Ordering::Relaxed);
            let next = (backoff * 2).min(MAX_BACKOFF.as_millis() as u64);
            self.backoff_ms.store(next, Ordering::Relaxed);
        }
    }

    /// Takes a process out of every table (its session is gone: 404 from now on).
    fn forget(&self, proc: &Arc<Proc>) {
        if let Some(id) = proc.session.get() {
            self.sessions.remove(id);
        }
        if let Ok(mut q) = self.warm_queue.lock() {
            q.retain(|p| !Arc::ptr_eq(p, proc));
        }
    }

    /// Its process group is gone: its place is free again.
    fn release(&self, proc: &Proc, dir: Option<&std::path::Path>) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&proc.slot);
        }
        if let Some(g) = &self.guardian {
            g.forget(proc.pid);
        }
        if let Some(d) = dir {
            let _ = std::fs::remove_dir_all(d);
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    /// Ends idle sessions' processes and tops up the warm ones.
    async fn tend(self: &Arc<Self>) {
        let idle_ms = self.idle_timeout.as_millis() as u64;
        for entry in self.sessions.iter() {
            let p = entry.value();
            if !p.is_busy() && p.idle_ms() >= idle_ms {
                p.end(Exit::Idle);
            }
        }
        if let Some(p) = self.top_up() {
            p.warm_up().await;
        }
        // A warm process that answered resets the backoff.
        let answered = self
            .warm_queue
            .lock()
            .is_ok_and(|q| q.iter().any(|p| p.answered()));
        if answered {
            self.backoff_ms
                .store(FIRST_BACKOFF.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// The gateway stops: no new session; requests in flight get up to
    /// `stop_timeout` to finish; then every process ends.
    async fn stop_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + self.shared.stop_timeout;
        let live = || self.live.lock().map(|l| l.clone()).unwrap_or_default();
        while Instant::now() < deadline && live().values().any(|p| p.in_flight() > 0) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for p in live().values() {
            p.end(Exit::Shutdown);
        }
        let deadline = Instant::now() + self.shared.stop_timeout + Duration::from_secs(1);
        while Instant::now() < deadline && !live().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The host as pingora runs it: a background service (its own runtime)
/// that accepts the gateway's connections, tends the processes, and ends
/// them all when the gateway stops.
pub struct HostService(pub Arc<StdioHost>);

#[async_trait]
impl BackgroundService for HostService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let me = &self.0;
        let listener = me.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = listener.and_then(|l| tokio::net::TcpListener::from_std(l).ok())
        else {
            tracing::error!(pool = %me.shared.pool, "stdio host has no listener");
            return;
        };
        tracing::info!(pool = %me.shared.pool, addr = %me.addr, max_processes = me.max_processes, warm = me.warm, "stdio host serving");
        let mut tick = tokio::time::interval(TEND_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(http::serve(Arc::clone(me), stream));
                    }
                }
                _ = tick.tick() => me.tend().await,
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        me.stop_all().await;
    }
}

/// Why a host could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("stdio host listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("no randomness for the host key")]
    Random,
}

/// `bytes` random bytes as hex.
fn random_hex(rng: &SystemRandom, bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    rng.fill(&mut buf).ok()?;
    Some(buf.iter().map(|b| format!("{b:02x}")).collect())
}
