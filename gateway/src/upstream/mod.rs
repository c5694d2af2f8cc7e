//! The one way to reach a backend. Both transports (Streamable HTTP and
//! the legacy bridge) send their requests through [`Upstream::send`]: one
//! HTTP/1.1 client with a keep-alive pool per backend, the same header rules
//! both ways, and the same timeouts.
//!
//! Why the gateway owns each exchange instead of handing it to pingora's
//! proxy loop: a proxied exchange is fixed once pingora has the upstream
//! peer, so the gateway could neither write SSE keep-alives into a quiet
//! stream, nor notice a cut at an event boundary, nor (with failover) move
//! a client's open stream to another backend. Here the request path reads
//! the backend's response itself ([`Frames`]) and writes the client's
//! (`relay.rs`), so every stream the gateway serves is one it can shape.
//! The client is hyper's (the stack reqwest is built on): a request's header
//! and body leave in one write, and a pooled connection is reused as soon
//! as a response has been read to its end. A session's `GET` stream to a
//! pool whose backends speak h2c shares an HTTP/2 connection with other
//! streams instead ([`shared`]).
//!
//! Header rules: hop-by-hop headers and those named in `Connection:` never
//! cross; `Host` is the backend's; the client's credentials (Authorization,
//! X-API-Key) never reach a backend (MCP forbids token passthrough);
//! `X-Forwarded-For` gains the client's address and `X-Forwarded-Proto`
//! says how the client came in; what a client says of its own address or
//! host (`Forwarded`, `X-Real-IP`, `X-Forwarded-Host`) is dropped, as is
//! the principal header. A header the gateway owns or drops is dropped in
//! every spelling with `_` for `-` too (`x_mcp_principal`): many servers
//! (CGI/WSGI, some proxies) read both spellings as one name.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

pub mod shared;
use shared::{Lease, SharedStreams};

pub const SESSION_HEADER: &str = "mcp-session-id";
/// The key a stdio pool's in-process host wants on every request (`stdio/`):
/// added for the hosts' addresses only, never taken from a client.
pub const HOST_KEY_HEADER: &str = "x-mcp-gateway-host-key";

/// Request headers that are the gateway's business, never copied from the client.
const REQUEST_DROP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "mcp-session-id",
    "x-forwarded-proto",
    "authorization",
    "proxy-authorization",
    "x-api-key",
    // what a client says of its own address or host: never trusted
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    HOST_KEY_HEADER,
];

/// The header a registry backend names itself in (kept for the admin API).
pub const INSTANCE_HEADER: &str = "x-registry-instance";

/// Response headers never passed back to the client as they came (hop-by-hop,
/// the session id the gateway rewrites, and what identifies a backend).
const RESPONSE_DROP: &[&str] = &[
    "x-registry-instance",
    "server",
    "x-powered-by",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "mcp-session-id",
    HOST_KEY_HEADER,
];

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection was never made: the request did not reach the backend.
    #[error("backend unreachable: {0}")]
    Connect(String),
    #[error("backend silent for {0:?}")]
    Timeout(Duration),
    #[error("backend exchange failed: {0}")]
    Failed(String),
}

