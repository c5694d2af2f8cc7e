//! The guardian: a small process (this binary, `mcp-gateway
//! stdio-guardian`) that outlives the gateway only to end what it started.
//!
//! PR_SET_PDEATHSIG reaches a stdio server's first process only; servers
//! started through `npx`, `uvx` or a shell run in its children, which a
//! killed gateway would leave behind. So the gateway tells the guardian,
//! on a pipe, each process group it starts (`+PGID`) and reaps (`-PGID`).
//! When the pipe ends — the gateway exited, however it exited — the
//! guardian sends SIGTERM to every group still listed, SIGKILL to what is
//! left after the grace, and exits. It ignores the signals a terminal or a
//! service manager sends the gateway's process group, so it is there to do
//! this after the gateway is gone.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The subcommand that runs the guardian.
pub const SUBCOMMAND: &str = "stdio-guardian";

/// The gateway's side: the pipe to the guardian.
pub struct Guardian {
    pipe: Mutex<ChildStdin>,
    _child: Child,
}

impl Guardian {
    /// Starts the guardian (this same binary); `grace`: SIGTERM to SIGKILL.
    pub fn start(grace: Duration) -> std::io::Result<Self> {
        let mut child = Command::new("/proc/self/exe")
            .arg(SUBCOMMAND)
            .arg("--grace-ms")
            .arg(grace.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no pipe to the guardian"))?;
        Ok(Self {
            pipe: Mutex::new(pipe),
            _child: child,
        })
    }

    /// A process group to end if the gateway dies.
    pub fn watch(&self, pgid: u32) {
        self.say(&format!("+{pgid}\n"));
    }

    /// A process group that is gone.
    pub fn forget(&self, pgid: u32) {
        self.say(&format!("-{pgid}\n"));
    }

    fn say(&self, line: &str) {
        // A few bytes into a pipe the guardian drains: never blocks for long.
        if let Ok(mut pipe) = self.pipe.lock()
            && let Err(e) = pipe.write_all(line.as_bytes())
        {
            tracing::warn!(error = %e, "the stdio guardian is gone; a killed gateway may leave stdio servers behind");
        }
    }
}

/// The guardian's own life: keep the list until the pipe ends, then end
/// every group on it. Returns the process's exit code.
pub fn run(grace: Duration) -> i32 {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: ignoring a signal for this single-threaded process.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let mut groups: HashSet<i32> = HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        match (op, pgid.trim().parse::<i32>()) {
            ("+", Ok(p)) if p > 1 => {
                groups.insert(p);
            }
            ("-", Ok(p)) => {
                groups.remove(&p);
            }
            _ => {}
        }
    }
    end_groups(&groups, grace);
    0
}

fn end_groups(groups: &HashSet<i32>, grace: Duration) {
    let alive = |p: i32| unsafe { libc::kill(-p, 0) } == 0;
    for p in groups {
        // SAFETY: signals to process groups the gateway started.
        unsafe {
            libc::kill(-p, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && groups.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in groups {
        // SAFETY: as above.
        unsafe {
            libc::kill(-p, libc::SIGKILL);
        }
    }
}
