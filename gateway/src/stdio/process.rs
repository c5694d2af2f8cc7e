//! One stdio server process: newline-delimited JSON-RPC on its stdin and
//! stdout, each line of stdout routed to a client stream (`routes.rs`),
//! stderr to the gateway's log (debug, rate-limited, tagged with the pool
//! and slot), and the way it ends: stdin closed, SIGTERM to its process
//! group at half of `stop_timeout`, SIGKILL at the end of it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};

use super::routes::{self, Dest, Refused, Routed, Routes};
use super::{Exit, Shared};

/// Lines queued for a process's stdin.
const STDIN_QUEUE: usize = 32;
/// Longest stderr line logged (the rest of it is skipped).
const MAX_STDERR_LINE: usize = 4096;
/// The id of the gateway's warm-up `ping` (its answer says the process is up).
pub const WARM_UP_ID: &str = "\"mcp-gateway-warm-up\"";
const WARM_UP: &[u8] = br#"{"jsonrpc":"2.0","id":"mcp-gateway-warm-up","method":"ping"}"#;

/// One stdio server process and the client streams waiting on it.
pub struct Proc {
    /// The process's number in its pool (in logs and its own directory's name).
    pub slot: u64,
    pub pid: u32,
    shared: Arc<Shared>,
    stdin: mpsc::Sender<Bytes>,
    routes: Mutex<Routes>,
    /// Given to a session (or being initialized for one).
    taken: AtomicBool,
    /// It has written a line (so it started).
    answered: AtomicBool,
    /// Requests in flight and open `GET` streams.
    busy: AtomicUsize,
    /// When a client last sent or received something (ms on the host's clock).
    last_active: AtomicU64,
    /// When the process last wrote a line.
    last_output: AtomicU64,
    /// The host's id for its session.
    pub session: OnceLock<String>,
    /// Why it is ending (the first reason given wins).
    stop: watch::Sender<Option<Exit>>,
    /// Its exit status, once known.
    status: watch::Sender<Option<String>>,
    last_stderr: Mutex<String>,
    /// The `GET` stream of a session its client ended, kept open (see
    /// [`Proc::close_streams`]).
    parked: Mutex<Option<mpsc::Sender<Routed>>>,
}

/// What a request's stream gets next.
pub enum Next {
    Routed(Routed),
    /// Nothing for a while (the process is not silent for long enough to end it).
    Quiet,
    /// The process is gone and the answer will never come.
    Closed,
}

