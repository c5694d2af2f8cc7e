//! The MCP listener: pingora's `ProxyHttp`, with the request path in
//! `request_filter` — the policy steps in order, then the transport.
//!
//! | phase | what happens here |
//! |---|---|
//! | `request_filter` | [`McpProxy::admit`]: capacity → route → client address → origin → credentials → pool access → principal rate → method → body → JSON-RPC → tool → sessions and streams → session id (each a step returning `Result<_, Reject>`, see `policy/`); then the transport: `streamable.rs` for `/mcp`, `legacy/` for `/sse` and `/messages`; a `Reject` is answered by [`render`] |
//! | `fail_to_proxy` | a stream already under way ended badly: close it, write nothing |
//! | `logging` | the access log line; returns the request's slots |
//!
//! The gateway answers every request itself (both transports reach backends
//! through `upstream.rs`), so pingora's upstream phases are unused: see
//! `upstream.rs` for why. Everything a request learns lives in [`Ctx`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use tracing::Instrument;

use crate::app::Gateway;
use crate::legacy::bridge::{Caller, Located};
use crate::metrics::Metrics;
use crate::policy::auth::{Grant, Principal, filter_tools_list};
use crate::policy::body;
use crate::policy::edge::{self, Endpoint};
use crate::policy::guard::Guard;
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::policy::limits::{Held, Limits};
use crate::pool::Pool;
use crate::reject::Reject;
use crate::relay::Failure;
use crate::session::Pinned;
use crate::state::Slot;
use crate::streamable::{Admitted, Rewrite, Served};
use crate::trace;
use crate::upstream::{Forwarded, SESSION_HEADER};

/// Per-request state: what the steps learned, and the guards to return.
pub struct Ctx {
    started: std::time::Instant,
    slot: Option<Slot>,
    rpc: Option<Rpc>,
    served: Option<Served>,
    /// Who the request comes from, and what the rules let it do.
    who: Option<Arc<Principal>>,
    grant: Option<Arc<Grant>>,
    /// The policy in force when the request came (reloads swap it whole).
    guard: Option<Arc<Guard>>,
    /// Places held in per-address and per-principal caps until the end.
    ip_held: Option<Held<std::net::IpAddr>>,
    stream_held: Option<Held<Arc<str>>>,
    /// The request's exported span (OTLP on), ended in `logging`.
    exported: Option<tracing::Span>,
}

pub struct McpProxy {
    pub gw: Arc<Gateway>,
}

/// Where an admitted request goes.
enum Route {
    Health,
    /// RFC 9728 protected-resource metadata.
    ResourceMetadata {
        prefix: String,
    },
    Endpoint {
        pool: Arc<Pool>,
        endpoint: Endpoint,
        body: Option<body::Body>,
        pinned: Option<Box<Pinned>>,
    },
}

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// How the client reached us, for `X-Forwarded-*`.
fn forwarded(session: &Session) -> Forwarded {
    Forwarded {
        client_ip: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string()),
        tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
    }
}

/// Writes a complete JSON response.
async fn respond(session: &mut Session, status: u16, body: Vec<u8>, extra: &[(&str, &str)]) {
    let written = async {
        let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        for (k, v) in extra {
            resp.insert_header(k.to_string(), *v)?;
        }
        session.write_response_header(Box::new(resp), false).await?;
        let body = (!body.is_empty()).then(|| Bytes::from(body));
        session.write_response_body(body, true).await?;
        Ok::<_, Box<Error>>(())
    };
    if let Err(e) = written.await {
        tracing::debug!(error = %e, "could not write an answer; the client went away");
    }
}

/// Where this request's protected-resource metadata is (RFC 9728: the
/// well-known path, then the resource's own path).
pub fn resource_metadata_url(session: &Session) -> String {
    let req = session.req_header();
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let path = req.uri.path();
    let resource = ["/mcp", "/sse", "/messages", "/message"]
        .iter()
        .find_map(|e| path.strip_suffix(e))
        .unwrap_or("");
    format!(
        "{}://{host}/.well-known/oauth-protected-resource{resource}",
        if tls { "https" } else { "http" }
    )
}