impl UpstreamError {
    /// Whether the request provably never reached the backend (safe to send elsewhere).
    pub fn never_reached(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// How the client reached the gateway, for `X-Forwarded-*`.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    pub client_ip: Option<String>,
    pub tls: bool,
}

/// One request to a backend.
pub struct Outgoing<'a> {
    pub method: http::Method,
    /// Path and query as the backend serves them (pool prefix removed).
    pub path: &'a str,
    /// The client's headers, filtered by the rules above (the bridge has none).
    pub client_headers: Option<&'a HeaderMap>,
    /// The backend's own session id, if the request belongs to a session.
    pub session: Option<&'a str>,
    /// Set when the client's headers do not carry it (the legacy bridge).
    pub protocol_version: Option<&'a str>,
    /// A 2026-07-28 request's `Mcp-Method` and `Mcp-Name`, set when the
    /// client's headers do not carry them as they must be (a federated
    /// request, whose name the gateway changed).
    pub mcp: Option<(&'a str, Option<&'a str>)>,
    pub accept: Option<&'static str>,
    pub content_type: Option<&'static str>,
    pub body: Bytes,
    pub forwarded: &'a Forwarded,
    /// The verified principal, in the header the gateway owns (a client's
    /// own header of that name never passes).
    pub principal: Option<(&'a HeaderName, &'a str)>,
    /// Keep the client's credentials (only for a relay to another gateway
    /// replica, never to a backend).
    pub keep_credentials: bool,
    /// A long-lived server stream (a session's `GET`) to a backend that
    /// speaks h2c: it goes over a shared HTTP/2 connection ([`shared`]).
    pub shared: bool,
}

impl<'a> Outgoing<'a> {
    /// A request of the gateway's own (no client behind it): no headers but
    /// the gateway's, an empty body; set the other fields as needed.
    pub fn own(method: http::Method, path: &'a str, forwarded: &'a Forwarded) -> Self {
        Outgoing {
            method,
            path,
            client_headers: None,
            session: None,
            protocol_version: None,
            mcp: None,
            accept: None,
            content_type: None,
            body: Bytes::new(),
            forwarded,
            principal: None,
            keep_credentials: false,
            shared: false,
        }
    }
}

pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    /// Server streams to h2c backends, on shared HTTP/2 connections.
    shared: SharedStreams,
    /// Milliseconds of silence allowed (changes on reload).
    idle_ms: AtomicU64,
    /// The stdio hosts of this process and their keys (a few at most, set at start).
    hosts: Vec<(SocketAddr, HeaderValue)>,
}

impl Upstream {
    /// `idle`: longest silence allowed from a backend, for the response
    /// header and between body bytes.
    pub fn new(connect_timeout: Duration, idle: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            client,
            shared: SharedStreams::new(connect_timeout),
            idle_ms: AtomicU64::new(idle.as_millis() as u64),
            hosts: Vec::new(),
        }
    }

    /// Requests to these addresses (the stdio hosts) carry their key.
    pub fn with_hosts(mut self, hosts: Vec<(SocketAddr, HeaderValue)>) -> Self {
        self.hosts = hosts;
        self
    }

    /// Changes the longest silence allowed from a backend (for requests sent from now on).
    pub fn set_idle(&self, idle: Duration) {
        self.idle_ms
            .store(idle.as_millis() as u64, Ordering::Relaxed);
    }

    /// Sends one request; returns the response header and a reader for its body.
    pub async fn send(
        &self,
        addr: SocketAddr,
        out: Outgoing<'_>,
    ) -> Result<(http::response::Parts, Frames), UpstreamError> {
        let shared = out.shared;
        let mut req = build_request(addr, out)?;
        if let Some((_, key)) = self.hosts.iter().find(|(a, _)| *a == addr) {
            req.headers_mut().insert(HOST_KEY_HEADER, key.clone());
        }
        let idle = Duration::from_millis(self.idle_ms.load(Ordering::Relaxed));
        let sent = tokio::time::timeout(idle, async {
            let lease = if shared {
                self.shared.lease(addr).await?
            } else {
                None
            };
            let resp = match &lease {
                Some(lease) => lease.send(req).await?,
                None => self.client.request(req).await.map_err(|e| match e {
                    e if e.is_connect() => UpstreamError::Connect(e.to_string()),
                    e => UpstreamError::Failed(e.to_string()),
                })?,
            };
            Ok((resp, lease))
        });
        let (resp, lease) = sent.await.map_err(|_| UpstreamError::Timeout(idle))??;
        let (parts, body) = resp.into_parts();
        Ok((parts, Frames::new(body, idle, lease)))
    }
}

