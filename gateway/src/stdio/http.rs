//! The host's side of Streamable HTTP, as the gateway's exchange speaks it
//! (HTTP/1.1 on 127.0.0.1): `POST /mcp` (a request's answer as JSON, or as
//! an event stream when the server has more to say first), `GET /mcp` (the
//! session's server stream), `DELETE /mcp`, and a readiness probe on any
//! other `GET` path.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;

use super::process::{Busy, Next, Proc};
use super::routes::{self, Kind, Refused, Routed};
use super::{Exit, HOST_KEY_HEADER, Refusal, StdioHost};
use crate::reject::{SERVER_ERROR, SESSION_NOT_FOUND};
use crate::upstream::SESSION_HEADER;

type Body = UnsyncBoxBody<Bytes, Cut>;

/// A response cut short: the process went away before its answer, so the
/// gateway sees a lost exchange (and applies its replay rules).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Cut(&'static str);

const GONE: Cut = Cut("the stdio server went away before answering");
/// Written into a request's event stream while the server is working.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";
/// Messages queued for one client stream.
const STREAM_QUEUE: usize = 16;

/// Serves one connection from the gateway.
pub async fn serve(host: Arc<StdioHost>, stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| Arc::clone(&host).handle(req));
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

impl StdioHost {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, Cut> {
        if req.method() == Method::GET && req.uri().path() != "/mcp" {
            let ready = !self.stopping.load(std::sync::atomic::Ordering::Relaxed);
            let status = if ready { 200 } else { 503 };
            return Ok(json(
                status,
                Bytes::from_static(b"{\"status\":\"ok\"}"),
                None,
            ));
        }
        let key = req
            .headers()
            .get(HOST_KEY_HEADER)
            .map(HeaderValue::as_bytes);
        let trusted =
            key.is_some_and(|k| bool::from(subtle::ConstantTimeEq::ct_eq(k, self.key.as_bytes())));
        if !trusted {
            return Ok(error(
                403,
                None,
                -32600,
                "only the gateway reaches its stdio host",
            ));
        }
        let session = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match (req.method().clone(), session) {
            (Method::POST, session) => {
                let limit = self.shared.max_line();
                match Limited::new(req.into_body(), limit).collect().await {
                    Ok(body) => self.post(session, body.to_bytes()).await,
                    Err(_) => Ok(error(413, None, -32600, "request body too large")),
                }
            }
            (Method::GET, Some(sid)) => Ok(self.get(&sid)),
            (Method::DELETE, Some(sid)) => Ok(self.delete(&sid)),
            (Method::GET | Method::DELETE, None) => {
                Ok(error(400, None, -32600, "an Mcp-Session-Id is needed"))
            }
            _ => Ok(error(405, None, -32600, "use POST, GET or DELETE")),
        }
    }

    async fn post(
        self: &Arc<Self>,
        session: Option<String>,
        body: Bytes,
    ) -> Result<Response<Body>, Cut> {
        let Some((kind, peek)) = routes::peek(&body) else {
            return Ok(error(
                400,
                None,
                -32600,
                "not a JSON-RPC message (a stdio server takes one message per request, no batches)",
            ));
        };
        let progress = peek.asks_progress();
        let line = one_line(&body);
        let Some(sid) = session else {
            return match kind {
                Kind::Request { id, method } if method == "initialize" => {
                    self.initialize(id, progress, line).await
                }
                kind => {
                    let text = format!(
                        "pool {} runs a stdio server per session: send initialize first",
                        self.shared.pool
                    );
                    Ok(error(400, request_id(&kind), -32600, &text))
                }
            };
        };
        let Some(proc) = self.sessions.get(&sid).map(|p| Arc::clone(&p)) else {
            return Ok(not_found(request_id(&kind)));
        };
        match kind {
            Kind::Request { id, .. } => call(proc, id, progress, line, None).await,
            // A notification, or the client's answer to a server request.
            kind if proc.send(line).await => {
                let _ = kind;
                Ok(empty(202))
            }
            kind => Ok(not_found(request_id(&kind))),
        }
    }

