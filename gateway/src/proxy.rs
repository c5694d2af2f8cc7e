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
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use tracing::Instrument;

use crate::app::Gateway;
use crate::federation::serve::{Federated, Request};
use crate::federation::{Opened, Service, Virtual};
use crate::legacy::Located;
use crate::metrics::{Metrics, Transport};
use crate::policy::auth::{Grant, Principal, filter_tools_list};
use crate::policy::body;
use crate::policy::edge::{self, Endpoint};
use crate::policy::guard::Guard;
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::policy::limits::{Call, Held, Limiters};
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::relay::{self, Downstream, Failure, Rewrite};
use crate::respond;
use crate::session::{Binding, Caller};
use crate::streamable::Admitted;
use crate::trace;
use crate::upstream::{Forwarded, SESSION_HEADER};

/// Per-request state: what the steps learned, and the guards to return.
pub struct Ctx {
    started: std::time::Instant,
    slot: Option<crate::state::Slot>,
    rpc: Option<Rpc>,
    /// The backend that served the request (for the access log).
    served: Option<Arc<BackendState>>,
    /// Who the request comes from, what the rules let it do, and the key
    /// its limits are counted under.
    who: Option<Arc<Principal>>,
    grant: Option<Arc<Grant>>,
    key: Option<Arc<str>>,
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
        binding: Option<Box<Binding>>,
    },
    /// A virtual server's `/mcp` (`federation/`).
    Virtual {
        vs: Arc<Virtual>,
        endpoint: Endpoint,
        body: Option<body::Body>,
        opened: Option<Box<Opened>>,
    },
}

impl Route {
    /// The nonce of the session id the request carries, if any.
    fn session_nonce(&self) -> Option<&[u8; 12]> {
        match self {
            Route::Endpoint { binding, .. } => binding.as_deref().and_then(Binding::nonce),
            Route::Virtual { opened, .. } => opened.as_deref().map(|o| &o.nonce),
            _ => None,
        }
    }
}

/// Whether the servers behind `service` listed the tool (only those get
/// limit keys of their own).
fn lists_tool(service: &Service, sessions: &crate::session::Sessions, tool: &str) -> bool {
    match service {
        Service::Pool(pool) => sessions.hints(pool).lists(tool),
        Service::Virtual(vs) => vs.lists_tool(sessions, tool),
    }
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
        client_ip: client_ip(session).map(|ip| ip.to_string()),
        tls: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
    }
}

impl McpProxy {
    /// Who the request is from, as the transports and the exchange need it.
    fn caller(&self, session: &Session, ctx: &Ctx) -> Caller {
        let guard = ctx.guard.clone().unwrap_or_else(|| self.gw.guard());
        let grant = ctx.grant.clone().unwrap_or_default();
        Caller {
            principal: ctx.who.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
            principal_header: guard.principal_header.clone(),
            forwarded: forwarded(session),
            rewrite: grant
                .restricts_tools()
                .then(|| Arc::new(move |m: &str| filter_tools_list(m, &grant)) as Rewrite),
        }
    }

