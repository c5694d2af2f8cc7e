//! Managed backends: the gateway starts N backend processes on 127.0.0.1,
//! learns each one's address from the line it prints, restarts any that
//! exit (with exponential backoff, reset after a stable run), and on
//! shutdown sends them SIGTERM so they drain. Children also get SIGTERM if
//! the gateway itself dies (PR_SET_PDEATHSIG), so none is left behind.
//!
//! Each child runs in a slot whose name ("registry-0") is its identity in
//! the pool: sessions are pinned to the slot, not to the port it happens to
//! listen on. A rolling restart ([`Supervisor::rollout`]) replaces the slots
//! one at a time: start the replacement, wait until it is ready, give it the
//! slot, then stop the old process (SIGTERM: it drains; killed after
//! `stop_timeout`, which must cover the backend's drain timeout). Sessions
//! that lived on the old process move to a live backend on their next
//! request (the session layer's failover).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::Member;

const READY_PREFIX: &str = "listening on http://";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How long a new process may take to print its address and become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the pool's own health checks see an address as ready (set once
/// the pool exists; a rollout waits for it before stopping the old process).
pub type ReadyCheck = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// The progress of one rollout, readable while it runs.
#[derive(Default)]
pub struct Rollout {
    lines: Mutex<Vec<String>>,
    done: AtomicBool,
    ok: AtomicBool,
    /// Backends replaced so far.
    replaced: AtomicUsize,
}

impl Rollout {
    fn say(&self, line: String) {
        tracing::info!(rollout = %line);
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
    }

    /// Backends replaced so far, whether it is over, and whether it succeeded.
    pub fn state(&self) -> (usize, bool, bool) {
        (
            self.replaced.load(Ordering::Acquire),
            self.done.load(Ordering::Acquire),
            self.ok.load(Ordering::Acquire),
        )
    }

    /// Lines from `from` on, whether it is over, and whether it succeeded.
    pub fn progress(&self, from: usize) -> (Vec<String>, bool, bool) {
        let lines = self
            .lines
            .lock()
            .map(|l| l.iter().skip(from).cloned().collect())
            .unwrap_or_default();
        (
            lines,
            self.done.load(Ordering::Acquire),
            self.ok.load(Ordering::Acquire),
        )
    }
}

/// A request to the slot's loop: replace your process, report when done.
struct Replace {
    progress: Arc<Rollout>,
    done: oneshot::Sender<bool>,
}

struct Slot {
    addr: Mutex<Option<SocketAddr>>,
    replace: mpsc::Sender<Replace>,
    commands: Mutex<Option<mpsc::Receiver<Replace>>>,
}

pub struct Supervisor {
    pub pool: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    slots: Vec<Slot>,
    /// How long a stopping child may drain before it is killed.
    pub stop_timeout: Duration,
    ready: OnceLock<ReadyCheck>,
    current: Mutex<Option<Arc<Rollout>>>,
}

/// A started child and where it listens.
struct Running {
    child: Child,
    addr: SocketAddr,
    started: Instant,
}

impl Supervisor {
    pub fn new(
        pool: &str,
        command: PathBuf,
        args: Vec<String>,
        count: usize,
        stop_timeout: Duration,
    ) -> Self {
        let slots = (0..count)
            .map(|_| {
                let (tx, rx) = mpsc::channel(1);
                Slot {
                    addr: Mutex::new(None),
                    replace: tx,
                    commands: Mutex::new(Some(rx)),
                }
            })
            .collect();
        Self {
            pool: pool.into(),
            command,
            args,
            slots,
            stop_timeout,
            ready: OnceLock::new(),
            current: Mutex::new(None),
        }
    }

    /// Tells the supervisor how to ask the pool whether an address is ready.
    pub fn set_ready_check(&self, check: ReadyCheck) {
        let _ = self.ready.set(check);
    }

    fn slot_name(&self, slot: usize) -> String {
        format!("{}-{}", self.pool, slot)
    }

