//! The MCP-aware proxy: pingora's `ProxyHttp`, one concern per phase.
//!
//! | phase | what happens here |
//! |---|---|
//! | `request_filter` | capacity slot, route to a pool, Origin check, legacy SSE endpoints (answered here by [`crate::legacy`]), session id → backend, body limit, JSON-RPC validation, `Mcp-Method`/`Mcp-Name` check, backend choice |
//! | `upstream_peer` | the chosen backend as a pingora peer; its outstanding-request count |
//! | `fail_to_connect` | passive ejection; a sessionless request retries on another backend |
//! | `upstream_request_filter` | path, Host, gateway session id → backend session id, X-Forwarded-* |
//! | `response_filter` | backend session id → sealed gateway session id; no buffering of SSE |
//! | `fail_to_proxy` | JSON errors; a session whose backend is gone gets 404 (re-initialize) |
//! | `logging` | metrics |
//!
//! Everything a request learns lives in [`Ctx`]; nothing is shared but
//! atomics and snapshot tables, so the path takes no lock.

pub mod edge;
pub mod jsonrpc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::config::Limits;
use crate::legacy::Legacy;
use crate::pool::{BackendState, LoadGuard, Pool};
use crate::token::{SessionRef, TokenSealer};
use edge::Endpoint;
use jsonrpc::RpcSummary;

pub const SESSION_HEADER: &str = "mcp-session-id";
/// Bodies up to this size are buffered and checked (pingora's retry buffer
/// replays them upstream); larger ones stream through, counted.
const CHECKED_BODY_MAX: usize = 64 * 1024;

/// Counters the admin listener exposes; all relaxed atomics.
#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub sessions_issued: AtomicU64,
    pub rejected_origin: AtomicU64,
    pub rejected_body: AtomicU64,
    pub rejected_session: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub rejected_capacity: AtomicU64,
    pub no_backend: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub tool_calls: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State every request shares: read-only config and lock-free tables.
pub struct Shared {
    /// Longest prefix first, so "/a/b" wins over "/a".
    pub pools: Vec<Arc<Pool>>,
    pub sealer: TokenSealer,
    pub limits: Limits,
    pub inflight: AtomicUsize,
    pub metrics: Metrics,
    pub legacy: Legacy,
}

/// One unit of the global in-flight budget, returned on drop.
pub struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub fn enter(self: &Arc<Self>) -> Option<Slot> {
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(self));
        (before < self.limits.max_inflight).then_some(slot)
    }

    pub fn route(&self, path: &str) -> Option<(Arc<Pool>, Endpoint)> {
        self.pools.iter().find_map(|pool| {
            let rest = pool.strip(path)?;
            edge::endpoint(rest).map(|e| (Arc::clone(pool), e))
        })
    }
}

#[derive(Default)]
pub struct Ctx {
    slot: Option<Slot>,
    pool: Option<Arc<Pool>>,
    endpoint: Option<Endpoint>,
    session: Option<SessionRef>,
    backend: Option<Arc<BackendState>>,
    load: Option<LoadGuard>,
    rpc: Option<RpcSummary>,
    streamed: usize,
    tls: bool,
}

pub struct McpProxy {
    pub shared: Arc<Shared>,
}