/// The JSON-RPC messages of an answer read whole (at most `cap` bytes);
/// none when it cannot be read. See [`messages_of`].
pub async fn read_messages(headers: &HeaderMap, frames: &mut Frames, cap: usize) -> Vec<String> {
    match frames.read_all(cap).await {
        Ok(body) => messages_of(headers, &body, cap),
        Err(_) => Vec::new(),
    }
}

/// The JSON-RPC messages of a whole body: a JSON body is one message, an
/// event stream's are its events' data (`mcp_sse::messages`, the
/// workspace's one SSE reader).
pub fn messages_of(headers: &HeaderMap, body: &[u8], cap: usize) -> Vec<String> {
    if is_event_stream(headers) {
        return mcp_sse::messages(body, cap);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        Vec::new()
    } else {
        vec![text.to_owned()]
    }
}

fn build_request(
    addr: SocketAddr,
    out: Outgoing<'_>,
) -> Result<http::Request<Full<Bytes>>, UpstreamError> {
    let uri = format!("http://{addr}{}", out.path);
    let mut req = http::Request::builder()
        .method(out.method)
        .uri(uri)
        .body(Full::new(out.body))
        .map_err(|e| UpstreamError::Failed(format!("building the request: {e}")))?;
    let headers = req.headers_mut();
    let prior_xff = out.client_headers.and_then(|client| {
        copy_client_headers(client, &out.principal, out.keep_credentials, headers)
    });
    if let Some(ip) = &out.forwarded.client_ip {
        let value = match prior_xff.and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip.clone(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", v);
        }
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if out.forwarded.tls { "https" } else { "http" }),
    );
    if telemetry::exporting() {
        // The backend's span joins the request's trace (replacing the
        // client's traceparent, which is the request span's parent).
        telemetry::inject_current(headers);
    }
    if let Some((name, who)) = out.principal
        && !who.is_empty()
        && let Ok(v) = HeaderValue::from_str(who)
    {
        headers.insert(name.clone(), v);
    }
    if let Some(sid) = out.session {
        let v = HeaderValue::from_str(sid)
            .map_err(|_| UpstreamError::Failed("unusable backend session id".into()))?;
        headers.insert(SESSION_HEADER, v);
    }
    if let Some(v) = out
        .protocol_version
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("mcp-protocol-version", v);
    }
    if let Some((method, name)) = out.mcp {
        for (header, value) in [("mcp-method", Some(method)), ("mcp-name", name)] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(header, v);
            }
        }
    }
    if let Some(a) = out.accept {
        headers.insert(http::header::ACCEPT, HeaderValue::from_static(a));
    }
    if let Some(c) = out.content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(c));
    }
    Ok(req)
}

/// Copies the client's headers by the rules above; returns the client's
/// own `X-Forwarded-For`, which the gateway appends to.
fn copy_client_headers<'c>(
    client: &'c HeaderMap,
    principal: &Option<(&HeaderName, &str)>,
    keep_credentials: bool,
    headers: &mut HeaderMap,
) -> Option<&'c HeaderValue> {
    let named = connection_named(client);
    let credential = |n: &HeaderName| {
        n == http::header::AUTHORIZATION || n == "x-api-key" || n == "proxy-authorization"
    };
    let mut prior_xff = None;
    for (name, value) in client {
        // `x_mcp_principal` is `x-mcp-principal` to many servers.
        let dashed = match name.as_str() {
            n if n.contains('_') => std::borrow::Cow::Owned(n.replace('_', "-")),
            n => std::borrow::Cow::Borrowed(n),
        };
        let dashed = dashed.as_ref();
        let dropped = REQUEST_DROP.contains(&dashed) && !(keep_credentials && credential(name));
        let owned = principal.is_some_and(|(h, _)| h.as_str() == dashed);
        if dropped || owned || named.contains(name) {
            continue;
        }
        if dashed == "x-forwarded-for" {
            if name == "x-forwarded-for" {
                prior_xff = Some(value);
            }
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    prior_xff
}

/// Header names a `Connection:` header lists (they are hop-by-hop too).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// The backend's response headers the client may see, by the same rules.
pub fn response_headers(from: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    let named = connection_named(from);
    from.iter()
        .filter(move |(n, _)| !RESPONSE_DROP.contains(&n.as_str()) && !named.contains(n))
}

/// Whether a response is an event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"))
}