    /// The protected-resource metadata document (RFC 9728) for `prefix`
    /// (empty: the root resource).
    fn resource_metadata(&self, session: &Session, ctx: &Ctx, prefix: &str) -> Vec<u8> {
        let guard = ctx.guard.clone().unwrap_or_else(|| self.gw.guard());
        let resource = guard
            .resource
            .clone()
            .unwrap_or_else(|| format!("{}{prefix}/mcp", respond::origin(session, None)));
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
        ctx.slot = Some(gw.state.enter_from(client_ip(session))?);
        let guard = Arc::clone(ctx.guard.insert(gw.guard()));
        let path = session.req_header().uri.path();
        if let Some(rest) = path.strip_prefix(WELL_KNOWN) {
            return Ok(Route::ResourceMetadata {
                prefix: rest.to_owned(),
            });
        }
        let (service, endpoint) = match gw.federation.route(path) {
            Some((vs, endpoint)) => (Service::Virtual(vs), endpoint),
            None => match gw.sessions.route(path) {
                Ok((pool, endpoint)) => (Service::Pool(pool), endpoint),
                Err(_) if path == "/health" || path == "/healthz" => return Ok(Route::Health),
                Err(e) => return Err(e),
            },
        };
        let over = self.identify(session, ctx, &guard, &service, endpoint)?;
        let req = session.req_header();
        edge::check_method(
            endpoint,
            &req.method,
            header(req, "accept"),
            req.headers.contains_key(SESSION_HEADER),
        )?;
        let body = match req.method {
            http::Method::POST => Some(
                self.read_message(session, ctx, &guard, &service, endpoint, over)
                    .await?,
            ),
            _ if over.is_some() => return Err(over.unwrap_or(Reject::Capacity)),
            http::Method::GET => {
                self.open_stream(ctx, &guard, endpoint)?;
                None
            }
            _ => None,
        };
        let token = match endpoint {
            Endpoint::Mcp => header(session.req_header(), SESSION_HEADER),
            _ => None,
        };
        let route = self.open_route(ctx, &service, endpoint, body, token)?;
        if guard.shared.is_some() {
            let nonce = route.session_nonce();
            self.check_shared(session, ctx, &guard, &service, endpoint, nonce)
                .await?;
        }
        Ok(route)
    }

    /// The route, with the client's session opened: a pool's binding, or
    /// a virtual server's member bindings.
    fn open_route(
        &self,
        ctx: &Ctx,
        service: &Service,
        endpoint: Endpoint,
        body: Option<body::Body>,
        token: Option<&str>,
    ) -> Result<Route, Reject> {
        let sessions = &self.gw.sessions;
        let who = ctx.who.as_ref().map_or("", |w| w.name.as_str());
        Ok(match service {
            Service::Pool(pool) => Route::Endpoint {
                pool: Arc::clone(pool),
                endpoint,
                body,
                binding: match token {
                    Some(token) => Some(Box::new(sessions.open(pool, token, who)?)),
                    None => None,
                },
            },
            Service::Virtual(vs) => Route::Virtual {
                vs: Arc::clone(vs),
                endpoint,
                body,
                opened: match token {
                    Some(token) => Some(Box::new(vs.open(sessions, token, who)?)),
                    None => None,
                },
            },
        })
    }

    /// Client address, Origin, credentials, pool access, the principal's
    /// rate. A legacy message over its rate is still read (the refusal is
    /// returned, not raised), so that its stream can carry the error for its id.
    fn identify(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        guard: &Guard,
        service: &Service,
        endpoint: Endpoint,
    ) -> Result<Option<Reject>, Reject> {
        let ip = client_ip(session);
        ctx.ip_held = guard.limits.check_ip(ip)?;
        let req = session.req_header();
        let allowed = &self.gw.state.limits().allowed_origins;
        edge::check_origin(header(req, "origin"), allowed)?;
        let who = guard
            .auth
            .authenticate(&req.headers, guard.mode(service.index()))?;
        let grant = guard.rules.grant(&who);
        if !grant.may_reach(service.name()) {
            return Err(Reject::Forbidden {
                scope: grant.required_scope().map(str::to_owned),
            });
        }
        let key = Limiters::key(&who, ip);
        let mut over = guard.limits.check_request(&who, &key).err();
        ctx.who = Some(who);
        ctx.grant = Some(grant);
        ctx.key = Some(key);
        match over.take_if(|_| endpoint != Endpoint::Messages) {
            Some(r) => Err(r),
            None => Ok(over),
        }
    }

