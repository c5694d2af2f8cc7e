//! The HTTP server: `/mcp` (rmcp's Streamable HTTP service), the probes, and
//! the drain state that SIGTERM switches on.
//!
//! Probes: `/livez` says the process serves (200 whenever it answers at all,
//! whatever the store is doing: a store outage must not get healthy
//! processes restarted); `/readyz` says it should get traffic (store
//! reachable, not draining: else 503); `/health` is `/readyz` under the
//! seed's name.
//!
//! Invariants: while draining, `/readyz` answers 503 and a request that would
//! open a session (a POST without `Mcp-Session-Id`) gets 503, so a load
//! balancer or the gateway moves new work elsewhere; requests already in
//! flight (every POST and DELETE until its response body is finished) are
//! counted so the process exits only once they are done or the drain times out.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body::Frame;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::server::RegistryServer;
use crate::tools::Registry;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const INSTANCE_HEADER: &str = "x-registry-instance";

/// Serving → draining, and how many requests are still in flight.
#[derive(Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    inflight: AtomicUsize,
    idle: Notify,
}

impl Lifecycle {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.idle.notify_waiters();
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    fn enter(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(Arc::clone(self))
    }

    /// Resolves once nothing is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct InflightGuard(Arc<Lifecycle>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A response body that holds its request's in-flight guard until the last
/// byte is sent or the client goes away.
struct GuardedBody {
    inner: Body,
    _guard: InflightGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    life: Arc<Lifecycle>,
    instance: HeaderValue,
    sessions: Arc<LocalSessionManager>,
}

/// Everything `/mcp` needs from the command line.
pub struct McpOptions {
    pub allowed_hosts: Option<Vec<String>>,
    pub max_body_bytes: usize,
    /// An idle MCP session ends after this long.
    pub session_idle_timeout: Duration,
    pub cancel: CancellationToken,
    /// `/metrics` on a listener of its own (not on the MCP listener).
    pub metrics_apart: bool,
}

/// The main router, and the metrics router when `/metrics` has a listener
/// of its own (`McpOptions::metrics_apart`).
pub fn router(
    registry: Arc<Registry>,
    life: Arc<Lifecycle>,
    options: McpOptions,
) -> (Router, Option<Router>) {
    let mut config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(options.max_body_bytes)
        .with_cancellation_token(options.cancel);
    config = match options.allowed_hosts {
        Some(hosts) => config.with_allowed_hosts(hosts),
        None => config.disable_allowed_hosts(),
    };
    let for_sessions = Arc::clone(&registry);
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = Some(options.session_idle_timeout);
    let sessions = Arc::new(sessions);
    let mcp: StreamableHttpService<RegistryServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(RegistryServer::new(Arc::clone(&for_sessions))),
            Arc::clone(&sessions),
            config,
        );
    let instance = HeaderValue::from_str(&registry.instance)
        .unwrap_or_else(|_| HeaderValue::from_static("registry"));
    let state = AppState {
        registry,
        life,
        instance,
        sessions,
    };
    let mcp_routes = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(state.clone(), track_mcp));
    let metrics = metrics_router(state.clone());
    let app = Router::new()
        .route("/health", get(ready))
        .route("/readyz", get(ready))
        .route("/livez", get(live))
        .with_state(state)
        .merge(mcp_routes);
    match options.metrics_apart {
        true => (app, Some(metrics)),
        false => (app.merge(metrics), None),
    }
}

/// `GET /metrics` alone, for its own listener (`--metrics-listen`) or the main one.
fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Prometheus text: tools by latency and failures, sessions, in flight, draining.
async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    state.registry.metrics.render(&mut out);
    let open = state.sessions.sessions.read().await.len();
    crate::metrics::gauge(&mut out, "registry_sessions_open", open);
    crate::metrics::gauge(&mut out, "registry_inflight", state.life.inflight());
    crate::metrics::gauge(
        &mut out,
        "registry_draining",
        u8::from(state.life.is_draining()),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Liveness: answers without touching the store.
async fn live(State(state): State<AppState>) -> Response {
    let body = json!({
        "status": "alive",
        "instance": state.registry.instance,
        "draining": state.life.is_draining(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Readiness: the store answers and the process is not draining.
async fn ready(State(state): State<AppState>) -> Response {
    if state.life.is_draining() {
        // Not ready whatever the store says: answer without waiting on it.
        let report = json!({
            "status": "draining",
            "store": state.registry.store.kind(),
            "instance": state.registry.instance,
            "inflight": state.life.inflight(),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(report)).into_response();
    }
    let mut report = crate::tools::health_check::run(&state.registry).await;
    report["inflight"] = json!(state.life.inflight());
    let code = if report["status"] == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(report)).into_response()
}

fn draining_response() -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32000, "message": "Server is draining; retry on another instance" }
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        axum::Json(body),
    )
        .into_response()
}

/// Per-request bookkeeping for `/mcp`: drain refusal, in-flight counting,
/// the instance header, and a tracing span carrying the session id.
async fn track_mcp(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let session = request
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let method = request.method().clone();
    if state.life.is_draining() && method == Method::POST && session.is_empty() {
        return draining_response();
    }
    let guard = (method == Method::POST || method == Method::DELETE).then(|| state.life.enter());
    let span = tracing::info_span!("mcp", %method, session = %session);
    // With OTLP on, an exported span joins the gateway's trace (traceparent).
    let exported = telemetry::exporting().then(|| {
        let span = tracing::info_span!(
            target: telemetry::TARGET,
            "mcp.backend.request",
            "otel.kind" = "server",
            "http.request.method" = %method,
            "url.path" = request.uri().path(),
            "http.response.status_code" = tracing::field::Empty,
        );
        telemetry::continue_from(&span, request.headers());
        span
    });
    let mut response = next
        .run(request)
        .instrument(span)
        .instrument(exported.clone().unwrap_or_else(tracing::Span::none))
        .await;
    if let Some(span) = exported {
        span.record(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        );
    }
    response
        .headers_mut()
        .insert(INSTANCE_HEADER, state.instance.clone());
    match guard {
        Some(guard) => response.map(|inner| {
            Body::new(GuardedBody {
                inner,
                _guard: guard,
            })
        }),
        None => response,
    }
}

/// How long the server keeps going after the drain before it stops waiting
/// for long-lived streams to close.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);