/// Writes a complete response with a JSON body (and extra headers).
pub async fn respond(
    session: &mut Session,
    status: u16,
    body: Vec<u8>,
    headers: &[(&'static str, &str)],
) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (k, v) in headers {
        resp.insert_header(*k, *v)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(true)
}

/// A JSON-RPC error answer from the gateway itself.
pub async fn rpc_error(
    session: &mut Session,
    status: u16,
    id: Option<&serde_json::Value>,
    code: i64,
    message: &str,
) -> Result<bool> {
    respond(session, status, jsonrpc::error_body(id, code, message), &[]).await
}

/// The downstream client's IP address, for X-Forwarded-For.
pub fn client_ip(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

impl McpProxy {
    /// Reads a small body whole (into pingora's retry buffer, which replays
    /// it upstream) or decides to stream a large one.
    async fn read_checked_body(&self, session: &mut Session) -> Result<Option<Bytes>> {
        let limit = self.shared.limits.max_body_bytes;
        let declared =
            header(session.req_header(), "content-length").and_then(|v| v.parse::<usize>().ok());
        match declared {
            Some(n) if n > limit => Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "body over limit",
            )),
            Some(n) if n <= CHECKED_BODY_MAX => {
                session.as_mut().enable_retry_buffering();
                let mut body = BytesMut::with_capacity(n);
                while let Some(chunk) = session.read_request_body().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > n.max(1) {
                        return Err(Error::explain(
                            ErrorType::HTTPStatus(400),
                            "body longer than declared",
                        ));
                    }
                }
                Ok(Some(body.freeze()))
            }
            _ => Ok(None),
        }
    }

    /// Decides where a POST/GET/DELETE to `/mcp` goes, or answers it.
    async fn mcp_request(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        pool: &Arc<Pool>,
    ) -> Result<bool> {
        let shared = &self.shared;
        let method = session.req_header().method.clone();
        if let Some(token) = header(session.req_header(), SESSION_HEADER) {
            let opened = shared.sealer.open(token);
            let member = opened
                .as_ref()
                .ok()
                .filter(|r| r.pool == pool.index)
                .and_then(|r| pool.member(&r.backend));
            match (opened, member) {
                (Ok(r), Some(backend)) => {
                    ctx.session = Some(r);
                    ctx.backend = Some(backend);
                }
                (result, _) => {
                    Metrics::inc(&shared.metrics.rejected_session);
                    let why = match result {
                        Err(e) => e.to_string(),
                        Ok(_) => "the session's backend is gone".into(),
                    };
                    tracing::info!(reason = %why, "unknown session");
                    return rpc_error(
                        session,
                        404,
                        None,
                        -32001,
                        &format!("Session not found ({why}); start a new session"),
                    )
                    .await;
                }
            }
        }
        match method.as_str() {
            "POST" => {}
            "GET" => {
                if !edge::accepts_event_stream(header(session.req_header(), "accept")) {
                    return rpc_error(
                        session,
                        406,
                        None,
                        -32600,
                        "GET /mcp needs Accept: text/event-stream",
                    )
                    .await;
                }
                if ctx.session.is_none() {
                    return rpc_error(session, 400, None, -32600, "GET /mcp needs an Mcp-Session-Id (stateless clients have no server stream)").await;
                }
                return Ok(false);
            }
            "DELETE" => {
                if ctx.session.is_none() {
                    return rpc_error(
                        session,
                        400,
                        None,
                        -32600,
                        "DELETE /mcp needs an Mcp-Session-Id",
                    )
                    .await;
                }
                return Ok(false);
            }
            _ => {
                return respond(
                    session,
                    405,
                    jsonrpc::error_body(None, -32600, "method not allowed"),
                    &[("allow", "GET, POST, DELETE")],
                )
                .await;
            }
        }

        // POST: check what we can see of the body.
        let body = match self.read_checked_body(session).await {
            Ok(b) => b,
            Err(e) if matches!(e.etype(), ErrorType::HTTPStatus(413)) => {
                Metrics::inc(&shared.metrics.rejected_body);
                return rpc_error(session, 413, None, -32600, "request body too large").await;
            }
            Err(e) => return Err(e),
        };
        if let Some(body) = body {
            let summary = match jsonrpc::summarize(&body) {
                Ok(s) => s,
                Err(e) => {
                    Metrics::inc(&shared.metrics.rejected_malformed);
                    return rpc_error(session, 400, None, e.code(), e.message()).await;
                }
            };
            let req = session.req_header();
            if let (Some(h), Some(m)) = (header(req, "mcp-method"), summary.method.as_deref())
                && h != m
            {
                Metrics::inc(&shared.metrics.rejected_malformed);
                let msg = format!("Mcp-Method header '{h}' does not match body method '{m}'");
                return rpc_error(session, 400, summary.id.as_ref(), -32600, &msg).await;
            }
            if let (Some(h), Some(n)) = (header(req, "mcp-name"), summary.name.as_deref())
                && h != n
            {
                Metrics::inc(&shared.metrics.rejected_malformed);
                let msg = format!("Mcp-Name header '{h}' does not match body name '{n}'");
                return rpc_error(session, 400, summary.id.as_ref(), -32600, &msg).await;
            }
            if summary.method.as_deref() == Some("tools/call") {
                Metrics::inc(&shared.metrics.tool_calls);
            }
            ctx.rpc = Some(summary);
        }
        if ctx.backend.is_none() {
            // New session (initialize) or a stateless request: least loaded.
            match pool.pick() {
                Some(b) => ctx.backend = Some(b),
                None => {
                    Metrics::inc(&shared.metrics.no_backend);
                    let id = ctx.rpc.as_ref().and_then(|r| r.id.as_ref());
                    return respond(
                        session,
                        503,
                        jsonrpc::error_body(id, -32000, "no healthy backend; retry shortly"),
                        &[("retry-after", "1")],
                    )
                    .await;
                }
            }
        }
        Ok(false)
    }
}

