//! The exported span of one MCP request (OTLP on, see the `telemetry`
//! crate): created when the request comes in, continuing the client's
//! `traceparent` if it sent one, filled in and ended when the request is
//! logged. It carries the JSON-RPC method, the tool (or prompt, or resource)
//! name, the backend, the HTTP status and a hash of the session id — never
//! the id itself, which is a bearer of the session. A legacy SSE message
//! gets a span of its own, a child of its POST's, around its backend call.

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use tracing::field::Empty;

use crate::policy::jsonrpc::Rpc;
use crate::upstream::SESSION_HEADER;

pub fn request_span(req: &RequestHeader) -> tracing::Span {
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "mcp.request",
        "otel.kind" = "server",
        "http.request.method" = %req.method,
        "url.path" = req.uri.path(),
        "mcp.method" = Empty,
        "mcp.name" = Empty,
        "mcp.backend" = Empty,
        "mcp.session.hash" = Empty,
        "http.response.status_code" = Empty,
    );
    telemetry::continue_from(&span, &req.headers);
    span
}

/// The exported span of one legacy SSE message, relayed by its session's
/// worker after the `POST /messages` that brought it was answered (202): a
/// child of that POST's span, so the backend's span joins the client's
/// trace. `None` (OTLP off, or no span to follow) gives a disabled span.
pub fn message_span(rpc: &Rpc, parent: Option<&telemetry::Parent>) -> tracing::Span {
    let Some(parent) = parent else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "mcp.legacy.message",
        "otel.kind" = "internal",
        "mcp.method" = Empty,
        "mcp.name" = Empty,
    );
    telemetry::set_parent(&span, parent);
    if let Some(method) = rpc.method.as_str() {
        span.record("mcp.method", method);
    }
    if let Some(name) = rpc.method.name() {
        span.record("mcp.name", name);
    }
    span
}

/// Records what the request turned out to be, then ends the span.
pub fn finish(span: &tracing::Span, session: &Session, rpc: Option<&Rpc>, backend: Option<&str>) {
    if let Some(method) = rpc.and_then(|r| r.method.as_str()) {
        span.record("mcp.method", method);
    }
    if let Some(name) = rpc.and_then(|r| r.method.name()) {
        span.record("mcp.name", name);
    }
    if let Some(b) = backend {
        span.record("mcp.backend", b);
    }
    if let Some(id) = session
        .req_header()
        .headers
        .get(SESSION_HEADER)
        .map(|v| v.as_bytes())
    {
        span.record("mcp.session.hash", session_hash(id).as_str());
    }
    if let Some(r) = session.response_written() {
        span.record("http.response.status_code", i64::from(r.status.as_u16()));
    }
}

/// The first 16 hex digits of the session id's SHA-256: the same session
/// gives the same value across requests and replicas; the id cannot be
/// recovered from it.
pub fn session_hash(id: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_hash_is_stable_short_and_not_the_id() {
        let a = session_hash(b"token-one");
        assert_eq!(a, session_hash(b"token-one"));
        assert_ne!(a, session_hash(b"token-two"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("token"));
    }
}
