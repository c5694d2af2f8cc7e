//! The bridge itself: the client's stream, the message endpoint, and one
//! worker per session that talks to the backend. See the module above.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_sse::Splitter;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::table::{Entry, Inbound, QueueError, Table};
use crate::metrics::Metrics;
use crate::policy::edge;
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::relay::{self, Failure, MAX_EVENT, MAX_WHOLE_BODY};
use crate::session::Sessions;
use crate::state::State;
use crate::upstream::{self, Forwarded, Frames, Outgoing, SESSION_HEADER, Upstream};

/// Messages a session's inbox holds before POSTs get 503.
const INBOX: usize = 64;
/// Events queued for a client's stream before the worker waits.
const OUTBOX: usize = 32;
/// Bytes of events queued for a client's stream before the worker waits
/// (one larger event may still pass alone).
const OUTBOX_BYTES: usize = 2 * 1024 * 1024;

/// An event for the client's stream, holding its share of the outbox bytes.
type OutEvent = (Bytes, tokio::sync::OwnedSemaphorePermit);

pub struct Bridge {
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub upstream: Arc<Upstream>,
    pub table: Table,
}

fn new_id() -> String {
    let mut raw = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn message(data: &str) -> Bytes {
    mcp_sse::format(Some("message"), None, data)
}

/// The backend session behind one legacy session.
struct Link {
    pool: Arc<Pool>,
    backend: Arc<BackendState>,
    session: String,
    version: Option<String>,
}

/// Where a worker sends events for its client: bounded in events and bytes.
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<OutEvent>,
    bytes: Arc<Semaphore>,
    timeout: Duration,
}

impl Out {
    /// Queues an event; false if the client is gone or stuck.
    async fn send(&self, event: Bytes) -> bool {
        let n = event.len().clamp(1, OUTBOX_BYTES) as u32;
        let queued = async {
            let permit = Arc::clone(&self.bytes).acquire_many_owned(n).await.ok()?;
            self.tx.send((event, permit)).await.ok()
        };
        matches!(
            tokio::time::timeout(self.timeout, queued).await,
            Ok(Some(()))
        )
    }

    /// A JSON-RPC error for a request (notifications get none).
    async fn error(&self, rpc: Option<&Rpc>, code: i64, msg: &str) {
        if let Some(id) = rpc.and_then(|r| r.id.as_ref()) {
            let body = jsonrpc::error_body(Some(id), code, msg);
            let _ = self.send(message(&String::from_utf8_lossy(&body))).await;
        }
    }

    async fn reject(&self, rpc: &Rpc, reject: &Reject) {
        self.error(Some(rpc), reject.code(), &reject.to_string())
            .await;
    }
}

impl Bridge {
    pub fn new(
        state: Arc<State>,
        sessions: Arc<Sessions>,
        upstream: Arc<Upstream>,
        max_sessions: usize,
    ) -> Self {
        Self {
            state,
            sessions,
            upstream,
            table: Table::new(max_sessions),
        }
    }

    /// `GET /sse`: holds the client's stream for the life of the session.
    pub async fn serve_stream(
        self: &Arc<Self>,
        session: &mut Session,
        pool: &Arc<Pool>,
        forwarded: Forwarded,
    ) -> Result<(), Failure> {
        let id = new_id();
        let (inbox_tx, inbox_rx) = mpsc::channel::<Inbound>(INBOX);
        let (out_tx, mut out_rx) = mpsc::channel::<OutEvent>(OUTBOX);
        if !self.table.insert(&id, Entry::new(inbox_tx)) {
            return Err(Reject::LegacyCapacity.into());
        }
        let out = Out {
            tx: out_tx,
            bytes: Arc::new(Semaphore::new(OUTBOX_BYTES)),
            timeout: self.state.limits.write_timeout,
        };
        // The worker ends once its inbox closes (the entry leaves the table
        // below); it then closes the backend session.
        tokio::spawn(Arc::clone(self).worker(Arc::clone(pool), inbox_rx, out, forwarded));
        let result = self.stream_to_client(session, pool, &id, &mut out_rx).await;
        self.table.remove(&id);
        tracing::info!(legacy_session = %&id[..8], "legacy SSE session closed");
        result
    }