    /// A POST's body, read whole and parsed once, held to its headers and
    /// to the principal's rules and limits. A refused legacy message's
    /// error goes to its stream too (the legacy client reads answers there).
    async fn read_message(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        guard: &Guard,
        service: &Service,
        endpoint: Endpoint,
        over: Option<Reject>,
    ) -> Result<body::Body, Reject> {
        let body = body::read(session, &self.gw.state, ctx.key.clone()).await?;
        let rpc = ctx.rpc.insert(jsonrpc::parse(&body.bytes)?);
        let req = session.req_header();
        jsonrpc::check_headers(rpc, header(req, "mcp-method"), header(req, "mcp-name"))?;
        jsonrpc::check_batch(rpc, header(req, "mcp-protocol-version"))?;
        let (Some(who), Some(grant), Some(key)) = (&ctx.who, &ctx.grant, &ctx.key) else {
            return Err(Reject::Capacity);
        };
        let checked = over.map_or(Ok(()), Err).and_then(|()| {
            // Every message of a batch, as the first: each is a request to
            // the principal's rate, each tool call to the tool's rules.
            for _ in &rpc.rest {
                guard.limits.check_request(who, key)?;
            }
            for method in rpc.methods() {
                let Method::ToolsCall { name } = method else {
                    continue;
                };
                if !grant.may_call(name) {
                    return Err(Reject::ToolDenied {
                        tool: name.clone(),
                        scope: grant.required_scope().map(str::to_owned),
                    });
                }
                let listed = |t: &str| lists_tool(service, &self.gw.sessions, t);
                guard.limits.check_tool(who, key, name, listed)?;
            }
            if rpc.is_initialize() {
                guard.limits.check_new_session(who, key)?;
            }
            Ok(())
        });
        if let Err(refused) = checked {
            if endpoint == Endpoint::Messages {
                let query = req.uri.query();
                let legacy = &self.gw.legacy;
                legacy.refuse_message(query, service.index(), rpc, &refused, &who.name);
            }
            return Err(refused);
        }
        Ok(body)
    }

    /// The same limits across replicas, and whether the session id was
    /// ended on another replica (`[cluster] store`): one store round trip,
    /// made only once every local step let the request through. A refused
    /// legacy message's error goes to its stream too.
    async fn check_shared(
        &self,
        session: &Session,
        ctx: &Ctx,
        guard: &Guard,
        service: &Service,
        endpoint: Endpoint,
        nonce: Option<&[u8; 12]>,
    ) -> Result<(), Reject> {
        let (Some(shared), Some(who), Some(key)) = (&guard.shared, &ctx.who, &ctx.key) else {
            return Ok(());
        };
        let req = session.req_header();
        let sessions = &self.gw.sessions;
        // Every message of a batch, as the local steps counted them.
        let tools: Vec<(&str, bool)> = (ctx.rpc.iter().flat_map(Rpc::methods))
            .filter_map(|m| match m {
                Method::ToolsCall { name } => {
                    Some((name.as_str(), lists_tool(service, sessions, name)))
                }
                _ => None,
            })
            .collect();
        let call = Call {
            who,
            key,
            ip: client_ip(session),
            messages: ctx.rpc.as_ref().map_or(1, |r| 1 + r.rest.len() as u32),
            tools: &tools,
            new_session: ctx.rpc.as_ref().is_some_and(Rpc::is_initialize)
                || (endpoint == Endpoint::Sse && req.method == http::Method::GET),
        };
        let Err(refused) = shared.check(&guard.limits, &call, nonce).await else {
            return Ok(());
        };
        if let (Endpoint::Messages, Some(rpc)) = (endpoint, &ctx.rpc) {
            let legacy = &self.gw.legacy;
            let index = service.index();
            legacy.refuse_message(req.uri.query(), index, rpc, &refused, &who.name);
        }
        Err(refused)
    }

    /// A GET opens a stream: a new legacy session is a new session, and
    /// every stream holds a place in the principal's stream cap.
    fn open_stream(&self, ctx: &mut Ctx, guard: &Guard, endpoint: Endpoint) -> Result<(), Reject> {
        let (Some(who), Some(key)) = (&ctx.who, &ctx.key) else {
            return Err(Reject::Capacity);
        };
        if endpoint == Endpoint::Sse {
            guard.limits.check_new_session(who, key)?;
        }
        ctx.stream_held = guard.limits.open_stream(who, key)?;
        Ok(())
    }

