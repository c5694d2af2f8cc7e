//! Managed backends: the gateway starts N backend processes on 127.0.0.1,
//! learns each one's address from the line it prints, restarts any that
//! exit (with exponential backoff, reset after a stable run), and on
//! shutdown sends them SIGTERM so they drain. Children also get SIGTERM if
//! the gateway itself dies (PR_SET_PDEATHSIG), so none is left behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const READY_PREFIX: &str = "listening on http://";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_RUN: Duration = Duration::from_secs(60);

pub struct Supervisor {
    pub pool: String,
    pub command: PathBuf,
    pub args: Vec<String>,
    slots: Vec<Mutex<Option<SocketAddr>>>,
    /// How long a stopping child may drain before it is killed.
    pub stop_timeout: Duration,
}

impl Supervisor {
    pub fn new(pool: &str, command: PathBuf, args: Vec<String>, count: usize) -> Self {
        Self {
            pool: pool.into(),
            command,
            args,
            slots: (0..count).map(|_| Mutex::new(None)).collect(),
            stop_timeout: Duration::from_secs(10),
        }
    }

    /// Addresses of the children that are up now.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.slots
            .iter()
            .filter_map(|s| s.lock().ok().and_then(|g| *g))
            .collect()
    }

    fn set(&self, slot: usize, addr: Option<SocketAddr>) {
        if let Ok(mut guard) = self.slots[slot].lock() {
            *guard = addr;
        }
    }

    fn spawn(&self, slot: usize) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.command);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--instance")
            .arg(format!("{}-{}", self.pool, slot))
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

    async fn run_slot(&self, slot: usize, mut shutdown: ShutdownWatch) {
        let mut backoff = Duration::from_millis(250);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let mut child = match self.spawn(slot) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(pool = %self.pool, slot, command = %self.command.display(), error = %e, "cannot start backend");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if let Some(stdout) = child.stdout.take() {
                let mut lines = BufReader::new(stdout).lines();
                // The first line that names the address; keep draining after.
                let addr = tokio::time::timeout(Duration::from_secs(30), async {
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
                        self.set(slot, Some(addr));
                    }
                    None => {
                        tracing::warn!(pool = %self.pool, slot, "backend did not report its address")
                    }
                }
            }
            tokio::select! {
                status = child.wait() => {
                    self.set(slot, None);
                    tracing::warn!(pool = %self.pool, slot, ?status, "backend exited; restarting");
                    if started.elapsed() > STABLE_RUN {
                        backoff = Duration::from_millis(250);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                _ = shutdown.changed() => {
                    self.set(slot, None);
                    self.stop(child).await;
                    return;
                }
            }
        }
    }

    async fn stop(&self, mut child: Child) {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(self.stop_timeout, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, shutdown: ShutdownWatch) {
        let runs = (0..self.slots.len()).map(|slot| self.run_slot(slot, shutdown.clone()));
        futures::future::join_all(runs).await;
    }
}