    async fn stream_to_client(
        &self,
        session: &mut Session,
        pool: &Pool,
        id: &str,
        out_rx: &mut mpsc::Receiver<OutEvent>,
    ) -> Result<(), Failure> {
        let limits = &self.state.limits;
        let mut head = ResponseHeader::build(200, Some(4)).map_err(Failure::Abort)?;
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
        ] {
            head.insert_header(k, v).map_err(Failure::Abort)?;
        }
        let mut down = relay::Downstream {
            session,
            write_timeout: limits.write_timeout,
            keepalive: limits.sse_keepalive,
        };
        let endpoint = format!("{}/messages?sessionId={id}", pool.prefix);
        down.open(head, mcp_sse::format(Some("endpoint"), None, &endpoint))
            .await?;
        tracing::info!(legacy_session = %&id[..8], pool = %pool.name, "legacy SSE session opened");

        let mut keepalive = tokio::time::interval(limits.sse_keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        loop {
            // The event's outbox bytes are returned once it is written.
            let (chunk, _permit) = tokio::select! {
                ev = out_rx.recv() => match ev {
                    Some((ev, permit)) => (ev, Some(permit)),
                    // The worker gave up on the session: end the stream cleanly.
                    None => return down.finish().await,
                },
                _ = keepalive.tick() => (Bytes::from_static(mcp_sse::KEEPALIVE), None),
            };
            if let Err(e) = down.send(chunk).await {
                tracing::info!(legacy_session = %&id[..8], "legacy SSE client went away or stopped reading");
                return Err(e);
            }
            keepalive.reset();
        }
    }

    /// `POST /messages?sessionId=…`: queue the (already checked) message, answer 202.
    pub fn accept_message(&self, query: Option<&str>, body: Bytes, rpc: Rpc) -> Result<(), Reject> {
        let id = edge::query_param(query, &["sessionId", "session_id"])
            .ok_or(Reject::BadRequest("missing sessionId"))?;
        let entry = self.table.get(id).ok_or(Reject::UnknownLegacySession)?;
        match entry.queue(body, rpc, self.state.limits.legacy_inbox_bytes) {
            Ok(()) => Ok(()),
            Err(QueueError::Full) => Err(Reject::SessionBusy),
            Err(QueueError::Closed) => Err(Reject::UnknownLegacySession),
        }
    }

