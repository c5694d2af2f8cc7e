//! The bridge itself: the client's stream, the message endpoint, and one
//! worker per session that talks to the backend. See the module above.
//!
//! Backends come and go under a legacy session as under a Streamable HTTP
//! one: the worker keeps the client's `initialize` parameters, and when its
//! backend session is lost it opens one elsewhere (`Sessions::open_elsewhere`)
//! and sends the message again if that is safe (`session::replay`), else
//! answers it "outcome unknown". The client's stream and `sessionId` stay.
//!
//! Replicas: with `[cluster] advertise` set, a session id is sealed and names
//! the replica holding the client's stream; a `POST /messages` that lands on
//! another replica is relayed there (once), so the seed's client works behind
//! a round-robin balancer in front of several gateways.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mcp_sse::Splitter;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{Mutex, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::table::{Entry, Inbound, QueueError, Table};
use crate::metrics::{Metrics, Transport};
use crate::policy::edge;
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::pool::outlier::Outcome;
use crate::pool::{BackendState, Pool};
use crate::reject::{OUTCOME_UNKNOWN, Reject};
use crate::relay::{self, Failure, MAX_EVENT, MAX_WHOLE_BODY, Shape};
use crate::session::asks::{self, Tag};
use crate::session::{ATTEMPTS, Sessions, failover, replay};
use crate::state::State;
use crate::trace;
use crate::upstream::{self, Forwarded, Frames, Outgoing, SESSION_HEADER, Upstream};

/// Messages a session's inbox holds before POSTs get 503.
const INBOX: usize = 64;
/// Events queued for a client's stream before the worker waits.
const OUTBOX: usize = 32;
/// Bytes of events queued for a client's stream before the worker waits
/// (one larger event may still pass alone).
const OUTBOX_BYTES: usize = 2 * 1024 * 1024;
/// Marks a `POST /messages` relayed from another replica (never relayed again).
const RELAYED: &str = "x-mcp-gateway-relayed";

/// An event for the client's stream, holding its share of the outbox bytes.
type OutEvent = (Bytes, tokio::sync::OwnedSemaphorePermit);

pub struct Bridge {
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub upstream: Arc<Upstream>,
    pub table: Table,
    /// This replica's address as other replicas reach it (`[cluster] advertise`).
    pub advertise: Option<String>,
}

fn new_id() -> String {
    let mut raw = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn message(data: &str) -> Bytes {
    mcp_sse::format(Some("message"), None, data)
}

/// Who a legacy session belongs to, and how its traffic is shaped for them.
#[derive(Clone)]
pub struct Caller {
    /// The principal ("" when anonymous); messages must come from the same one.
    pub principal: String,
    pub principal_header: http::HeaderName,
    pub rewrite: Option<relay::Rewrite>,
}

/// The backend session behind one legacy session, as of one generation.
struct Link {
    backend: Arc<BackendState>,
    session: String,
    version: String,
    generation: u64,
}

impl Link {
    /// Names this backend session on the server requests it sends ([`asks`]).
    fn tag(&self) -> Tag {
        Tag::of(&self.backend.id, &self.session)
    }
}

/// The session's current link, shared by its calls and its listener.
struct Links {
    pool: Arc<Pool>,
    /// The client's `initialize` params, to open the session elsewhere.
    init: String,
    current: watch::Sender<Arc<Link>>,
    /// Held while a lost link is being replaced, so it is replaced once.
    moving: Mutex<()>,
}

/// How relaying one backend answer ended.
#[derive(Debug, PartialEq, Eq)]
enum Relayed {
    /// The answer (or the whole stream) went to the client.
    Done,
    /// The client can no longer take events.
    ClientGone,
    /// The backend failed before the answer was complete.
    Lost,
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
        if let Some(id) = rpc.id.as_ref() {
            let body = jsonrpc::error_body_with(
                Some(id),
                reject.code(),
                &reject.to_string(),
                reject.data(),
            );
            let _ = self.send(message(&String::from_utf8_lossy(&body))).await;
        }
    }
}

impl Bridge {
    pub fn new(
        state: Arc<State>,
        sessions: Arc<Sessions>,
        upstream: Arc<Upstream>,
        max_sessions: usize,
        advertise: Option<String>,
    ) -> Self {
        Self {
            state,
            sessions,
            upstream,
            table: Table::new(max_sessions),
            advertise,
        }
    }

