//! The legacy HTTP+SSE transport (2024-11-05), bridged onto Streamable HTTP
//! sessions so backends only ever serve `/mcp`.
//!
//! `GET /sse` opens a stream whose first event names a gateway-relative
//! `/messages?sessionId=…`; each POST there is answered 202 at once and
//! queued for the session's worker, which forwards it to the session's
//! backend and turns whatever comes back (JSON or SSE) into `event: message`
//! events on the client's stream.
//!
//! Bounds: the session table is sharded and capped (`max_legacy_sessions`),
//! each session's inbound queue and outbound event queue are bounded, and a
//! client that stops reading for `sse_write_timeout` is dropped — so a slow
//! or vanished client costs at most a fixed amount of memory.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use pingora::Result;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::pool::{BackendState, Pool};
use crate::proxy::jsonrpc::{self, RpcSummary};
use crate::proxy::{Metrics, SESSION_HEADER, Shared, client_ip, edge, respond, rpc_error};

const SHARDS: usize = 32;
const INBOX: usize = 64;
const OUTBOX: usize = 256;
/// An SSE event from a backend larger than this is garbage, not a message.
const MAX_EVENT: usize = 8 * 1024 * 1024;

/// A client message for the worker, with what `accept_message` already read from it.
type Inbound = (Bytes, RpcSummary);

struct Entry {
    inbox: mpsc::Sender<Inbound>,
}

/// The table of open legacy sessions on this process.
pub struct Legacy {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    count: AtomicUsize,
    max: usize,
    http: reqwest::Client,
}