    /// Hands an admitted request to its transport.
    async fn dispatch(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: Route,
    ) -> std::result::Result<(), Failure> {
        let gw = &self.gw;
        let (pool, endpoint, body, binding) = match route {
            Route::Health if gw.state.is_draining() => {
                let draining = Bytes::from_static(br#"{"status":"draining"}"#);
                return Downstream::new(session, &gw.state)
                    .json(503, draining)
                    .await;
            }
            Route::Health => {
                let ok = Bytes::from_static(br#"{"status":"ok"}"#);
                return Downstream::new(session, &gw.state).json(200, ok).await;
            }
            Route::ResourceMetadata { prefix } => {
                let doc = Bytes::from(self.resource_metadata(session, ctx, &prefix));
                return Downstream::new(session, &gw.state).json(200, doc).await;
            }
            Route::Endpoint {
                pool,
                endpoint,
                body,
                binding,
            } => (pool, endpoint, body, binding),
            Route::Virtual {
                vs,
                endpoint,
                body,
                opened,
            } => {
                let body = body.map(|b| b.bytes).unwrap_or_default();
                return match endpoint {
                    Endpoint::Mcp => self.federated(session, ctx, &vs, body, opened).await,
                    Endpoint::Messages => self.message(session, ctx, vs.index, body).await,
                    Endpoint::Sse => {
                        let caller = self.caller(session, ctx);
                        let client = ctx.key.clone().unwrap_or_else(|| Arc::from(""));
                        let served = Service::Virtual(vs);
                        gw.legacy
                            .serve_stream(session, &served, caller, client)
                            .await
                    }
                };
            }
        };
        let body = body.map(|b| b.bytes).unwrap_or_default();
        match endpoint {
            Endpoint::Sse => {
                let caller = self.caller(session, ctx);
                let client = ctx.key.clone().unwrap_or_else(|| Arc::from(""));
                let served = Service::Pool(pool);
                gw.legacy
                    .serve_stream(session, &served, caller, client)
                    .await
            }
            Endpoint::Messages => self.message(session, ctx, pool.index, body).await,
            Endpoint::Mcp => {
                let admitted = Admitted {
                    pool,
                    body,
                    binding: binding.map(|b| *b),
                    caller: self.caller(session, ctx),
                };
                let served = gw
                    .streamable
                    .serve(session, admitted, ctx.rpc.as_ref())
                    .await;
                ctx.served = served?;
                Ok(())
            }
        }
    }

    /// A virtual server's `/mcp`: a session's messages, its stream, its end,
    /// and stateless requests (`federation/`).
    async fn federated(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        vs: &Arc<Virtual>,
        body: Bytes,
        opened: Option<Box<Opened>>,
    ) -> std::result::Result<(), Failure> {
        let gw = &self.gw;
        let caller = self.caller(session, ctx);
        let head = session.req_header();
        let rpc = ctx.rpc.as_ref();
        let transport = if opened.is_some() || rpc.is_some_and(Rpc::is_initialize) {
            Transport::Streamable
        } else {
            Transport::Stateless
        };
        let version = header(head, "mcp-protocol-version").map(str::to_owned);
        let method = head.method.clone();
        let req = Request {
            vs,
            body,
            rpc,
            caller: &caller,
            session: opened.as_deref(),
            version: version.as_deref(),
            transport,
        };
        let fed = Federated {
            sessions: &gw.sessions,
            upstream: &gw.streamable.upstream,
            state: &gw.state,
        };
        let mut down = Downstream::new(session, &gw.state);
        match method {
            http::Method::GET => fed.stream(&req, &mut down).await,
            http::Method::DELETE => fed.end(&req, &mut down).await,
            _ => fed.serve(&req, &mut down).await,
        }
    }

    /// `POST /messages`: queued for the session here, or relayed to the
    /// replica holding its stream; answered 202 at once.
    async fn message(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        route: u16,
        body: Bytes,
    ) -> std::result::Result<(), Failure> {
        let legacy = &self.gw.legacy;
        let rpc = ctx.rpc.clone().ok_or(Reject::BadRequest("no message"))?;
        let req = session.req_header();
        match legacy.locate(req.uri.query())? {
            Located::Here(id) => {
                let who = ctx.who.as_ref().map_or("", |w| w.name.as_str());
                legacy.accept_message(&id, route, body, rpc, who)?
            }
            Located::Elsewhere { owner } => {
                let pq = req
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let headers = req.headers.clone();
                legacy.relay_to_owner(&owner, &pq, &headers, body).await?;
            }
        }
        Downstream::new(session, &self.gw.state)
            .json(202, Bytes::new())
            .await
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
            key: None,
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
        session.set_read_timeout(Some(self.gw.state.limits().idle_timeout));
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
        let reject = match outcome {
            Ok(()) => return Ok(true),
            Err(Failure::Reject(reject)) => reject,
            Err(Failure::BackendLost { open: false }) => Reject::BadGateway,
            // The response is under way: pingora closes the connection.
            Err(Failure::Abort(e)) => return Err(e),
            Err(Failure::BackendLost { open: true }) => {
                return Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "backend lost mid-stream",
                ));
            }
        };
        let id = ctx.rpc.as_ref().and_then(|r| r.id.as_deref());
        let resource = ctx.guard.as_ref().and_then(|g| g.resource.clone());
        let mut down = Downstream::new(session, &self.gw.state).with_resource(resource);
        match relay::refuse(&mut down, &self.gw.state.metrics, &reject, id).await {
            Err(Failure::Abort(e)) => Err(e),
            _ => Ok(true),
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
        if self.gw.access_log() || tracing::enabled!(tracing::Level::DEBUG) {
            self.access_line(session, ctx);
        }
        if let Some(span) = ctx.exported.take() {
            trace::finish(
                &span,
                session,
                ctx.rpc.as_ref(),
                ctx.served.as_ref().map(|b| b.id.as_str()),
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
                    path = clip(req.uri.path()).as_ref(),
                    rpc = clip(rpc.and_then(|r| r.method.as_str()).unwrap_or("-")).as_ref(),
                    name = clip(rpc.and_then(|r| r.method.name()).unwrap_or("-")).as_ref(),
                    id = clip(rpc.and_then(|r| r.id_text()).unwrap_or("-")).as_ref(),
                    session = clip(session_tag(req).unwrap_or("-")).as_ref(),
                    principal = clip(ctx.who.as_ref().map(|w| w.name.as_str()).filter(|n| !n.is_empty()).unwrap_or("-")).as_ref(),
                    client = %client_ip(session).map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                    backend = ctx.served.as_ref().map(|b| b.id.as_str()).unwrap_or("-"),
                    ms,
                    "request"
                )
            };
        }
        if self.gw.access_log() {
            line!(tracing::Level::INFO);
        } else {
            line!(tracing::Level::DEBUG);
        }
    }
}

/// Most characters of one client-supplied field in a log line.
const LOG_FIELD: usize = 96;

/// A client-supplied value as a log line may carry it: at most
/// [`LOG_FIELD`] characters (then "…"), control characters escaped, so a
/// client can neither fill the log nor forge a line of it.
fn clip(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= LOG_FIELD && !value.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(LOG_FIELD + 8);
    for (i, c) in value.chars().enumerate() {
        if i == LOG_FIELD {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
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
    Some(id.char_indices().nth(8).map_or(id, |(end, _)| &id[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_are_cut_short_and_escaped() {
        assert_eq!(clip("tools/call"), "tools/call");
        let long = "x".repeat(1_000_000);
        assert_eq!(clip(&long).chars().count(), LOG_FIELD + 1);
        let forged = clip("a\nfake line\u{1b}[31m");
        assert!(
            !forged.contains('\n') && !forged.contains('\u{1b}'),
            "{forged}"
        );
        assert!(forged.contains("\\n"), "{forged}");
    }
}