impl Proc {
    /// Wraps a started child: its stdin writer, stdout router and stderr
    /// logger run as tasks from here on.
    pub fn attach(shared: Arc<Shared>, slot: u64, child: &mut Child, taken: bool) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(STDIN_QUEUE);
        let now = shared.now_ms();
        let proc = Arc::new(Proc {
            slot,
            pid: child.id().unwrap_or_default(),
            shared,
            stdin: tx,
            routes: Mutex::new(Routes::default()),
            taken: AtomicBool::new(taken),
            answered: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(now),
            last_output: AtomicU64::new(now),
            session: OnceLock::new(),
            stop: watch::Sender::new(None),
            status: watch::Sender::new(None),
            last_stderr: Mutex::new(String::new()),
            parked: Mutex::new(None),
        });
        if let Some(stdin) = child.stdin.take() {
            tokio::spawn(write_loop(stdin, rx, proc.stop.subscribe()));
        }
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(Arc::clone(&proc).read_loop(stdout));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(Arc::clone(&proc).stderr_loop(stderr));
        }
        proc
    }

    /// Milliseconds on the host's clock.
    pub fn now_ms(&self) -> u64 {
        self.shared.now_ms()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends the warm-up `ping`: its answer (any answer) says the process
    /// is up; nobody waits for it.
    pub async fn warm_up(&self) {
        if self
            .routes()
            .register(WARM_UP_ID.to_owned(), None, None)
            .is_ok()
        {
            let _ = self.stdin.send(Bytes::from_static(WARM_UP)).await;
        }
    }

    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    pub fn is_taken(&self) -> bool {
        self.taken.load(Ordering::Relaxed)
    }

    /// Claims a warm process for a session; false if it is ending or taken.
    pub fn take(&self) -> bool {
        !self.is_ending() && !self.taken.swap(true, Ordering::AcqRel)
    }

    pub fn is_ending(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Why it is ending, if it is.
    pub fn cause(&self) -> Option<Exit> {
        *self.stop.borrow()
    }

    /// Asks it to end (the first reason given is kept); its watcher does the rest.
    pub fn end(&self, why: Exit) {
        self.stop.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Resolves once it has been asked to end.
    pub async fn ending(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Its exit status, waiting for it at most `within`.
    pub async fn exit_status(&self, within: Duration) -> Option<String> {
        let mut rx = self.status.subscribe();
        let got = tokio::time::timeout(within, rx.wait_for(Option::is_some)).await;
        got.ok()
            .and_then(|r| r.ok().and_then(|s| s.as_ref().cloned()))
    }

    pub fn set_status(&self, status: String) {
        self.status.send_replace(Some(status));
    }

    pub fn last_stderr(&self) -> String {
        self.last_stderr
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Counts a request in flight or an open stream until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.touch();
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    fn touch(&self) {
        self.last_active
            .store(self.shared.now_ms(), Ordering::Relaxed);
    }

    /// How long no client has used it (ms).
    pub fn idle_ms(&self) -> u64 {
        self.shared
            .now_ms()
            .saturating_sub(self.last_active.load(Ordering::Relaxed))
    }

    /// How long it has written nothing, counting from `since` at the earliest (ms).
    fn quiet_ms(&self, since: u64) -> u64 {
        let heard = self.last_output.load(Ordering::Relaxed).max(since);
        self.shared.now_ms().saturating_sub(heard)
    }

    /// Registers a request's stream before its line goes out.
    pub fn register(
        &self,
        id: String,
        progress: Option<String>,
        tx: mpsc::Sender<Routed>,
    ) -> Result<(), Refused> {
        self.routes().register(id, progress, Some(tx))
    }

    /// Clients' requests waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.routes().in_flight()
    }

    pub fn unregister(&self, id: &str) {
        self.routes().unregister(id);
    }

    /// Makes `tx` its `GET` stream; returns what waited for one (`None`: gone).
    pub fn attach_get(&self, tx: mpsc::Sender<Routed>) -> Option<Vec<Bytes>> {
        self.routes().attach_get(tx)
    }

    /// Writes one message (one line) to its stdin. `false`: the process is
    /// gone and never read it (once queued, a line may have been read). A
    /// process that does not take it within the silence limit is ended as
    /// silent.
    pub async fn send(&self, line: Bytes) -> bool {
        self.touch();
        let silence = self.shared.silence();
        match tokio::time::timeout(silence, self.stdin.send(line)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.end(Exit::Silent);
                true // it may have read part of what was queued before
            }
        }
    }

    /// The next message for a request's stream (sent at `since`): a
    /// process silent for the silence limit is ended (its streams then get
    /// an error answer each).
    pub async fn next(&self, rx: &mut mpsc::Receiver<Routed>, since: u64) -> Next {
        let tick = self.shared.tick();
        match tokio::time::timeout(tick, rx.recv()).await {
            Ok(Some(routed)) => {
                self.touch();
                Next::Routed(routed)
            }
            Ok(None) => Next::Closed,
            Err(_) => {
                if self.quiet_ms(since) >= self.shared.silence().as_millis() as u64 {
                    self.end(Exit::Silent);
                }
                Next::Quiet
            }
        }
    }

    /// The process is gone: its streams end — with an error answer each when
    /// it was ended for misbehaving while alive, else cut (the exchange then
    /// treats the request as lost: replay or -32003). The `GET` stream of a
    /// session its client ended stays open, silent, until the client lets
    /// it go: ended, it would be opened again, and the session moved to a
    /// new process nobody wants.
    pub fn close_streams(&self, why: Exit) {
        let deleted = why == Exit::Deleted;
        let waiting = self.routes().close(deleted);
        for (id, tx) in waiting {
            if id.is_empty() {
                // The GET stream holds this process (its guard) and so the sender.
                if let Ok(mut parked) = self.parked.lock() {
                    *parked = Some(tx);
                }
            } else if why.answers_in_flight() {
                let line = error_answer(&id, why, &self.shared.pool, self.slot);
                let _ = tx.try_send(Routed { line, last: true });
            }
            // else: dropping the sender cuts the stream
        }
    }

    async fn read_loop(self: Arc<Self>, stdout: ChildStdout) {
        let mut reader = BufReader::with_capacity(64 * 1024, stdout);
        let mut buf = Vec::new();
        let why = loop {
            match read_line(&mut reader, &mut buf, self.shared.max_line()).await {
                Ok(Line::Whole) => {
                    let line = Bytes::from(std::mem::take(&mut buf));
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.answered.store(true, Ordering::Relaxed);
                    self.last_output
                        .store(self.shared.now_ms(), Ordering::Relaxed);
                    if let Err(why) = self.deliver(line).await {
                        break why;
                    }
                }
                Ok(Line::TooLong) => break Exit::Oversize,
                Ok(Line::End) | Err(_) if self.answered() => break Exit::Crashed,
                Ok(Line::End) | Err(_) => break Exit::StartFailed,
            }
        };
        if matches!(why, Exit::Protocol | Exit::Oversize) && !self.is_ending() {
            tracing::warn!(pool = %self.shared.pool, slot = self.slot, pid = self.pid, cause = why.name(),
                "stdio server broke the protocol on stdout; ending it");
        }
        self.end(why);
    }

    /// Routes one line of stdout; `Err` when it is not JSON-RPC.
    async fn deliver(&self, line: Bytes) -> Result<(), Exit> {
        let dest = {
            let Some((kind, peek)) = routes::peek(&line) else {
                return Err(Exit::Protocol);
            };
            self.routes().route(&kind, &peek)
        };
        match dest {
            Dest::Stream(tx, last) => {
                // A stream whose client went away takes nothing more.
                let _ = tx.send(Routed { line, last }).await;
            }
            Dest::Backlog => {
                let dropped = self.routes().keep(line);
                self.shared.counters.backlog_dropped(dropped);
            }
            Dest::Drop => {}
        }
        Ok(())
    }

    async fn stderr_loop(self: Arc<Self>, stderr: ChildStderr) {
        let mut reader = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            match read_line(&mut reader, &mut buf, MAX_STDERR_LINE).await {
                Ok(Line::End) | Err(_) => return,
                Ok(Line::Whole | Line::TooLong) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end();
            if let Ok(mut last) = self.last_stderr.lock() {
                last.clear();
                last.extend(text.chars().take(300));
            }
            if tracing::enabled!(tracing::Level::DEBUG) && self.shared.stderr_budget() {
                tracing::debug!(pool = %self.shared.pool, slot = self.slot, stderr = %text, "stdio server");
            }
            buf.clear();
        }
    }

    /// Ends the process group: stdin is closed already (the writer stops
    /// when the process is asked to end); SIGTERM at half of
    /// `stop_timeout`, SIGKILL at its end. Returns the exit status.
    pub async fn terminate(&self, child: &mut Child) -> String {
        let half = self.shared.stop_timeout / 2;
        if let Ok(Ok(status)) = tokio::time::timeout(half, child.wait()).await {
            self.end_group(half).await;
            return status.to_string();
        }
        signal_group(self.pid, libc::SIGTERM);
        if let Ok(Ok(status)) = tokio::time::timeout(half, child.wait()).await {
            self.end_group(half).await;
            return status.to_string();
        }
        signal_group(self.pid, libc::SIGKILL);
        match child.wait().await {
            Ok(status) => format!("{status} (killed after {:?})", self.shared.stop_timeout),
            Err(e) => format!("killed ({e})"),
        }
    }

    /// The leader has exited: what is left of its group gets SIGTERM, and
    /// SIGKILL if it is still there after `grace`.
    pub async fn end_group(&self, grace: Duration) {
        if !group_alive(self.pid) {
            return;
        }
        signal_group(self.pid, libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while group_alive(self.pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        signal_group(self.pid, libc::SIGKILL);
    }
}

/// Counts a request in flight or an open `GET` stream on a process.
pub struct Busy(Arc<Proc>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends `sig` to the process group led by `pid`.
pub fn signal_group(pid: u32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe {
            libc::kill(-(pid as i32), sig);
        }
    }
}

/// Whether any process of the group led by `pid` is left.
fn group_alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks.
    pid > 1 && unsafe { libc::kill(-(pid as i32), 0) } == 0
}

/// The error answer a request in flight gets when its process is ended for
/// misbehaving: it may or may not have run (-32003).
fn error_answer(id: &str, why: Exit, pool: &str, slot: u64) -> Bytes {
    let message = format!(
        "the stdio server of pool {pool} {}; its process (slot {slot}) was ended, and this request may or may not have run",
        why.says()
    );
    let error = serde_json::json!({
        "code": crate::reject::OUTCOME_UNKNOWN,
        "message": message,
        "data": {"pool": pool, "cause": why.name()},
    });
    Bytes::from(format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{error}}}"#))
}

/// Feeds queued lines to the child's stdin; closes it when the process is
/// asked to end (the stdio transport's first step of a shutdown).
async fn write_loop(
    stdin: ChildStdin,
    mut rx: mpsc::Receiver<Bytes>,
    mut stop: watch::Receiver<Option<Exit>>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, stdin);
    loop {
        let line = tokio::select! {
            line = rx.recv() => line,
            _ = stop.wait_for(Option::is_some) => None,
        };
        let Some(line) = line else { break };
        let wrote = async {
            out.write_all(&line).await?;
            out.write_all(b"\n").await?;
            out.flush().await
        };
        if wrote.await.is_err() {
            break;
        }
    }
    let _ = out.shutdown().await;
}

/// How a line read ended.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line is in the buffer (without its newline).
    Whole,
    /// The line was longer than allowed: the buffer holds its start, the
    /// rest of it was skipped.
    TooLong,
    /// No more output.
    End,
}

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes
/// of it: memory is bounded whatever the process writes.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut over = false;
    loop {
        let avail = r.fill_buf().await?;
        if avail.is_empty() {
            return Ok(match (over, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Whole,
            });
        }
        let (chunk, found) = match avail.iter().position(|b| *b == b'\n') {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        let room = max.saturating_sub(buf.len());
        if chunk.len() > room {
            over = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = found.unwrap_or(avail.len());
        r.consume(used);
        if found.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(if over { Line::TooLong } else { Line::Whole });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_within_their_bound_and_a_long_one_is_cut_not_buffered() {
        let input: &[u8] = b"{\"a\":1}\r\nxxxxxxxxxxxxxxxx\nlast";
        let mut r = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::Whole);
        assert_eq!(buf, b"{\"a\":1}");
        assert_eq!(
            read_line(&mut r, &mut buf, 10).await.unwrap(),
            Line::TooLong
        );
        assert_eq!(buf.len(), 10, "only the bound is kept");
        assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::Whole);
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf, 10).await.unwrap(), Line::End);
    }

    #[test]
    fn a_misbehaving_process_leaves_each_request_a_clear_error_answer() {
        let line = error_answer("\"x\"", Exit::Silent, "memory", 3);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["id"], "x");
        assert_eq!(v["error"]["code"], crate::reject::OUTCOME_UNKNOWN);
        assert_eq!(v["error"]["data"]["cause"], "silent");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("pool memory") && message.contains("slot 3"),
            "{message}"
        );
    }
}