/// A backend response body, read frame by frame with an idle deadline that
/// moves on every byte received (so a quiet but alive stream lives, a hung
/// backend does not hold the request forever).
pub struct Frames {
    body: Incoming,
    idle: Duration,
    deadline: Instant,
    /// Bytes read and handed back ([`Frames::unread`]): they come first.
    unread: Option<Bytes>,
    /// The stream's hold on a shared HTTP/2 connection, if it has one:
    /// kept for its `Drop` (declared after `body`, so it is let go after it).
    _lease: Option<Lease>,
}

impl Frames {
    fn new(body: Incoming, idle: Duration, lease: Option<Lease>) -> Self {
        Self {
            body,
            idle,
            deadline: Instant::now() + idle,
            unread: None,
            _lease: lease,
        }
    }

    /// Puts bytes read from the front of the body back (they are the next read).
    pub fn unread(&mut self, bytes: Bytes) {
        self.unread = (!bytes.is_empty()).then_some(bytes);
    }

    /// The declared length of the body, if the backend gave one.
    pub fn exact_len(&self) -> Option<u64> {
        let rest = hyper::body::Body::size_hint(&self.body).exact();
        match &self.unread {
            Some(b) => rest.map(|r| r + b.len() as u64),
            None => rest,
        }
    }

    fn take(&mut self, frame: Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>) -> Step {
        match frame {
            None => Step::End,
            Some(Err(e)) => Step::Failed(UpstreamError::Failed(e.to_string())),
            Some(Ok(frame)) => {
                self.deadline = Instant::now() + self.idle;
                match frame.into_data() {
                    Ok(data) => Step::Data(data),
                    Err(_) => Step::Empty, // trailers: nothing to relay
                }
            }
        }
    }