    /// `GET /sse`: holds the client's stream for the life of the session.
    pub async fn serve_stream(
        self: &Arc<Self>,
        session: &mut Session,
        pool: &Arc<Pool>,
        forwarded: Forwarded,
        caller: Caller,
    ) -> Result<(), Failure> {
        let id = new_id();
        // The id the client sees: sealed, naming this replica, when replicas share sessions.
        let public = match &self.advertise {
            Some(me) => self
                .sessions
                .sealer()
                .issue_legacy(me, &id)
                .ok_or(Reject::BadGateway)?,
            None => id.clone(),
        };
        let (inbox_tx, inbox_rx) = mpsc::channel::<Inbound>(INBOX);
        let (out_tx, mut out_rx) = mpsc::channel::<OutEvent>(OUTBOX);
        if !self
            .table
            .insert(&id, Entry::new(inbox_tx, &caller.principal))
        {
            return Err(Reject::LegacyCapacity.into());
        }
        let out = Out {
            tx: out_tx,
            bytes: Arc::new(Semaphore::new(OUTBOX_BYTES)),
            timeout: self.state.limits.write_timeout,
        };
        // The worker ends once its inbox closes (the entry leaves the table
        // below); it then closes the backend session.
        tokio::spawn(Arc::clone(self).worker(Arc::clone(pool), inbox_rx, out, forwarded, caller));
        let result = self
            .stream_to_client(session, pool, &id, &public, &mut out_rx)
            .await;
        self.table.remove(&id);
        tracing::info!(legacy_session = %&id[..8], "legacy SSE session closed");
        result
    }