#[async_trait]
impl ProxyHttp for McpProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No response compression module: MCP bodies are small JSON or SSE,
        // and SSE must pass through untouched.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let shared = &self.shared;
        Metrics::inc(&shared.metrics.requests);
        session.set_read_timeout(Some(shared.limits.idle_timeout));
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        match shared.enter() {
            Some(slot) => ctx.slot = Some(slot),
            None => {
                Metrics::inc(&shared.metrics.rejected_capacity);
                return respond(
                    session,
                    503,
                    jsonrpc::error_body(None, -32000, "gateway at capacity; retry shortly"),
                    &[("retry-after", "1")],
                )
                .await;
            }
        }
        let path = session.req_header().uri.path().to_owned();
        let Some((pool, endpoint)) = shared.route(&path) else {
            if path == "/health" || path == "/healthz" {
                return respond(session, 200, br#"{"status":"ok"}"#.to_vec(), &[]).await;
            }
            return respond(
                session,
                404,
                br#"{"error":"not an MCP endpoint; use /mcp (Streamable HTTP) or /sse (legacy)"}"#
                    .to_vec(),
                &[],
            )
            .await;
        };
        if let Some(origin) = header(session.req_header(), "origin")
            && !edge::origin_allowed(origin, &shared.limits.allowed_origins)
        {
            Metrics::inc(&shared.metrics.rejected_origin);
            tracing::info!(%origin, "origin rejected");
            return respond(
                session,
                403,
                jsonrpc::error_body(None, -32600, "Origin not allowed"),
                &[],
            )
            .await;
        }
        ctx.pool = Some(Arc::clone(&pool));
        ctx.endpoint = Some(endpoint);
        match endpoint {
            Endpoint::Sse => crate::legacy::serve_stream(shared, &pool, session).await,
            Endpoint::Messages => crate::legacy::accept_message(shared, &pool, session).await,
            Endpoint::Mcp => self.mcp_request(session, ctx, &pool).await,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.streamed += chunk.len();
            if ctx.streamed > self.shared.limits.max_body_bytes {
                Metrics::inc(&self.shared.metrics.rejected_body);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "body over limit",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let backend = match &ctx.backend {
            Some(b) if ctx.session.is_some() || !b.is_ejected() => Arc::clone(b),
            _ => {
                // First choice failed to connect: pick again (sessionless only).
                let pool = ctx
                    .pool
                    .as_ref()
                    .ok_or_else(|| Error::explain(ErrorType::InternalError, "no pool"))?;
                let b = pool.pick().ok_or_else(|| {
                    Error::explain(ErrorType::HTTPStatus(503), "no healthy backend")
                })?;
                ctx.backend = Some(Arc::clone(&b));
                b
            }
        };
        ctx.load = Some(backend.start_request());
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        // SSE responses may be quiet for a long time: no read timeout.
        peer.options.read_timeout = None;
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(b) = &ctx.backend {
            let eject = ctx
                .pool
                .as_ref()
                .map(|p| p.eject_for)
                .unwrap_or(Duration::from_secs(10));
            b.eject(eject);
            tracing::warn!(backend = %b.addr, error = %e, "backend refused a connection; ejected");
        }
        ctx.load = None;
        // Nothing reached the backend, so a sessionless request is safe to retry elsewhere.
        e.set_retry(ctx.session.is_none());
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(backend) = &ctx.backend else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no backend chosen",
            ));
        };
        if let Some(pool) = &ctx.pool
            && !pool.prefix.is_empty()
        {
            let path_and_query = upstream
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let rewritten = path_and_query
                .strip_prefix(pool.prefix.as_str())
                .unwrap_or(path_and_query)
                .to_owned();
            let uri = rewritten
                .parse::<http::Uri>()
                .map_err(|_| Error::explain(ErrorType::InternalError, "bad rewritten path"))?;
            upstream.set_uri(uri);
        }
        upstream.insert_header("host", backend.addr.to_string())?;
        if let Some(s) = &ctx.session {
            upstream.insert_header(SESSION_HEADER, s.backend_session.as_str())?;
        }
        for hop in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ] {
            upstream.remove_header(hop);
        }
        if let Some(client) = client_ip(session) {
            let forwarded = match header(upstream, "x-forwarded-for") {
                Some(prior) => format!("{prior}, {client}"),
                None => client,
            };
            upstream.insert_header("x-forwarded-for", forwarded)?;
        }
        upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(sid), Some(pool), Some(backend)) = (
            resp.headers
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            &ctx.pool,
            &ctx.backend,
        ) {
            let token = match &ctx.session {
                // The backend echoed the session we routed: keep the client's id.
                Some(s) if s.backend_session == sid => None,
                _ => self.shared.sealer.issue(pool.index, backend.addr, &sid),
            };
            match token {
                Some(token) => {
                    resp.insert_header(SESSION_HEADER, token)?;
                    backend.session_opened();
                    Metrics::inc(&self.shared.metrics.sessions_issued);
                }
                None if ctx.session.is_some() => {
                    resp.remove_header(SESSION_HEADER);
                }
                None => {
                    resp.remove_header(SESSION_HEADER);
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(502),
                        "backend session id unusable",
                    ));
                }
            }
        }
        // rmcp answers a session DELETE with 202; clients expect 200/204.
        if session.req_header().method == http::Method::DELETE
            && resp.status == http::StatusCode::ACCEPTED
        {
            resp.set_status(200)?;
        }
        let is_sse = resp
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if is_sse {
            resp.insert_header("x-accel-buffering", "no")?;
            resp.insert_header("cache-control", "no-cache")?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        Metrics::inc(&self.shared.metrics.upstream_errors);
        let connect_failed = matches!(
            e.etype(),
            ErrorType::ConnectRefused
                | ErrorType::ConnectTimedout
                | ErrorType::ConnectError
                | ErrorType::ConnectNoRoute
        );
        let id = ctx.rpc.as_ref().and_then(|r| r.id.clone());
        let (status, body) = match e.etype() {
            ErrorType::HTTPStatus(413) => (
                413,
                jsonrpc::error_body(id.as_ref(), -32600, "request body too large"),
            ),
            ErrorType::HTTPStatus(503) => (
                503,
                jsonrpc::error_body(id.as_ref(), -32000, "no healthy backend; retry shortly"),
            ),
            ErrorType::HTTPStatus(code) => (
                *code,
                jsonrpc::error_body(id.as_ref(), -32603, "gateway error"),
            ),
            _ if connect_failed && ctx.session.is_some() => (
                404,
                jsonrpc::error_body(
                    id.as_ref(),
                    -32001,
                    "Session not found (its backend is unavailable); start a new session",
                ),
            ),
            _ => match e.esource() {
                pingora::ErrorSource::Downstream => (0, Vec::new()),
                _ => (
                    502,
                    jsonrpc::error_body(id.as_ref(), -32603, "backend failed to answer"),
                ),
            },
        };
        if status > 0 {
            let _ = respond(session, status, body, &[]).await;
        }
        if status == 0 {
            tracing::debug!(error = %e, "client went away");
        } else {
            tracing::warn!(error = %e, status, "request failed");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // A client closing its stream is how SSE sessions end: not an error.
        *e.esource() == pingora::ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let method = ctx
            .rpc
            .as_ref()
            .and_then(|r| r.method.as_deref())
            .unwrap_or("-");
        tracing::debug!(
            status,
            rpc = method,
            backend = ?ctx.backend.as_ref().map(|b| b.addr),
            session = ctx.session.as_ref().map(|s| s.backend_session.as_str()).unwrap_or("-"),
            "request"
        );
        ctx.load = None;
        ctx.slot = None;
    }
}