    async fn worker(
        self: Arc<Self>,
        pool: Arc<Pool>,
        mut inbox: mpsc::Receiver<Inbound>,
        out: Out,
        forwarded: Forwarded,
    ) {
        let permits = Arc::new(Semaphore::new(
            self.state.limits.legacy_session_concurrency.max(1),
        ));
        let forwarded = Arc::new(forwarded);
        let mut link: Option<Arc<Link>> = None;
        let mut calls = JoinSet::new();
        let mut listener = None;
        while let Some(Inbound { body, rpc, _queued }) = inbox.recv().await {
            drop(_queued);
            while calls.try_join_next().is_some() {}
            // Each backend call holds one unit of the gateway's in-flight budget
            // and one of this session's concurrency permits.
            let slot = match self.state.enter() {
                Ok(s) => s,
                Err(r) => {
                    self.state.metrics.reject(r.reason());
                    out.reject(&rpc, &r).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            match link.clone() {
                Some(l) if !rpc.is_initialize() => {
                    let bridge = Arc::clone(&self);
                    let (out, forwarded) = (out.clone(), Arc::clone(&forwarded));
                    calls.spawn(async move {
                        let keep = bridge.call(&l, &body, &rpc, &out, &forwarded).await;
                        drop((permit, slot));
                        keep
                    });
                }
                _ => {
                    // Opening the backend session: inline, later messages need it.
                    let opened = self.open(&pool, &body, &rpc, &out, &forwarded).await;
                    drop((permit, slot));
                    match opened {
                        Ok(Some(l)) => {
                            if listener.is_none() {
                                let bridge = Arc::clone(&self);
                                let (l2, out2) = (Arc::clone(&l), out.clone());
                                listener =
                                    Some(tokio::spawn(
                                        async move { bridge.listen(&l2, &out2).await },
                                    ));
                            }
                            link = Some(l);
                        }
                        Ok(None) => {}
                        Err(()) => break,
                    }
                }
            }
        }
        calls.abort_all();
        if let Some(l) = listener {
            l.abort();
        }
        if let Some(l) = link {
            let _ = self
                .upstream
                .send(
                    l.backend.addr,
                    Outgoing {
                        method: http::Method::DELETE,
                        path: "/mcp",
                        client_headers: None,
                        session: Some(&l.session),
                        protocol_version: l.version.as_deref(),
                        accept: None,
                        content_type: None,
                        body: Bytes::new(),
                        forwarded: &forwarded,
                    },
                )
                .await;
        }
    }

    /// Sends the first message (normally `initialize`) to a new backend.
    /// `Ok(Some)`: a backend session exists; `Ok(None)`: not yet; `Err`: the client is gone.
    async fn open(
        &self,
        pool: &Arc<Pool>,
        body: &Bytes,
        rpc: &Rpc,
        out: &Out,
        forwarded: &Forwarded,
    ) -> Result<Option<Arc<Link>>, ()> {
        let mut attempt = 0;
        let (backend, _load, parts, frames) = loop {
            attempt += 1;
            let backend = match self.sessions.pick(pool) {
                Ok(b) => b,
                Err(r) => {
                    self.state.metrics.reject(r.reason());
                    out.reject(rpc, &r).await;
                    return Ok(None);
                }
            };
            let load = backend.start_request();
            match self
                .upstream
                .send(backend.addr, post(body, None, None, forwarded))
                .await
            {
                Ok((parts, frames)) => break (backend, load, parts, frames),
                Err(e) if e.never_reached() && attempt < crate::session::ATTEMPTS => {
                    self.sessions.eject(pool, &backend);
                }
                Err(e) => {
                    if e.never_reached() {
                        self.sessions.eject(pool, &backend);
                    }
                    tracing::warn!(backend = %backend.addr, error = %e, "legacy bridge: backend request failed");
                    out.error(Some(rpc), -32603, "backend unavailable").await;
                    return Ok(None);
                }
            }
        };
        if let Some(name) = parts
            .headers
            .get(upstream::INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            backend.note_instance(name);
        }
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut version = None;
        let keep = forward(
            parts.status,
            &parts.headers,
            frames,
            out,
            Some(rpc),
            Some(&mut version),
        )
        .await;
        if !keep {
            return Err(());
        }
        Ok(session.map(|session| {
            backend.session_opened();
            Metrics::inc(&self.state.metrics.sessions_issued);
            Arc::new(Link {
                pool: Arc::clone(pool),
                backend,
                session,
                version,
            })
        }))
    }

    /// One message on an open backend session. Returns false if the client is gone.
    async fn call(&self, link: &Link, body: &Bytes, rpc: &Rpc, out: &Out, fwd: &Forwarded) -> bool {
        let _load = link.backend.start_request();
        let sent = self
            .upstream
            .send(
                link.backend.addr,
                post(body, Some(&link.session), link.version.as_deref(), fwd),
            )
            .await;
        match sent {
            Ok((parts, frames)) => {
                let keep =
                    forward(parts.status, &parts.headers, frames, out, Some(rpc), None).await;
                if keep
                    && matches!(rpc.method, Method::ToolsCall { .. })
                    && parts.status.is_success()
                {
                    Metrics::inc(&self.state.metrics.tool_calls);
                }
                keep
            }
            Err(e) => {
                if e.never_reached() {
                    self.sessions.eject(&link.pool, &link.backend);
                }
                Metrics::inc(&self.state.metrics.upstream_errors);
                tracing::warn!(backend = %link.backend.addr, error = %e, "legacy bridge: backend request failed");
                out.error(Some(rpc), -32603, "backend unavailable").await;
                true
            }
        }
    }

    /// The backend's server-to-client stream (GET /mcp), if it offers one.
    async fn listen(&self, link: &Link, out: &Out) {
        let fwd = Forwarded::default();
        let sent = self
            .upstream
            .send(
                link.backend.addr,
                Outgoing {
                    method: http::Method::GET,
                    path: "/mcp",
                    client_headers: None,
                    session: Some(&link.session),
                    protocol_version: link.version.as_deref(),
                    accept: Some("text/event-stream"),
                    content_type: None,
                    body: Bytes::new(),
                    forwarded: &fwd,
                },
            )
            .await;
        if let Ok((parts, frames)) = sent
            && parts.status.is_success()
        {
            forward(parts.status, &parts.headers, frames, out, None, None).await;
        }
    }
}

fn post<'a>(
    body: &Bytes,
    session: Option<&'a str>,
    version: Option<&'a str>,
    forwarded: &'a Forwarded,
) -> Outgoing<'a> {
    Outgoing {
        method: http::Method::POST,
        path: "/mcp",
        client_headers: None,
        session,
        protocol_version: version,
        accept: Some("application/json, text/event-stream"),
        content_type: Some("application/json"),
        body: body.clone(),
        forwarded,
    }
}