    async fn stream_to_client(
        &self,
        session: &mut Session,
        pool: &Pool,
        id: &str,
        public: &str,
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
        let mut down = relay::Downstream::new(session, &self.state);
        let endpoint = format!("{}/messages?sessionId={public}", pool.prefix);
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

    /// Where a `POST /messages` goes: this replica's table, or the replica
    /// that holds the stream.
    pub fn locate(&self, query: Option<&str>) -> Result<Located, Reject> {
        let raw = edge::query_param(query, &["sessionId", "session_id"])
            .ok_or(Reject::BadRequest("missing sessionId"))?;
        if self.advertise.is_none() {
            return Ok(Located::Here(raw.to_owned()));
        }
        let sealed = self
            .sessions
            .sealer()
            .open_legacy(raw)
            .map_err(|_| Reject::UnknownLegacySession)?;
        if Some(&sealed.owner) == self.advertise.as_ref() {
            Ok(Located::Here(sealed.id))
        } else {
            Ok(Located::Elsewhere {
                owner: sealed.owner,
            })
        }
    }

    /// Queues a (checked) message for a session of this replica, from the
    /// principal that opened it (another principal's is an unknown session).
    pub fn accept_message(
        &self,
        id: &str,
        body: Bytes,
        rpc: Rpc,
        principal: &str,
    ) -> Result<(), Reject> {
        let entry = self
            .table
            .get(id)
            .filter(|e| e.principal() == principal)
            .ok_or(Reject::UnknownLegacySession)?;
        // The worker relays it after this POST's 202: it takes the POST's
        // trace position along, not its span (which ends with the POST).
        let trace = telemetry::exporting().then(|| telemetry::parent_of(&tracing::Span::current()));
        match entry.queue(body, rpc, trace, self.state.limits.legacy_inbox_bytes) {
            Ok(()) => Ok(()),
            Err(QueueError::Full) => Err(Reject::SessionBusy),
            Err(QueueError::Closed) => Err(Reject::UnknownLegacySession),
        }
    }

    /// Tells a legacy session's stream that its client's message was refused
    /// (the POST itself is answered with the refusal's status).
    pub fn refuse_message(&self, query: Option<&str>, rpc: &Rpc, reject: &Reject, principal: &str) {
        if rpc.id.is_none() {
            return;
        }
        if let Ok(Located::Here(id)) = self.locate(query)
            && let Some(entry) = self.table.get(&id).filter(|e| e.principal() == principal)
        {
            entry.queue_refusal(rpc.clone(), reject.clone());
        }
    }

    /// Relays a message to the replica holding its stream; returns that
    /// replica's status. A replica that cannot be reached means the stream is
    /// gone with it: the client must open a new one.
    pub async fn relay_to_owner(
        &self,
        owner: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<u16, Reject> {
        if headers.contains_key(RELAYED) {
            return Err(Reject::UnknownLegacySession); // relayed once already
        }
        let addr = owner.parse().map_err(|_| Reject::UnknownLegacySession)?;
        // The client's credentials go along: the owner checks them itself.
        let mut relayed = http::HeaderMap::new();
        for name in [
            http::header::AUTHORIZATION,
            http::HeaderName::from_static("x-api-key"),
        ] {
            if let Some(v) = headers.get(&name) {
                relayed.insert(name, v.clone());
            }
        }
        relayed.insert(RELAYED, http::HeaderValue::from_static("1"));
        let sent = self
            .upstream
            .send(
                addr,
                Outgoing {
                    method: http::Method::POST,
                    path: path_and_query,
                    client_headers: Some(&relayed),
                    session: None,
                    protocol_version: None,
                    accept: Some("application/json"),
                    content_type: Some("application/json"),
                    body,
                    forwarded: &Forwarded::default(),
                    principal: None,
                    keep_credentials: true,
                },
            )
            .await;
        match sent {
            Ok((parts, mut frames)) => {
                let _ = frames.read_all(64 * 1024).await;
                match parts.status.as_u16() {
                    s @ 200..=299 => {
                        Metrics::inc(&self.state.metrics.legacy_relayed);
                        Ok(s)
                    }
                    404 => Err(Reject::UnknownLegacySession),
                    503 => Err(Reject::SessionBusy),
                    _ => Err(Reject::BadGateway),
                }
            }
            Err(e) => {
                tracing::info!(%owner, error = %e, "the replica holding a legacy stream is gone");
                Err(Reject::UnknownLegacySession)
            }
        }
    }

    async fn worker(
        self: Arc<Self>,
        pool: Arc<Pool>,
        mut inbox: mpsc::Receiver<Inbound>,
        out: Out,
        forwarded: Forwarded,
        caller: Caller,
    ) {
        let permits = Arc::new(Semaphore::new(
            self.state.limits.legacy_session_concurrency.max(1),
        ));
        let forwarded = Arc::new(forwarded);
        let caller = Arc::new(caller);
        let mut links: Option<Arc<Links>> = None;
        let mut calls = JoinSet::new();
        let mut listener = None;
        while let Some(Inbound {
            body,
            rpc,
            refused,
            trace: parent,
            _queued,
        }) = inbox.recv().await
        {
            drop(_queued);
            if let Some(r) = refused {
                out.reject(&rpc, &r).await;
                continue;
            }
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
            let span = trace::message_span(&rpc, parent.as_ref());
            match links.clone() {
                Some(l) if !rpc.is_initialize() => {
                    // A notification reaches the backend before the next
                    // message leaves: the client's order holds across them
                    // (servers may register tools on `notifications/initialized`,
                    // so a call overtaking it found no such tool). Requests
                    // and answers run side by side.
                    let in_order = rpc.method.is_notification();
                    let bridge = Arc::clone(&self);
                    let (out, forwarded, caller) =
                        (out.clone(), Arc::clone(&forwarded), Arc::clone(&caller));
                    let relay = async move {
                        let started = std::time::Instant::now();
                        bridge
                            .call(&l, &body, &rpc, &out, &forwarded, &caller)
                            .await;
                        bridge.timed(&l, &rpc, started.elapsed());
                        drop((permit, slot));
                    }
                    .instrument(span);
                    if in_order {
                        relay.await;
                    } else {
                        calls.spawn(relay);
                    }
                }
                _ => {
                    // Opening the backend session: inline, later messages need it.
                    let opened = self
                        .open(&pool, &body, &rpc, &out, &forwarded, &caller)
                        .instrument(span)
                        .await;
                    drop((permit, slot));
                    match opened {
                        Ok(Some(l)) => {
                            if listener.is_none() {
                                let bridge = Arc::clone(&self);
                                let (l2, out2, c2) =
                                    (Arc::clone(&l), out.clone(), Arc::clone(&caller));
                                listener = Some(tokio::spawn(async move {
                                    bridge.listen(&l2, &out2, &c2).await
                                }));
                            }
                            links = Some(l);
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
        if let Some(l) = links {
            let link = Arc::clone(&l.current.borrow());
            let _ = self
                .upstream
                .send(
                    link.backend.addr,
                    Outgoing {
                        method: http::Method::DELETE,
                        path: "/mcp",
                        client_headers: None,
                        session: Some(&link.session),
                        protocol_version: Some(&link.version),
                        accept: None,
                        content_type: None,
                        body: Bytes::new(),
                        forwarded: &forwarded,
                        principal: Some((&caller.principal_header, &caller.principal)),
                        keep_credentials: false,
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
        caller: &Caller,
    ) -> Result<Option<Arc<Links>>, ()> {
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
            let sent = self
                .upstream
                .send(backend.addr, post(body, None, None, forwarded, caller))
                .await;
            if let Ok((parts, _)) = &sent {
                pool.record(&backend, Outcome::Answered(parts.status.as_u16()));
            }
            match sent {
                Ok((parts, frames)) if parts.status.as_u16() == 503 && attempt < ATTEMPTS => {
                    // Draining or overloaded (recorded: new work goes elsewhere).
                    failover::read_messages(&parts.headers, frames).await;
                }
                Ok((parts, frames)) => break (backend, load, parts, frames),
                Err(e) if e.never_reached() && attempt < ATTEMPTS => {
                    self.sessions.eject(pool, &backend);
                }
                Err(e) => {
                    pool.record(&backend, Outcome::from(&e));
                    tracing::warn!(backend = %backend.id, error = %e, "legacy bridge: backend request failed");
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
        let relayed = forward(
            &parts,
            frames,
            out,
            Some(rpc),
            Some(&mut version),
            None,
            Shape::default(),
        )
        .await;
        if relayed == Relayed::ClientGone {
            return Err(());
        }
        Ok(session.map(|session| {
            backend.session_opened();
            Metrics::inc(&self.state.metrics.sessions_issued);
            let link = Arc::new(Link {
                backend,
                session,
                version: version.unwrap_or_else(|| "2024-11-05".into()),
                generation: 0,
            });
            Arc::new(Links {
                pool: Arc::clone(pool),
                init: jsonrpc::params_of(body).unwrap_or("").to_owned(),
                current: watch::channel(link).0,
                moving: Mutex::new(()),
            })
        }))
    }

    /// Replaces a lost link (once, however many calls noticed the loss).
    async fn move_link(&self, links: &Links, lost: &Link, fwd: &Forwarded) -> Result<(), Reject> {
        let _moving = links.moving.lock().await;
        if links.current.borrow().generation != lost.generation {
            return Ok(()); // another call moved it already
        }
        let (backend, session, version) = self
            .sessions
            .open_elsewhere(
                &self.upstream,
                &links.pool,
                &links.init,
                Some(&lost.backend.id),
                fwd,
            )
            .await?;
        tracing::info!(from = %lost.backend.id, to = %backend.id, "legacy session moved");
        Metrics::inc(&self.state.metrics.failovers);
        links.current.send_replace(Arc::new(Link {
            backend,
            session,
            version,
            generation: lost.generation + 1,
        }));
        Ok(())
    }

    /// One message on the session's backend, moving the session when that
    /// backend is lost.
    async fn call(
        &self,
        links: &Links,
        body: &Bytes,
        rpc: &Rpc,
        out: &Out,
        fwd: &Forwarded,
        caller: &Caller,
    ) {
        if rpc.method == Method::Response {
            return self.answer(links, body, fwd, caller).await;
        }
        let repeatable = replay::safe_to_repeat(&rpc.method, self.sessions.hints(&links.pool));
        let learn = rpc.method == Method::ToolsList;
        for _ in 0..2 * ATTEMPTS {
            let link = Arc::clone(&links.current.borrow());
            let _load = link.backend.start_request();
            let sent_at = std::time::Instant::now();
            let sent = self
                .upstream
                .send(
                    link.backend.addr,
                    post(body, Some(&link.session), Some(&link.version), fwd, caller),
                )
                .await;
            if let Ok((parts, _)) = &sent {
                links.pool.upstream_seconds.observe(sent_at.elapsed());
                links
                    .pool
                    .record(&link.backend, Outcome::Answered(parts.status.as_u16()));
            }
            let may_have_run = match sent {
                // The backend does not know the session, or is draining: not run.
                Ok((parts, frames)) if matches!(parts.status.as_u16(), 404 | 503) => {
                    failover::read_messages(&parts.headers, frames).await;
                    false
                }
                Ok((parts, frames)) => {
                    let hints = learn.then(|| self.sessions.hints(&links.pool));
                    let shape = Shape {
                        rewrite: caller
                            .rewrite
                            .as_ref()
                            .filter(|_| rpc.method == Method::ToolsList),
                        asks: Some(link.tag()),
                    };
                    match forward(&parts, frames, out, Some(rpc), None, hints, shape).await {
                        Relayed::Done => {
                            if matches!(rpc.method, Method::ToolsCall { .. })
                                && parts.status.is_success()
                            {
                                Metrics::inc(&self.state.metrics.tool_calls);
                            }
                            return;
                        }
                        Relayed::ClientGone => return,
                        Relayed::Lost => {
                            links.pool.record(&link.backend, Outcome::Lost);
                            true
                        }
                    }
                }
                Err(e) if e.never_reached() => {
                    self.sessions.eject(&links.pool, &link.backend);
                    false
                }
                Err(e) => {
                    links.pool.record(&link.backend, Outcome::Lost);
                    tracing::warn!(backend = %link.backend.id, error = %e, "legacy bridge: backend request failed");
                    true
                }
            };
            if may_have_run {
                Metrics::inc(&self.state.metrics.upstream_errors);
                if !repeatable {
                    Metrics::inc(&self.state.metrics.outcome_unknown);
                    out.reject(rpc, &Reject::OutcomeUnknown).await;
                    return;
                }
            }
            if let Err(r) = self.move_link(links, &link, fwd).await {
                let code = if may_have_run {
                    OUTCOME_UNKNOWN
                } else {
                    r.code()
                };
                out.error(Some(rpc), code, &r.to_string()).await;
                return;
            }
        }
        out.reject(rpc, &Reject::NoBackend).await;
    }

    /// Records a relayed message's latency (answers to server requests aside).
    fn timed(&self, links: &Links, rpc: &Rpc, took: Duration) {
        if rpc.method == Method::Response {
            return;
        }
        self.sessions.record(
            &self.state.metrics,
            &links.pool,
            Transport::Legacy,
            &rpc.method,
            took,
        );
    }

    /// The client's answer to a server request: to the backend session that
    /// asked, or nowhere. Never moved and never sent twice: the request it
    /// answers died with its backend session. The client's POST was
    /// accepted already, so a refusal is logged and counted; the client
    /// learns of the loss from the call that made the server ask.
    async fn answer(&self, links: &Links, body: &Bytes, fwd: &Forwarded, caller: &Caller) {
        let link = Arc::clone(&links.current.borrow());
        let body = match asks::unmark(body) {
            asks::Answer::Unmarked => body.clone(),
            asks::Answer::Marked { tag, body } if tag == link.tag() => body,
            asks::Answer::Marked { .. } | asks::Answer::Mixed => {
                self.refuse_answer("its backend session is gone");
                return;
            }
        };
        let _load = link.backend.start_request();
        let sent = self
            .upstream
            .send(
                link.backend.addr,
                post(&body, Some(&link.session), Some(&link.version), fwd, caller),
            )
            .await;
        match sent {
            Ok((parts, frames)) => {
                let status = parts.status;
                links
                    .pool
                    .record(&link.backend, Outcome::Answered(status.as_u16()));
                failover::read_messages(&parts.headers, frames).await;
                if !status.is_success() {
                    self.refuse_answer("the backend refused it");
                }
            }
            Err(e) => {
                if e.never_reached() {
                    self.sessions.eject(&links.pool, &link.backend);
                }
                self.refuse_answer("the backend is unreachable");
            }
        }
    }

    fn refuse_answer(&self, why: &str) {
        let r = Reject::AnswerUndeliverable;
        self.state.metrics.reject(r.reason());
        tracing::info!(
            why,
            "legacy bridge: an answer to a server request was not delivered"
        );
    }

    /// The backend's server-to-client stream (GET /mcp), if it offers one,
    /// opened again on the session's new backend when the session moves.
    async fn listen(&self, links: &Links, out: &Out, caller: &Caller) {
        let mut changes = links.current.subscribe();
        let fwd = Forwarded::default();
        loop {
            let link = Arc::clone(&changes.borrow_and_update());
            let shape = Shape {
                rewrite: None,
                asks: Some(link.tag()),
            };
            let sent = self
                .upstream
                .send(
                    link.backend.addr,
                    Outgoing {
                        method: http::Method::GET,
                        path: "/mcp",
                        client_headers: None,
                        session: Some(&link.session),
                        protocol_version: Some(&link.version),
                        accept: Some("text/event-stream"),
                        content_type: None,
                        body: Bytes::new(),
                        forwarded: &fwd,
                        principal: Some((&caller.principal_header, &caller.principal)),
                        keep_credentials: false,
                    },
                )
                .await;
            if let Ok((parts, frames)) = sent
                && parts.status.is_success()
            {
                let _open = link.backend.stream_opened();
                if forward(&parts, frames, out, None, None, None, shape).await
                    == Relayed::ClientGone
                {
                    return;
                }
            }
            // Ended or refused: wait for the session to move (or the worker to end).
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Where a legacy message goes.
pub enum Located {
    Here(String),
    Elsewhere { owner: String },
}

fn post<'a>(
    body: &Bytes,
    session: Option<&'a str>,
    version: Option<&'a str>,
    forwarded: &'a Forwarded,
    caller: &'a Caller,
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
        principal: Some((&caller.principal_header, &caller.principal)),
        keep_credentials: false,
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
async fn forward(
    parts: &http::response::Parts,
    mut frames: Frames,
    out: &Out,
    rpc: Option<&Rpc>,
    mut version: Option<&mut Option<String>>,
    hints: Option<&replay::ToolHints>,
    shape: Shape<'_>,
) -> Relayed {
    let status = parts.status;
    let answer_to = rpc.and_then(Rpc::id_text);
    if !upstream::is_event_stream(&parts.headers) {
        let text = match frames.read_all(MAX_WHOLE_BODY).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "legacy bridge: backend answer unreadable");
                return Relayed::Lost;
            }
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            if !status.is_success() {
                out.error(rpc, -32603, &format!("backend answered {status}"))
                    .await;
            }
            return Relayed::Done;
        }
        let text = String::from_utf8_lossy(&text);
        return match Reply::read(&text) {
            Some(reply) if reply.jsonrpc.is_some() => {
                if let Some(v) = version.as_deref_mut() {
                    *v = reply.protocol_version();
                }
                if let Some(h) = hints {
                    h.learn(&text);
                }
                let text = shape.apply(&text).map_or(text, Into::into);
                if out.send(message(&text)).await {
                    Relayed::Done
                } else {
                    Relayed::ClientGone
                }
            }
            _ => {
                tracing::warn!(%status, "backend answered with something that is not JSON-RPC");
                out.error(
                    rpc,
                    -32603,
                    &format!("backend sent an invalid response ({status})"),
                )
                .await;
                Relayed::Done
            }
        };
    }
    let mut splitter = Splitter::new(MAX_EVENT);
    let mut events = Vec::new();
    let mut answered = false;
    loop {
        let chunk = match frames.next().await {
            Ok(Some(c)) => c,
            // A stream that ended before the answer to a request lost it.
            Ok(None) if answer_to.is_some() && !answered => return Relayed::Lost,
            Ok(None) => return Relayed::Done,
            Err(e) => {
                tracing::warn!(error = %e, "legacy bridge: backend stream failed");
                return if answered {
                    Relayed::Done
                } else {
                    Relayed::Lost
                };
            }
        };
        events.clear();
        if let Err(e) = splitter.push_into(&chunk, &mut events) {
            tracing::warn!(error = %e, "legacy bridge: dropping the backend stream");
            return Relayed::Lost;
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
            if let Some(id) = answer_to
                && jsonrpc::answers(&data, id)
            {
                answered = true;
                if let Some(h) = hints {
                    h.learn(&data);
                }
            }
            let data = shape.apply(&data).map_or(data, Into::into);
            if !out.send(message(&data)).await {
                return Relayed::ClientGone;
            }
        }
        if answered {
            // Like a POST's stream: done once the answer went by.
            relay::drain(frames);
            return Relayed::Done;
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