impl Legacy {
    pub fn new(max: usize) -> anyhow::Result<Self> {
        Ok(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            count: AtomicUsize::new(0),
            max,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .pool_idle_timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    pub fn open_sessions(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<String, Entry>> {
        let mut h = DefaultHasher::new();
        id.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    fn insert(&self, id: &str, entry: Entry) -> bool {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if let Ok(mut shard) = self.shard(id).lock() {
            shard.insert(id.to_owned(), entry);
            true
        } else {
            self.count.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    fn remove(&self, id: &str) {
        if let Ok(mut shard) = self.shard(id).lock()
            && shard.remove(id).is_some()
        {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn inbox(&self, id: &str) -> Option<mpsc::Sender<Inbound>> {
        self.shard(id).lock().ok()?.get(id).map(|e| e.inbox.clone())
    }
}

fn new_id() -> String {
    let mut raw = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats one SSE event; multi-line data becomes several `data:` lines.
fn sse_event(event: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 32);
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// `GET /sse`: holds the client's stream for the life of the session.
pub async fn serve_stream(
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    session: &mut Session,
) -> Result<bool> {
    if session.req_header().method != http::Method::GET {
        return respond(
            session,
            405,
            jsonrpc::error_body(None, -32600, "use GET for /sse"),
            &[("allow", "GET")],
        )
        .await;
    }
    let id = new_id();
    let (inbox_tx, inbox_rx) = mpsc::channel::<Inbound>(INBOX);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTBOX);
    if !shared.legacy.insert(&id, Entry { inbox: inbox_tx }) {
        Metrics::inc(&shared.metrics.rejected_capacity);
        return respond(
            session,
            503,
            jsonrpc::error_body(None, -32000, "too many legacy SSE sessions"),
            &[("retry-after", "5")],
        )
        .await;
    }
    let client_ip = client_ip(session).unwrap_or_default();
    let worker = tokio::spawn(worker(
        Arc::clone(shared),
        Arc::clone(pool),
        inbox_rx,
        out_tx,
        client_ip,
    ));
    let result = stream_to_client(shared, pool, session, &id, &mut out_rx).await;
    shared.legacy.remove(&id);
    drop(out_rx);
    // The worker ends once its inbox closes (removed above); it then closes
    // the backend session. Do not wait for it here.
    drop(worker);
    tracing::info!(session = %id, "legacy SSE session closed");
    result
}

async fn stream_to_client(
    shared: &Arc<Shared>,
    pool: &Arc<Pool>,
    session: &mut Session,
    id: &str,
    out_rx: &mut mpsc::Receiver<Bytes>,
) -> Result<bool> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header("content-type", "text/event-stream")?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("x-accel-buffering", "no")?;
    resp.insert_header("transfer-encoding", "chunked")?;
    session.write_response_header(Box::new(resp), false).await?;
    let endpoint = format!("{}/messages?sessionId={id}", pool.prefix);
    session
        .write_response_body(Some(sse_event("endpoint", &endpoint)), false)
        .await?;
    tracing::info!(session = %id, pool = %pool.name, "legacy SSE session opened");

    let write_timeout = shared.limits.sse_write_timeout;
    let mut keepalive = tokio::time::interval(shared.limits.sse_keepalive);
    keepalive.tick().await;
    loop {
        let chunk = tokio::select! {
            ev = out_rx.recv() => match ev {
                Some(ev) => ev,
                None => {
                    // The worker gave up on the session: end the stream
                    // cleanly, but never wait long on this client.
                    let _ = tokio::time::timeout(write_timeout, session.write_response_body(None, true)).await;
                    return Ok(true);
                }
            },
            _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
        };
        match tokio::time::timeout(
            write_timeout,
            session.write_response_body(Some(chunk), false),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok(true), // client went away
            Err(_) => {
                tracing::warn!(session = %id, "legacy SSE client stopped reading; dropping it");
                return Ok(true);
            }
        }
    }
}

/// `POST /messages?sessionId=…`: queue the message, answer 202.
pub async fn accept_message(
    shared: &Arc<Shared>,
    _pool: &Arc<Pool>,
    session: &mut Session,
) -> Result<bool> {
    if session.req_header().method != http::Method::POST {
        return respond(
            session,
            405,
            jsonrpc::error_body(None, -32600, "use POST for /messages"),
            &[("allow", "POST")],
        )
        .await;
    }
    let query = session.req_header().uri.query().map(str::to_owned);
    let Some(id) = edge::query_param(query.as_deref(), &["sessionId", "session_id"]) else {
        return rpc_error(session, 400, None, -32600, "missing sessionId").await;
    };
    let Some(inbox) = shared.legacy.inbox(id) else {
        Metrics::inc(&shared.metrics.rejected_session);
        return rpc_error(
            session,
            404,
            None,
            -32001,
            "Session not found; open a new /sse stream",
        )
        .await;
    };
    let limit = shared.limits.max_body_bytes;
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            Metrics::inc(&shared.metrics.rejected_body);
            return rpc_error(session, 413, None, -32600, "request body too large").await;
        }
    }
    let summary = match jsonrpc::summarize(&body) {
        Ok(s) => s,
        Err(e) => {
            Metrics::inc(&shared.metrics.rejected_malformed);
            return rpc_error(session, 400, None, e.code(), e.message()).await;
        }
    };
    if summary.method.as_deref() == Some("tools/call") {
        Metrics::inc(&shared.metrics.tool_calls);
    }
    match inbox.try_send((body.freeze(), summary)) {
        Ok(()) => {
            let mut resp = ResponseHeader::build(202, Some(2))?;
            resp.insert_header("content-length", "8")?;
            session.write_response_header(Box::new(resp), false).await?;
            session
                .write_response_body(Some(Bytes::from_static(b"Accepted")), true)
                .await?;
            Ok(true)
        }
        Err(mpsc::error::TrySendError::Full((_, summary))) => {
            respond(
                session,
                503,
                jsonrpc::error_body(summary.id.as_ref(), -32000, "session is busy; retry"),
                &[("retry-after", "1")],
            )
            .await
        }
        Err(mpsc::error::TrySendError::Closed((_, summary))) => {
            rpc_error(
                session,
                404,
                summary.id.as_ref(),
                -32001,
                "Session not found; open a new /sse stream",
            )
            .await
        }
    }
}

/// The backend side of one legacy session.
struct Upstream {
    backend: Arc<BackendState>,
    session: String,
    version: Option<String>,
}

/// Sends an event to the client, or reports that the client is gone/stuck.
async fn emit(out: &mpsc::Sender<Bytes>, data: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, out.send(sse_event("message", data))).await,
        Ok(Ok(()))
    )
}

async fn emit_error(
    out: &mpsc::Sender<Bytes>,
    summary: &RpcSummary,
    message: &str,
    timeout: Duration,
) {
    if let Some(id) = &summary.id {
        let body = jsonrpc::error_body(Some(id), -32603, message);
        let _ = emit(out, &String::from_utf8_lossy(&body), timeout).await;
    }
}

async fn worker(
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    mut inbox: mpsc::Receiver<Inbound>,
    out: mpsc::Sender<Bytes>,
    client_ip: String,
) {
    let timeout = shared.limits.sse_write_timeout;
    let http = shared.legacy.http.clone();
    let mut upstream: Option<Upstream> = None;
    let mut listener: Option<tokio::task::JoinHandle<()>> = None;
    while let Some((body, summary)) = inbox.recv().await {
        let backend = match &upstream {
            Some(u) => Arc::clone(&u.backend),
            None => match pool.pick() {
                Some(b) => b,
                None => {
                    Metrics::inc(&shared.metrics.no_backend);
                    emit_error(&out, &summary, "no healthy backend; retry shortly", timeout).await;
                    continue;
                }
            },
        };
        let guard = backend.start_request();
        let mut req = http
            .post(format!("http://{}{}", backend.addr, "/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("x-forwarded-for", &client_ip)
            .body(body);
        if let Some(u) = &upstream {
            req = req.header(SESSION_HEADER, &u.session);
            if let Some(v) = &u.version {
                req = req.header("mcp-protocol-version", v);
            }
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                if e.is_connect() {
                    backend.eject(pool.eject_for);
                }
                tracing::warn!(backend = %backend.addr, error = %e, "legacy bridge: backend request failed");
                emit_error(&out, &summary, "backend unavailable", timeout).await;
                if upstream.is_some() {
                    break; // the session lived there; the client must reconnect
                }
                continue;
            }
        };
        let status = resp.status();
        if upstream.is_none()
            && let Some(sid) = resp
                .headers()
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
        {
            backend.session_opened();
            Metrics::inc(&shared.metrics.sessions_issued);
            upstream = Some(Upstream {
                backend: Arc::clone(&backend),
                session: sid.to_owned(),
                version: None,
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND
            && summary.method.as_deref() != Some("initialize")
            && upstream.is_some()
        {
            emit_error(
                &out,
                &summary,
                "session lost on the backend; reconnect",
                timeout,
            )
            .await;
            break;
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            // A backend error that is already JSON-RPC goes through as is.
            if serde_json::from_str::<Value>(&text).is_ok_and(|v| v.get("jsonrpc").is_some()) {
                if !emit(&out, &text, timeout).await {
                    break;
                }
            } else {
                emit_error(
                    &out,
                    &summary,
                    &format!("backend answered {status}"),
                    timeout,
                )
                .await;
            }
            continue;
        }
        if summary.is_initialize() {
            // Read inline: later messages need the session and its version.
            let mut seen_version = None;
            let ok = forward(resp, &out, timeout, &summary, |msg| {
                if let Some(v) = msg
                    .pointer("/result/protocolVersion")
                    .and_then(Value::as_str)
                {
                    seen_version = Some(v.to_owned());
                }
            })
            .await;
            drop(guard);
            if !ok {
                break;
            }
            if let Some(u) = upstream.as_mut() {
                u.version = seen_version;
                if listener.is_none() {
                    listener = Some(tokio::spawn(listen(
                        http.clone(),
                        backend.addr,
                        u.session.clone(),
                        u.version.clone(),
                        out.clone(),
                        timeout,
                    )));
                }
            }
        } else {
            let out = out.clone();
            tokio::spawn(async move {
                forward(resp, &out, timeout, &summary, |_| {}).await;
                drop(guard);
            });
        }
    }
    if let Some(l) = listener {
        l.abort();
    }
    if let Some(u) = upstream {
        let mut req = http
            .delete(format!("http://{}/mcp", u.backend.addr))
            .header(SESSION_HEADER, &u.session);
        if let Some(v) = &u.version {
            req = req.header("mcp-protocol-version", v);
        }
        let _ = req.timeout(Duration::from_secs(5)).send().await;
    }
}

/// The backend's server-to-client stream (GET /mcp), if it offers one.
async fn listen(
    http: reqwest::Client,
    addr: std::net::SocketAddr,
    session: String,
    version: Option<String>,
    out: mpsc::Sender<Bytes>,
    timeout: Duration,
) {
    let mut req = http
        .get(format!("http://{addr}/mcp"))
        .header("accept", "text/event-stream")
        .header(SESSION_HEADER, session);
    if let Some(v) = version {
        req = req.header("mcp-protocol-version", v);
    }
    if let Ok(resp) = req.send().await
        && resp.status().is_success()
    {
        forward(resp, &out, timeout, &RpcSummary::default(), |_| {}).await;
    }
}

/// Relays a backend response (JSON or SSE) as `event: message` events.
/// Returns false if the client can no longer take events.
async fn forward(
    resp: reqwest::Response,
    out: &mpsc::Sender<Bytes>,
    timeout: Duration,
    request: &RpcSummary,
    mut inspect: impl FnMut(&Value),
) -> bool {
    let is_sse = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    if !is_sse {
        let Ok(text) = resp.text().await else {
            return true;
        };
        if text.trim().is_empty() {
            return true;
        }
        return match serde_json::from_str::<Value>(&text) {
            Ok(v) => {
                inspect(&v);
                emit(out, &text, timeout).await
            }
            Err(_) => {
                tracing::warn!("backend answered with something that is not JSON");
                emit_error(out, request, "backend sent an invalid response", timeout).await;
                true
            }
        };
    }
    let mut parser = SseParser::default();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return true; // backend closed mid-stream
        };
        let Some(events) = parser.push(&chunk) else {
            tracing::warn!("backend sent an oversized SSE event; dropping the stream");
            return true;
        };
        for data in events {
            match serde_json::from_str::<Value>(&data) {
                Ok(v) => inspect(&v),
                Err(_) => {
                    tracing::warn!("backend sent a non-JSON SSE event; skipped");
                    continue;
                }
            }
            if !emit(out, &data, timeout).await {
                return false;
            }
        }
    }
    true
}

/// Incremental SSE parser: yields the data of each complete event.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the completed events' data, or `None` if an
    /// event grows past the bound (a garbage backend).
    pub fn push(&mut self, chunk: &[u8]) -> Option<Vec<String>> {
        self.buf
            .extend(chunk.iter().copied().filter(|b| *b != b'\r'));
        let mut events = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                let joined = data.join("\n");
                if !joined.trim().is_empty() {
                    events.push(joined);
                }
            }
        }
        (self.buf.len() <= MAX_EVENT).then_some(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunks() {
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b"id: 1\nretry: 3000\ndata:\n\n").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            p.push(b"event: message\ndata: {\"a\":").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            p.push(b"1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n")
                .unwrap(),
            vec!["{\"a\":1}".to_string(), "x\ny".to_string()]
        );
    }

    #[test]
    fn bounds_a_runaway_event() {
        let mut p = SseParser::default();
        let big = vec![b'a'; MAX_EVENT + 1];
        assert!(p.push(&big).is_none());
    }

    #[test]
    fn formats_multiline_data() {
        assert_eq!(
            &sse_event("message", "a\nb")[..],
            b"event: message\ndata: a\ndata: b\n\n"
        );
    }
}
