//! The MCP listener: pingora's `ProxyHttp`, with the request path in
//! `request_filter` — the policy steps in order, then the transport.
//!
//! | phase | what happens here |
//! |---|---|
//! | `request_filter` | [`McpProxy::admit`]: capacity → route → origin → method → body → JSON-RPC → session (each a step returning `Result<_, Reject>`, see `policy/`); then the transport: `streamable.rs` for `/mcp`, `legacy/` for `/sse` and `/messages`; a `Reject` is answered by [`render`] |
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

use crate::app::Gateway;
use crate::legacy::bridge::Located;
use crate::metrics::Metrics;
use crate::policy::body;
use crate::policy::edge::{self, Endpoint};
use crate::policy::jsonrpc::{self, Rpc};
use crate::pool::Pool;
use crate::reject::Reject;
use crate::relay::Failure;
use crate::session::Pinned;
use crate::state::Slot;
use crate::streamable::{Admitted, Served};
use crate::upstream::{Forwarded, SESSION_HEADER};

/// Per-request state: what the steps learned, and the guards to return.
pub struct Ctx {
    started: std::time::Instant,
    slot: Option<Slot>,
    rpc: Option<Rpc>,
    served: Option<Served>,
}

pub struct McpProxy {
    pub gw: Arc<Gateway>,
}

/// Where an admitted request goes.
enum Route {
    Health,
    Endpoint {
        pool: Arc<Pool>,
        endpoint: Endpoint,
        body: Option<body::Body>,
        pinned: Option<Box<Pinned>>,
    },
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

/// The one place a [`Reject`] becomes a response: its status, a JSON-RPC
/// error (echoing the request id when known), `Retry-After`, `Allow`.
pub async fn render(session: &mut Session, gw: &Gateway, reject: &Reject, rpc: Option<&Rpc>) {
    gw.state.metrics.reject(reject.reason());
    tracing::debug!(status = reject.status(), reason = reject.reason().name(), %reject, "rejected");
    let id = rpc.and_then(|r| r.id.as_deref());
    let body = jsonrpc::error_body(id, reject.code(), &reject.to_string());
    let mut extra = Vec::with_capacity(2);
    if let Some(secs) = reject.retry_after() {
        extra.push(("retry-after", secs));
    }
    if let Some(allow) = reject.allow() {
        extra.push(("allow", allow));
    }
    respond(session, reject.status(), body, &extra).await;
}

impl McpProxy {
    /// The policy steps, in order. Each returns `Err(Reject)` to stop the request.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Route, Reject> {
        let gw = &self.gw;
        ctx.slot = Some(gw.state.enter()?);
        let path = session.req_header().uri.path();
        let (pool, endpoint) = match gw.sessions.route(path) {
            Ok(found) => found,
            Err(_) if path == "/health" || path == "/healthz" => return Ok(Route::Health),
            Err(e) => return Err(e),
        };
        let req = session.req_header();
        edge::check_origin(header(req, "origin"), &gw.state.limits.allowed_origins)?;
        edge::check_method(
            endpoint,
            &req.method,
            header(req, "accept"),
            req.headers.contains_key(SESSION_HEADER),
        )?;
        let body = if req.method == http::Method::POST {
            let body = body::read(session, &gw.state).await?;
            let rpc = ctx.rpc.insert(jsonrpc::parse(&body.bytes)?);
            let req = session.req_header();
            jsonrpc::check_headers(rpc, header(req, "mcp-method"), header(req, "mcp-name"))?;
            Some(body)
        } else {
            None
        };
        let pinned = match (endpoint, header(session.req_header(), SESSION_HEADER)) {
            (Endpoint::Mcp, Some(token)) => Some(Box::new(gw.sessions.open(&pool, token, "")?)),
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
                gw.legacy
                    .serve_stream(session, &pool, forwarded(session))
                    .await
            }
            Endpoint::Messages => {
                let rpc = ctx.rpc.clone().ok_or(Reject::BadRequest("no message"))?;
                let req = session.req_header();
                let query = req.uri.query().map(str::to_owned);
                match gw.legacy.locate(query.as_deref())? {
                    Located::Here(id) => gw.legacy.accept_message(&id, body, rpc)?,
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
                let mut admitted = Admitted {
                    pool,
                    rpc: ctx.rpc.take(),
                    body,
                    pinned: pinned.map(|p| *p),
                    forwarded: forwarded(session),
                    principal: String::new(),
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
        let outcome = match self.admit(session, ctx).await {
            Ok(route) => self.dispatch(session, ctx, route).await,
            Err(reject) => Err(Failure::Reject(reject)),
        };
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
        if tracing::enabled!(tracing::Level::DEBUG) {
            let status = session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0);
            let method = ctx
                .rpc
                .as_ref()
                .and_then(|r| r.method.as_str())
                .unwrap_or("-");
            tracing::debug!(
                status,
                rpc = method,
                id = ctx.rpc.as_ref().and_then(|r| r.id_text()).unwrap_or("-"),
                backend = ?ctx.served.as_ref().map(|s| s.backend.id.as_str()),
                ms = ctx.started.elapsed().as_millis() as u64,
                "request"
            );
        }
        ctx.served = None;
        ctx.slot = None;
    }
}