    /// The next bytes; `Ok(None)` at the end. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        if let Some(bytes) = self.unread.take() {
            return Ok(Some(bytes));
        }
        loop {
            let frame = tokio::time::timeout_at(self.deadline, self.body.frame())
                .await
                .map_err(|_| UpstreamError::Timeout(self.idle))?;
            match self.take(frame) {
                Step::Data(d) => return Ok(Some(d)),
                Step::End => return Ok(None),
                Step::Failed(e) => return Err(e),
                Step::Empty => continue,
            }
        }
    }

    /// What is already here without waiting: `None` if the next frame has not arrived.
    pub fn next_ready(&mut self) -> Option<Result<Option<Bytes>, UpstreamError>> {
        if let Some(bytes) = self.unread.take() {
            return Some(Ok(Some(bytes)));
        }
        loop {
            let frame = self.body.frame().now_or_never()?;
            match self.take(frame) {
                Step::Data(d) => return Some(Ok(Some(d))),
                Step::End => return Some(Ok(None)),
                Step::Failed(e) => return Some(Err(e)),
                Step::Empty => continue,
            }
        }
    }

    /// Reads the whole body, refusing more than `cap` bytes.
    pub async fn read_all(&mut self, cap: usize) -> Result<Bytes, UpstreamError> {
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.next().await? {
            if buf.len() + chunk.len() > cap {
                return Err(UpstreamError::Failed(format!(
                    "backend response over {cap} bytes"
                )));
            }
            if buf.is_empty() && self.exact_len() == Some(0) {
                return Ok(chunk); // the whole body came in one frame
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

enum Step {
    Data(Bytes),
    Empty,
    End,
    Failed(UpstreamError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_forwarding_headers_and_no_hop_by_hop_or_credentials() {
        let mut client = HeaderMap::new();
        client.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        client.insert("x-secret-hop", HeaderValue::from_static("1"));
        client.insert("authorization", HeaderValue::from_static("Bearer abc"));
        client.insert("x-api-key", HeaderValue::from_static("k"));
        client.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        client.insert("host", HeaderValue::from_static("gateway.example"));
        client.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-06-18"),
        );
        client.insert("mcp-session-id", HeaderValue::from_static("client-token"));
        let fwd = Forwarded {
            client_ip: Some("127.0.0.9".into()),
            tls: true,
        };
        let req = build_request(
            "127.0.0.1:9000".parse().unwrap(),
            Outgoing {
                method: http::Method::POST,
                path: "/mcp?x=1",
                client_headers: Some(&client),
                session: Some("backend-sid"),
                protocol_version: None,
                mcp: None,
                accept: None,
                content_type: None,
                body: Bytes::new(),
                forwarded: &fwd,
                principal: None,
                keep_credentials: false,
                shared: false,
            },
        )
        .unwrap();
        let h = req.headers();
        assert_eq!(req.uri(), "http://127.0.0.1:9000/mcp?x=1");
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("authorization").is_none());
        assert!(h.get("x-api-key").is_none());
        assert!(
            h.get("host").is_none(),
            "hyper sets Host from the backend's address"
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["mcp-session-id"], "backend-sid");
        assert_eq!(h["mcp-protocol-version"], "2025-06-18");
    }

    #[test]
    fn headers_the_gateway_owns_are_dropped_in_every_spelling() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("x-mcp-principal", "forged"),
            ("x_mcp_principal", "forged"),
            ("x-mcp_principal", "forged"),
            ("x_api_key", "k"),
            ("x_forwarded_for", "10.9.9.9"),
            ("x_forwarded_proto", "https"),
            ("forwarded", "for=10.9.9.9;host=evil.example"),
            ("x-real-ip", "10.9.9.9"),
            ("x_real_ip", "10.9.9.9"),
            ("x-forwarded-host", "evil.example"),
            ("x-custom_thing", "kept"),
        ] {
            client.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        let fwd = Forwarded {
            client_ip: Some("127.0.0.9".into()),
            tls: false,
        };
        let principal = HeaderName::from_static("x-mcp-principal");
        let req = build_request(
            "127.0.0.1:9000".parse().unwrap(),
            Outgoing {
                client_headers: Some(&client),
                principal: Some((&principal, "key:alice")),
                ..Outgoing::own(http::Method::POST, "/mcp", &fwd)
            },
        )
        .unwrap();
        let h = req.headers();
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(h.get_all("x-mcp-principal").iter().count(), 1, "{names:?}");
        assert_eq!(h["x-mcp-principal"], "key:alice");
        assert_eq!(h["x-forwarded-for"], "127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-custom_thing"], "kept");
        for gone in [
            "x_mcp_principal",
            "x-mcp_principal",
            "x_api_key",
            "x_forwarded_for",
            "x_forwarded_proto",
            "forwarded",
            "x-real-ip",
            "x_real_ip",
            "x-forwarded-host",
        ] {
            assert!(
                h.get(gone).is_none(),
                "{gone} reached the backend: {names:?}"
            );
        }
    }

    #[test]
    fn responses_lose_hop_by_hop_and_connection_named_headers() {
        let mut from = HeaderMap::new();
        from.insert("connection", HeaderValue::from_static("x-internal"));
        from.insert("x-internal", HeaderValue::from_static("1"));
        from.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        from.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        let kept: Vec<_> = response_headers(&from).map(|(n, _)| n.as_str()).collect();
        assert_eq!(kept, vec!["content-type"]);
        assert!(is_event_stream(&from));
    }
}