    /// The children that are up now, each under its slot's name.
    pub fn members(&self) -> Vec<Member> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let addr = s.addr.lock().ok().and_then(|g| *g)?;
                Some(Member {
                    id: self.slot_name(i),
                    addr,
                    weight: 1,
                })
            })
            .collect()
    }

    fn set(&self, slot: usize, addr: Option<SocketAddr>) {
        if let Ok(mut guard) = self.slots[slot].addr.lock() {
            *guard = addr;
        }
    }

    fn spawn(&self, slot: usize) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.command);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--instance")
            .arg(self.slot_name(slot))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // SAFETY: prctl only sets a flag on the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.spawn()
    }

    /// Starts a child for `slot` and reads the address it prints.
    async fn start(&self, slot: usize) -> Result<Running, String> {
        let mut child = self
            .spawn(slot)
            .map_err(|e| format!("cannot start {}: {e}", self.command.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // The first line that names the address; keep draining after.
        let addr = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split(READY_PREFIX).nth(1) {
                    return rest.trim_end_matches("/mcp").parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        match addr {
            Some(addr) => {
                tracing::info!(pool = %self.pool, slot, %addr, pid = child.id(), "backend up");
                Ok(Running {
                    child,
                    addr,
                    started: Instant::now(),
                })
            }
            None => {
                let _ = child.kill().await;
                Err("the backend did not report its address".into())
            }
        }
    }

    async fn run_slot(&self, slot: usize, mut shutdown: ShutdownWatch) {
        let Some(mut commands) = self.slots[slot]
            .commands
            .lock()
            .ok()
            .and_then(|mut c| c.take())
        else {
            return;
        };
        let mut backoff = Duration::from_millis(250);
        let mut running: Option<Running> = None;
        loop {
            if *shutdown.borrow() {
                if let Some(r) = running.take() {
                    self.stop(r.child).await;
                }
                return;
            }
            let mut current = match running.take() {
                Some(r) => r,
                None => match self.start(slot).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(pool = %self.pool, slot, error = %e, "cannot start backend");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            self.set(slot, Some(current.addr));
            tokio::select! {
                status = current.child.wait() => {
                    self.set(slot, None);
                    tracing::warn!(pool = %self.pool, slot, ?status, "backend exited; restarting");
                    if current.started.elapsed() > STABLE_RUN {
                        backoff = Duration::from_millis(250);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Some(cmd) = commands.recv() => {
                    let (next, ok) = self.replace(slot, current, &cmd.progress).await;
                    running = Some(next);
                    let _ = cmd.done.send(ok);
                }
                _ = shutdown.changed() => {
                    self.set(slot, None);
                    self.stop(current.child).await;
                    return;
                }
            }
        }
    }

    /// One slot of a rollout: the replacement first, then the old process out.
    /// Returns the process the slot runs afterwards and whether it worked.
    async fn replace(&self, slot: usize, old: Running, progress: &Rollout) -> (Running, bool) {
        let name = self.slot_name(slot);
        progress.say(format!(
            "{name}: starting a replacement for pid {}",
            pid(&old.child)
        ));
        let new = match self.start(slot).await {
            Ok(r) => r,
            Err(e) => {
                progress.say(format!(
                    "{name}: replacement failed to start: {e}; keeping the old process"
                ));
                return (old, false);
            }
        };
        if let Err(e) = self.wait_ready(new.addr).await {
            progress.say(format!(
                "{name}: replacement never became ready ({e}); keeping the old process"
            ));
            self.stop(new.child).await;
            return (old, false);
        }
        progress.say(format!(
            "{name}: replacement pid {} ready on {}",
            pid(&new.child),
            new.addr
        ));
        // The slot (and so its sessions' pin) now names the new process.
        self.set(slot, Some(new.addr));
        if let Some(check) = self.ready.get() {
            let deadline = Instant::now() + START_TIMEOUT;
            while !check(new.addr) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        progress.say(format!(
            "{name}: draining the old process (pid {})",
            pid(&old.child)
        ));
        let status = self.stop(old.child).await;
        progress.say(format!("{name}: old process exited ({status})"));
        (new, true)
    }

    /// Polls the new process's `/readyz` until it answers 200.
    async fn wait_ready(&self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if probe_ready(addr).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from http://{addr}/readyz"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait up to `stop_timeout` for the drain, then kill.
    async fn stop(&self, mut child: Child) -> String {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(self.stop_timeout, child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => {
                let _ = child.kill().await;
                format!("killed after {:?}", self.stop_timeout)
            }
        }
    }

    /// Restarts every slot, one at a time. A rollout already under way is
    /// returned instead of starting another.
    pub fn rollout(self: &Arc<Self>) -> Arc<Rollout> {
        let Ok(mut current) = self.current.lock() else {
            return Arc::new(Rollout::default());
        };
        if let Some(r) = current.as_ref()
            && !r.done.load(Ordering::Acquire)
        {
            return Arc::clone(r);
        }
        let progress = Arc::new(Rollout::default());
        *current = Some(Arc::clone(&progress));
        let me = Arc::clone(self);
        let p = Arc::clone(&progress);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut ok = true;
            for (i, slot) in me.slots.iter().enumerate() {
                let (tx, rx) = oneshot::channel();
                let sent = slot
                    .replace
                    .send(Replace {
                        progress: Arc::clone(&p),
                        done: tx,
                    })
                    .await;
                let slot_ok = sent.is_ok() && rx.await.unwrap_or(false);
                if slot_ok {
                    p.replaced.fetch_add(1, Ordering::AcqRel);
                }
                if !slot_ok {
                    p.say(format!(
                        "{}: not replaced; stopping the rollout",
                        me.slot_name(i)
                    ));
                    ok = false;
                    break;
                }
            }
            p.say(format!(
                "rollout of pool {} {} in {:.1} s",
                me.pool,
                if ok { "done" } else { "failed" },
                started.elapsed().as_secs_f64()
            ));
            p.ok.store(ok, Ordering::Release);
            p.done.store(true, Ordering::Release);
        });
        progress
    }

    /// The rollout under way or the last one, if any.
    pub fn last_rollout(&self) -> Option<Arc<Rollout>> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// How many backends this pool runs.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }
}

fn pid(child: &Child) -> String {
    child
        .id()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "?".into())
}

/// One plain `GET /readyz` to a child on loopback: true on 200.
async fn probe_ready(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(&head[9..12] == b"200")
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, shutdown: ShutdownWatch) {
        let runs = (0..self.slots.len()).map(|slot| self.run_slot(slot, shutdown.clone()));
        futures::future::join_all(runs).await;
    }
}