/// What the bridge reads of a backend message: that it is JSON, and an
/// `initialize` result's protocol version. Borrowed, so nothing else of a
/// (possibly large) message is copied.
#[derive(serde::Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a serde_json::value::RawValue>,
}

impl<'a> Reply<'a> {
    fn read(data: &'a str) -> Option<Self> {
        serde_json::from_str(data).ok()
    }

    fn protocol_version(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct InitResult {
            #[serde(rename = "protocolVersion")]
            protocol_version: Option<String>,
        }
        let result = self.result?;
        serde_json::from_str::<InitResult>(result.get())
            .ok()?
            .protocol_version
    }
}

/// Relays a backend answer (JSON or SSE) as `event: message` events.
/// Returns false if the client can no longer take events.
async fn forward(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    mut frames: Frames,
    out: &Out,
    rpc: Option<&Rpc>,
    mut version: Option<&mut Option<String>>,
) -> bool {
    if !upstream::is_event_stream(headers) {
        let text = match frames.read_all(MAX_WHOLE_BODY).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "legacy bridge: backend answer unreadable");
                out.error(rpc, -32603, "backend failed to answer").await;
                return true;
            }
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            if !status.is_success() {
                out.error(rpc, -32603, &format!("backend answered {status}"))
                    .await;
            }
            return true;
        }
        let text = String::from_utf8_lossy(&text);
        return match Reply::read(&text) {
            Some(reply) if reply.jsonrpc.is_some() => {
                if let Some(v) = version.as_deref_mut() {
                    *v = reply.protocol_version();
                }
                out.send(message(&text)).await
            }
            _ => {
                tracing::warn!(%status, "backend answered with something that is not JSON-RPC");
                out.error(
                    rpc,
                    -32603,
                    &format!("backend sent an invalid response ({status})"),
                )
                .await;
                true
            }
        };
    }
    let mut splitter = Splitter::new(MAX_EVENT);
    let mut events = Vec::new();
    loop {
        let chunk = match frames.next().await {
            Ok(Some(c)) => c,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "legacy bridge: backend stream failed");
                out.error(rpc, -32603, "backend failed mid-response").await;
                return true;
            }
        };
        events.clear();
        if let Err(e) = splitter.push_into(&chunk, &mut events) {
            tracing::warn!(error = %e, "legacy bridge: dropping the backend stream");
            return true;
        }
        for ev in &events {
            if !matches!(ev.event_type().as_deref(), None | Some("message")) {
                continue;
            }
            let Some(data) = ev.data() else { continue };
            if data.trim().is_empty() {
                continue; // priming events carry only an id
            }
            let Some(reply) = Reply::read(&data) else {
                tracing::warn!("backend sent a non-JSON SSE event; skipped");
                continue;
            };
            if let (Some(v), Some(found)) = (version.as_deref_mut(), reply.protocol_version()) {
                *v = Some(found);
            }
            if !out.send(message(&data)).await {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sse_message_events() {
        assert_eq!(&message("{}")[..], b"event: message\ndata: {}\n\n");
        assert_eq!(new_id().len(), 32);
    }
}