/// The `WWW-Authenticate` challenge for refusals about credentials.
fn www_authenticate(session: &Session, reject: &Reject) -> Option<String> {
    let metadata = resource_metadata_url(session);
    match reject {
        Reject::Unauthorized(why) => Some(format!(
            r#"Bearer resource_metadata="{metadata}", error="invalid_token", error_description="{why}""#
        )),
        Reject::Forbidden { scope } | Reject::ToolDenied { scope, .. } => Some(match scope {
            Some(s) => format!(
                r#"Bearer resource_metadata="{metadata}", error="insufficient_scope", scope="{s}""#
            ),
            None => format!(r#"Bearer resource_metadata="{metadata}", error="insufficient_scope""#),
        }),
        _ => None,
    }
}

/// The one place a [`Reject`] becomes a response: its status, a JSON-RPC
/// error (echoing the request id when known), `Retry-After`, `Allow`.
pub async fn render(session: &mut Session, gw: &Gateway, reject: &Reject, rpc: Option<&Rpc>) {
    gw.state.metrics.reject(reject.reason());
    tracing::debug!(status = reject.status(), reason = reject.reason().name(), %reject, "rejected");
    let id = rpc.and_then(|r| r.id.as_deref());
    let body = jsonrpc::error_body_with(id, reject.code(), &reject.to_string(), reject.data());
    let mut extra: Vec<(&str, String)> = Vec::with_capacity(2);
    if let Some(secs) = reject.retry_after() {
        extra.push(("retry-after", secs.to_string()));
    }
    if let Some(allow) = reject.allow() {
        extra.push(("allow", allow.to_owned()));
    }
    if let Some(challenge) = www_authenticate(session, reject) {
        extra.push(("www-authenticate", challenge));
    }
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    respond(session, reject.status(), body, &extra).await;
}

impl McpProxy {
    /// Who the request is from, as the transports need it.
    fn caller(&self, ctx: &Ctx) -> Caller {
        let guard = ctx.guard.clone().unwrap_or_else(|| self.gw.guard());
        let grant = ctx.grant.clone().unwrap_or_default();
        Caller {
            principal: ctx.who.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
            principal_header: guard.principal_header.clone(),
            rewrite: grant
                .restricts_tools()
                .then(|| Arc::new(move |m: &str| filter_tools_list(m, &grant)) as Rewrite),
        }
    }

    /// The protected-resource metadata document (RFC 9728) for `prefix`
    /// (empty: the root resource).
    fn resource_metadata(&self, session: &Session, ctx: &Ctx, prefix: &str) -> Vec<u8> {
        let guard = ctx.guard.clone().unwrap_or_else(|| self.gw.guard());
        let req = session.req_header();
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let host = header(req, "host").unwrap_or("localhost");
        let resource = guard.resource.clone().unwrap_or_else(|| {
            format!(
                "{}://{host}{prefix}/mcp",
                if tls { "https" } else { "http" }
            )
        });
        let doc = serde_json::json!({
            "resource": resource,
            "authorization_servers": guard.authorization_servers,
            "bearer_methods_supported": ["header"],
            "resource_name": "MCP gateway",
        });
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    /// The policy steps, in order. Each returns `Err(Reject)` to stop the request.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Route, Reject> {
        let gw = &self.gw;
        ctx.slot = Some(gw.state.enter()?);
        let guard = Arc::clone(ctx.guard.insert(gw.guard()));
        let path = session.req_header().uri.path();
        if let Some(rest) = path.strip_prefix(WELL_KNOWN) {
            return Ok(Route::ResourceMetadata {
                prefix: rest.to_owned(),
            });
        }
        let (pool, endpoint) = match gw.sessions.route(path) {
            Ok(found) => found,
            Err(_) if path == "/health" || path == "/healthz" => return Ok(Route::Health),
            Err(e) => return Err(e),
        };
        let ip = client_ip(session);
        ctx.ip_held = guard.limits.check_ip(ip)?;
        let req = session.req_header();
        edge::check_origin(header(req, "origin"), &gw.state.limits.allowed_origins)?;
        let who = guard
            .auth
            .authenticate(&req.headers, guard.mode(pool.index))?;
        let grant = guard.rules.grant(&who);
        if !grant.may_reach(&pool.name) {
            return Err(Reject::Forbidden {
                scope: grant.required_scope().map(str::to_owned),
            });
        }
        let key = Limits::key(&who, ip);
        // A legacy message over its limit is still read, so that its
        // stream can carry the error for its id.
        let mut over = guard.limits.check_request(&who, &key).err();
        if let Some(r) = over.take_if(|_| endpoint != Endpoint::Messages) {
            return Err(r);
        }
        ctx.who = Some(Arc::clone(&who));
        ctx.grant = Some(Arc::clone(&grant));
        edge::check_method(
            endpoint,
            &req.method,
            header(req, "accept"),
            req.headers.contains_key(SESSION_HEADER),
        )?;
        let is_get = req.method == http::Method::GET;
        let body = if req.method == http::Method::POST {
            let body = body::read(session, &gw.state).await?;
            let rpc = ctx.rpc.insert(jsonrpc::parse(&body.bytes)?);
            let req = session.req_header();
            jsonrpc::check_headers(rpc, header(req, "mcp-method"), header(req, "mcp-name"))?;
            let checked = (|| {
                if let Some(r) = over {
                    return Err(r);
                }
                if let Method::ToolsCall { name } = &rpc.method {
                    if !grant.may_call(name) {
                        return Err(Reject::ToolDenied {
                            tool: name.clone(),
                            scope: grant.required_scope().map(str::to_owned),
                        });
                    }
                    guard
                        .limits
                        .check_tool(&who, &key, name, |t| gw.sessions.hints(&pool).lists(t))?;
                }
                if rpc.is_initialize() {
                    guard.limits.check_new_session(&who, &key)?;
                }
                Ok(())
            })();
            if let Err(refused) = checked {
                if endpoint == Endpoint::Messages {
                    // The legacy client reads answers from its stream: the
                    // error for this id goes there too.
                    let query = session.req_header().uri.query();
                    gw.legacy.refuse_message(query, rpc, &refused, &who.name);
                }
                return Err(refused);
            }
            Some(body)
        } else if let Some(r) = over {
            return Err(r);
        } else {
            None
        };
        if is_get {
            if endpoint == Endpoint::Sse {
                guard.limits.check_new_session(&who, &key)?;
            }
            ctx.stream_held = guard.limits.open_stream(&who, &key)?;
        }
        let pinned = match (endpoint, header(session.req_header(), SESSION_HEADER)) {
            (Endpoint::Mcp, Some(token)) => {
                Some(Box::new(gw.sessions.open(&pool, token, &who.name)?))
            }
            _ => None,
        };
        Ok(Route::Endpoint {
            pool,
            endpoint,
            body,
            pinned,
        })
    }

    /// Hands an admitted request to its transport.
    async fn dispatch(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: Route,
    ) -> std::result::Result<(), Failure> {
        let gw = &self.gw;
        let (pool, endpoint, body, pinned) = match route {
            Route::Health => {
                respond(session, 200, br#"{"status":"ok"}"#.to_vec(), &[]).await;
                return Ok(());
            }
            Route::ResourceMetadata { prefix } => {
                let body = self.resource_metadata(session, ctx, &prefix);
                respond(session, 200, body, &[]).await;
                return Ok(());
            }
            Route::Endpoint {
                pool,
                endpoint,
                body,
                pinned,
            } => (pool, endpoint, body, pinned),
        };
        let body = body.map(|b| b.bytes).unwrap_or_default();
        match endpoint {
            Endpoint::Sse => {
                let caller = self.caller(ctx);
                gw.legacy
                    .serve_stream(session, &pool, forwarded(session), caller)
                    .await
            }
            Endpoint::Messages => {
                let rpc = ctx.rpc.clone().ok_or(Reject::BadRequest("no message"))?;
                let req = session.req_header();
                let query = req.uri.query().map(str::to_owned);
                match gw.legacy.locate(query.as_deref())? {
                    Located::Here(id) => {
                        let who = ctx.who.as_ref().map(|w| w.name.as_str()).unwrap_or("");
                        gw.legacy.accept_message(&id, body, rpc, who)?
                    }
                    Located::Elsewhere { owner } => {
                        let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                        let pq = pq.to_owned();
                        let headers = req.headers.clone();
                        gw.legacy
                            .relay_to_owner(&owner, &pq, &headers, body)
                            .await?;
                    }
                }
                respond(session, 202, Vec::new(), &[]).await;
                Ok(())
            }
            Endpoint::Mcp => {
                let caller = self.caller(ctx);
                let mut admitted = Admitted {
                    pool,
                    rpc: ctx.rpc.take(),
                    body,
                    pinned: pinned.map(|p| *p),
                    forwarded: forwarded(session),
                    principal: caller.principal,
                    principal_header: caller.principal_header,
                    rewrite: caller.rewrite,
                };
                let result = gw
                    .streamable
                    .serve(session, &mut admitted, &mut ctx.served)
                    .await;
                ctx.rpc = admitted.rpc;
                result
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for McpProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: std::time::Instant::now(),
            slot: None,
            rpc: None,
            served: None,
            who: None,
            grant: None,
            guard: None,
            ip_held: None,
            stream_held: None,
            exported: None,
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No response compression module: MCP bodies are small JSON or SSE,
        // and SSE must pass through untouched.
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        Metrics::inc(&self.gw.state.metrics.requests);
        session.set_read_timeout(Some(self.gw.state.limits.idle_timeout));
        if self.gw.state.is_draining() {
            // Stopping: this connection closes after its answer, so the
            // client's next request opens a new one elsewhere.
            session.set_keepalive(None);
        }
        // A span per request, at debug level: at info, an enabled span (and
        // its enter/exit on every poll of a stream) cost 10-20 % more CPU per
        // call in an A/B run (BENCHMARKS.md). `RUST_LOG=mcp_gateway=debug`
        // turns it on; every event inside then carries the session tag.
        let req = session.req_header();
        let span = tracing::debug_span!(
            "request",
            method = %req.method,
            path = %req.uri.path(),
            session = %session_tag(req).unwrap_or_default(),
        );
        // With OTLP export on, the exported span wraps it (a disabled debug
        // span leaves the exported one current, so upstream calls inject it).
        let exported = telemetry::exporting().then(|| trace::request_span(req));
        let span = match &exported {
            Some(outer) => outer.in_scope(|| span),
            None => span,
        };
        ctx.exported = exported.clone();
        let outcome = async {
            let outcome = match self.admit(session, ctx).await {
                Ok(route) => self.dispatch(session, ctx, route).await,
                Err(reject) => Err(Failure::Reject(reject)),
            };
            match &outcome {
                Ok(()) => tracing::debug!("answered"),
                Err(Failure::Reject(r)) => tracing::debug!(refused = %r, "refused"),
                Err(_) => tracing::debug!("backend lost"),
            }
            outcome
        }
        .instrument(span)
        .instrument(exported.unwrap_or_else(tracing::Span::none))
        .await;
        match outcome {
            Ok(()) => Ok(true),
            Err(Failure::Reject(reject)) => {
                render(session, &self.gw, &reject, ctx.rpc.as_ref()).await;
                Ok(true)
            }
            // The response is under way: pingora closes the connection.
            Err(Failure::Abort(e)) => Err(e),
            Err(Failure::BackendLost { open: false }) => {
                render(session, &self.gw, &Reject::BadGateway, ctx.rpc.as_ref()).await;
                Ok(true)
            }
            Err(Failure::BackendLost { open: true }) => Err(Error::explain(
                ErrorType::ConnectionClosed,
                "backend lost mid-stream",
            )),
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "every request is answered in request_filter",
        ))
    }

    async fn fail_to_proxy(
        &self,
        _session: &mut Session,
        e: &Error,
        _ctx: &mut Ctx,
    ) -> FailToProxy {
        // Only a stream already under way gets here: end it as broken, add nothing.
        tracing::debug!(error = %e, "stream ended early");
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _e: &Error) -> bool {
        // Streams that end early are logged (at debug) by fail_to_proxy.
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if session.req_header().method == http::Method::POST {
            self.gw
                .state
                .metrics
                .post_seconds
                .observe(ctx.started.elapsed());
        }
        if self.gw.access_log || tracing::enabled!(tracing::Level::DEBUG) {
            self.access_line(session, ctx);
        }
        if let Some(span) = ctx.exported.take() {
            trace::finish(
                &span,
                session,
                ctx.rpc.as_ref(),
                ctx.served.as_ref().map(|s| s.backend.id.as_str()),
            );
        }
        ctx.served = None;
        ctx.stream_held = None;
        ctx.ip_held = None;
        ctx.slot = None;
    }
}

impl McpProxy {
    /// One line per request: `target: "access"` at info when the access log
    /// is on (`--access-log`), else at debug. No credentials, no whole
    /// session id (its first 8 characters), no request body.
    fn access_line(&self, session: &Session, ctx: &Ctx) {
        let req = session.req_header();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let rpc = ctx.rpc.as_ref();
        let ms = ctx.started.elapsed().as_secs_f64() * 1e3;
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    $level,
                    status,
                    http_method = req.method.as_str(),
                    path = req.uri.path(),
                    rpc = rpc.and_then(|r| r.method.as_str()).unwrap_or("-"),
                    name = rpc.and_then(|r| r.method.name()).unwrap_or("-"),
                    id = rpc.and_then(|r| r.id_text()).unwrap_or("-"),
                    session = session_tag(req).unwrap_or("-"),
                    principal = ctx.who.as_ref().map(|w| w.name.as_str()).filter(|n| !n.is_empty()).unwrap_or("-"),
                    client = %client_ip(session).map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                    backend = ctx.served.as_ref().map(|s| s.backend.id.as_str()).unwrap_or("-"),
                    ms,
                    "request"
                )
            };
        }
        if self.gw.access_log {
            line!(tracing::Level::INFO);
        } else {
            line!(tracing::Level::DEBUG);
        }
    }
}

/// The first 8 characters of the session id a request carries (Streamable
/// HTTP header or legacy query), for log correlation; never the whole id,
/// which is a bearer of the session.
fn session_tag(req: &RequestHeader) -> Option<&str> {
    let id = header(req, SESSION_HEADER).or_else(|| {
        req.uri.query()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "sessionId" || k == "session_id").then_some(v)
        })
    })?;
    id.get(..8).or(Some(id))
}