    /// A new session: a process for it, and its answer to `initialize`.
    async fn initialize(
        self: &Arc<Self>,
        id: String,
        progress: Option<String>,
        line: Bytes,
    ) -> Result<Response<Body>, Cut> {
        let proc = match self.acquire().await {
            Ok(p) => p,
            Err(Refusal::Full) => return Ok(self.full(&id)),
            Err(Refusal::Spawn(e)) => {
                let text = format!(
                    "the stdio server of pool {} could not be started: {e}",
                    self.shared.pool
                );
                return Ok(error(200, Some(&id), SERVER_ERROR, &text));
            }
        };
        let sid = self
            .session_id()
            .ok_or(Cut("no randomness for a session id"))?;
        let opened = Opened {
            host: Arc::clone(self),
            sid,
        };
        match call(Arc::clone(&proc), id.clone(), progress, line, Some(opened)).await {
            Err(_) if !proc.answered() => Ok(self.start_failed(&proc, &id).await),
            other => other,
        }
    }

    /// `max_processes` are running: 503, come back shortly.
    fn full(&self, id: &str) -> Response<Body> {
        let text = format!(
            "pool {} runs at most {} stdio server processes and all are in use; retry shortly",
            self.shared.pool, self.max_processes
        );
        let mut r = error(503, Some(id), SERVER_ERROR, &text);
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }

    /// The process exited before it said anything: a clear error for the client.
    async fn start_failed(&self, proc: &Proc, id: &str) -> Response<Body> {
        let status = proc
            .exit_status(std::time::Duration::from_secs(1))
            .await
            .unwrap_or_else(|| "unknown status".into());
        let text = format!(
            "the stdio server of pool {} exited before answering initialize ({status}); the gateway's log has its stderr",
            self.shared.pool
        );
        error(200, Some(id), SERVER_ERROR, &text)
    }

    /// The session's server stream: what waited for it, then what comes.
    fn get(&self, sid: &str) -> Response<Body> {
        let Some(proc) = self.sessions.get(sid).map(|p| Arc::clone(&p)) else {
            return not_found(None);
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE * 4);
        let Some(backlog) = proc.attach_get(tx) else {
            return not_found(None);
        };
        let busy = proc.busy();
        let first = futures::stream::iter(backlog.into_iter().map(|l| Ok(event(&l))));
        let rest = futures::stream::unfold((rx, busy), |(mut rx, busy)| async move {
            let routed = rx.recv().await?;
            Some((Ok(event(&routed.line)), (rx, busy)))
        });
        sse(first.chain(rest), None)
    }

    fn delete(&self, sid: &str) -> Response<Body> {
        match self.sessions.remove(sid) {
            Some((_, proc)) => {
                proc.end(Exit::Deleted);
                empty(200)
            }
            None => not_found(None),
        }
    }
}

/// A session opened by the request being answered: it exists once its
/// process has said something, never before.
struct Opened {
    host: Arc<StdioHost>,
    sid: String,
}

impl Opened {
    /// Records the session; `None` when its process is already ending.
    fn bind(self, proc: &Arc<Proc>) -> Option<String> {
        let _ = proc.session.set(self.sid.clone());
        self.host
            .sessions
            .insert(self.sid.clone(), Arc::clone(proc));
        if proc.is_ending() {
            self.host.sessions.remove(&self.sid);
            return None;
        }
        Some(self.sid)
    }
}

/// One request to a process: its line out, its answer (and whatever the
/// server sends before it) back.
async fn call(
    proc: Arc<Proc>,
    id: String,
    progress: Option<String>,
    line: Bytes,
    opened: Option<Opened>,
) -> Result<Response<Body>, Cut> {
    let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
    match proc.register(id.clone(), progress, tx) {
        Ok(()) => {}
        Err(Refused::Duplicate) => {
            return Ok(error(
                200,
                Some(&id),
                -32600,
                "a request with this id is in flight",
            ));
        }
        Err(Refused::Dead) => return Ok(not_found(Some(&id))),
    }
    let busy = proc.busy();
    let since = proc.now_ms();
    if !proc.send(line).await {
        proc.unregister(&id);
        return Ok(not_found(Some(&id)));
    }
    let first = proc.next(&mut rx, since).await;
    let first = match first {
        Next::Routed(r) if r.last => {
            let session = match opened {
                Some(o) if routes::is_result(&r.line) => o.bind(&proc),
                Some(_) => {
                    proc.end(Exit::Deleted); // no session: as if its client ended it
                    None
                }
                None => None,
            };
            return Ok(json(200, r.line, session.as_deref()));
        }
        Next::Routed(r) => event(&r.line),
        Next::Quiet => Bytes::from_static(KEEPALIVE),
        Next::Closed => return Err(GONE),
    };
    let session = match opened {
        Some(o) => Some(o.bind(&proc).ok_or(GONE)?),
        None => None,
    };
    let state = Waiting {
        rx,
        proc,
        _busy: busy,
        since,
        done: false,
    };
    let rest = futures::stream::unfold(state, Waiting::next);
    let body = futures::stream::once(async move { Ok(first) }).chain(rest);
    Ok(sse(body, session.as_deref()))
}

/// A request's event stream after its first event.
struct Waiting {
    rx: mpsc::Receiver<Routed>,
    proc: Arc<Proc>,
    _busy: Busy,
    since: u64,
    done: bool,
}

impl Waiting {
    async fn next(mut self) -> Option<(Result<Bytes, Cut>, Self)> {
        if self.done {
            return None;
        }
        let item = match self.proc.next(&mut self.rx, self.since).await {
            Next::Routed(r) => {
                self.done = r.last;
                Ok(event(&r.line))
            }
            Next::Quiet => Ok(Bytes::from_static(KEEPALIVE)),
            Next::Closed => {
                self.done = true;
                Err(GONE)
            }
        };
        Some((item, self))
    }
}

/// A message as one line: JSON allows newlines only between tokens, where
/// a space does as well.
fn one_line(body: &Bytes) -> Bytes {
    if !body.contains(&b'\n') && !body.contains(&b'\r') {
        return body.clone();
    }
    let v: Vec<u8> = body
        .iter()
        .map(|b| if *b == b'\n' || *b == b'\r' { b' ' } else { *b })
        .collect();
    Bytes::from(v)
}

fn request_id(kind: &Kind) -> Option<&str> {
    match kind {
        Kind::Request { id, .. } => Some(id),
        _ => None,
    }
}

fn event(line: &[u8]) -> Bytes {
    mcp_sse::format(
        Some("message"),
        None,
        std::str::from_utf8(line).unwrap_or_default(),
    )
}

fn full_body(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn json(status: u16, body: Bytes, session: Option<&str>) -> Response<Body> {
    let mut r = Response::new(full_body(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(SESSION_HEADER, v);
    }
    r
}

fn sse<S>(body: S, session: Option<&str>) -> Response<Body>
where
    S: futures::Stream<Item = Result<Bytes, Cut>> + Send + 'static,
{
    let frames = body.map(|item| item.map(Frame::data));
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert(SESSION_HEADER, v);
    }
    r
}

fn empty(status: u16) -> Response<Body> {
    let mut r = Response::new(full_body(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r
}

/// A JSON-RPC error answer (`id`: the request's id as JSON text).
fn error(status: u16, id: Option<&str>, code: i64, message: &str) -> Response<Body> {
    let error = json!({"code": code, "message": message});
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{},"error":{error}}}"#,
        id.unwrap_or("null")
    );
    json(status, Bytes::from(body), None)
}

fn not_found(id: Option<&str>) -> Response<Body> {
    error(404, id, SESSION_NOT_FOUND, "Session not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_go_to_a_process_on_one_line() {
        let body = Bytes::from_static(b"{\n  \"jsonrpc\": \"2.0\",\r\n  \"method\": \"x\"\n}");
        let line = one_line(&body);
        assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["method"], "x");
        let flat = Bytes::from_static(b"{\"a\":1}");
        assert_eq!(
            one_line(&flat).as_ptr(),
            flat.as_ptr(),
            "no copy when already one line"
        );
    }
}
