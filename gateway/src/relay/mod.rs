//! Writing to the client, for both transports. A [`Sink`] is the client's
//! side of an exchange: the session layer hands it each backend answer
//! ([`Answer`]) and every refusal ([`refuse`], the one way an error reaches
//! a client). [`Downstream`] is the Streamable HTTP sink (an HTTP response
//! under way); the legacy bridge's sink queues events for the client's SSE
//! stream. Every backend message passes through one [`Pass`]: whole events
//! cut by the `sse` crate, the answer to the request found, the client's
//! shape applied (the `tools/list` filter, server-request ids marked).
//!
//! Rules of the Streamable HTTP relay:
//!
//! - Events are forwarded whole (the backend's bytes, untouched unless the
//!   shape changes the message), so the client's stream is always at an
//!   event boundary between writes: the gateway can add a comment keep-alive
//!   whenever the backend is quiet, and a backend that dies mid-event never
//!   leaves half an event behind.
//! - Nothing sent yet and the body already complete (the usual POST answer:
//!   one event, then the end): one write with `Content-Length`, so the client
//!   sees the end of the body together with the event and reuses its
//!   connection. Pingora's chunked writer sends the final empty chunk in a
//!   separate write, which clients that stop reading after the JSON-RPC
//!   response miss, closing the connection instead.
//! - Otherwise the header goes out and each batch of ready events follows as
//!   it arrives, with the end marker in the same call when the backend has
//!   finished.
//! - A backend failure is reported as [`Failure::BackendLost`], saying
//!   whether the client's event stream is already open; the caller moves the
//!   session and continues, or refuses — before the header a whole error
//!   response, after it an error event for the request, then the end.
//! - Every write has `write_timeout`: a client that stops reading is dropped.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use mcp_sse::{Event, Splitter};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::value::RawValue;

pub mod collect;
pub mod queue;

pub use collect::Collect;
pub use queue::Queue;

use crate::asks::{self, Tag};
use crate::metrics::Metrics;
use crate::policy::jsonrpc;
use crate::reject::Reject;
use crate::respond;
use crate::state::{Phase, State};
use crate::upstream::{self, Frames, SESSION_HEADER, UpstreamError};

/// Replaces a message on its way to the client (`None`: unchanged), e.g. a
/// `tools/list` answer without the tools the client may not call.
pub type Rewrite = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Takes a message out of the answer before the client sees it, and says
/// what the client gets instead as its answer (the stream then ends for the
/// client; the backend's rest is in `Seen::rest`). The version bridge uses
/// it for the answer in another revision's shape, and for a server request
/// a stateless client takes only as its call's answer.
pub type Divert<'a> = dyn Fn(&str) -> Option<String> + Sync + 'a;

/// How messages are changed on their way to the client: the caller's
/// [`Rewrite`], the mark on server requests naming the backend session
/// that asked ([`asks`]), and a [`Divert`].
#[derive(Clone, Copy, Default)]
pub struct Shape<'a> {
    pub rewrite: Option<&'a Rewrite>,
    pub asks: Option<Tag>,
    pub divert: Option<&'a Divert<'a>>,
}

impl Shape<'_> {
    /// The message to send instead of `data` (`None`: `data` unchanged).
    pub fn apply(&self, data: &str) -> Option<String> {
        let rewritten = self.rewrite.and_then(|r| r(data));
        match self.asks {
            Some(tag) => asks::mark(rewritten.as_deref().unwrap_or(data), tag).or(rewritten),
            None => rewritten,
        }
    }
}

/// Largest single SSE event taken from a backend.
pub const MAX_EVENT: usize = 8 * 1024 * 1024;
/// Largest non-SSE response body read whole before it is sent on.
pub const MAX_WHOLE_BODY: usize = 16 * 1024 * 1024;
/// Set on an answer whose session moved to another backend on the way.
pub const MOVED_HEADER: &str = "x-mcp-gateway-moved";

/// How an exchange ended badly.
#[derive(Debug)]
pub enum Failure {
    /// Refuse the request with this (see [`refuse`]).
    Reject(Reject),
    /// The client's side failed, or the response must be cut: end the
    /// client's stream as broken.
    Abort(Box<pingora::Error>),
    /// The backend failed before the answer was complete. `open`: the
    /// client's event stream is open (its header went out) and is at an
    /// event boundary, so the caller may continue it from another backend.
    BackendLost { open: bool },
}

impl From<Reject> for Failure {
    fn from(r: Reject) -> Self {
        Failure::Reject(r)
    }
}

pub fn abort(why: &str) -> Failure {
    Failure::Abort(pingora::Error::explain(
        pingora::ErrorType::WriteError,
        why.to_owned(),
    ))
}

fn lost(e: UpstreamError, open: bool) -> Failure {
    tracing::warn!(error = %e, "backend failed mid-response");
    Failure::BackendLost { open }
}

/// One backend answer on its way to the client.
pub struct Answer<'a> {
    pub parts: http::response::Parts,
    pub frames: Frames,
    /// What happens to each of its messages.
    pub pass: Pass<'a>,
    /// An answer to `GET`: a server stream, never ended by the relay (when
    /// the backend ends it, the caller decides whether to open it again).
    pub server_stream: bool,
    /// The client's id for the session this answer opened.
    pub session: Option<String>,
    /// The session moved to another backend on the way.
    pub moved: bool,
}

/// The client's side of an exchange.
pub trait Sink: Send {
    /// The client's own request headers, passed on to the backend by the
    /// header rules of `upstream.rs`; `None` when the gateway speaks for the
    /// client (the legacy bridge).
    fn client_headers(&self) -> Option<&HeaderMap>;
    /// Relays one backend answer.
    fn relay(&mut self, answer: Answer<'_>) -> impl Future<Output = Result<Seen, Failure>> + Send;
    /// Writes a refusal where the client reads it (called by [`refuse`] only).
    fn write_refusal(
        &mut self,
        reject: &Reject,
        id: Option<&RawValue>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Ends an open stream cleanly.
    fn finish(&mut self) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Writes an answer the gateway makes itself: a JSON-RPC message, or
    /// `None` when there is nothing to say (a notification or an answer
    /// was taken: 202); `session` is the client's id of a session it opens.
    fn reply(
        &mut self,
        answer: Option<Bytes>,
        session: Option<&str>,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// The one way a refusal reaches a client, before the header or mid-stream:
/// counted once, written by the client's sink with the JSON-RPC error's
/// `data` (see `respond.rs` for the two forms).
pub async fn refuse<S: Sink>(
    sink: &mut S,
    metrics: &Metrics,
    reject: &Reject,
    id: Option<&RawValue>,
) -> Result<(), Failure> {
    metrics.reject(reject.reason());
    tracing::debug!(status = reject.status(), reason = reject.reason().name(), %reject, "refused");
    sink.write_refusal(reject, id).await
}

/// What a relay saw, for the caller's bookkeeping.
#[derive(Default)]
pub struct Seen {
    /// Events carrying a message (not only an id, a retry hint or comments).
    pub messages: usize,
    /// The response to the client's request went by (the client's stream is complete).
    pub answered: bool,
    /// The backend's stream, when the client's ended before it (see [`drain`]).
    pub rest: Option<Frames>,
    /// The answer was a [`Divert`]'s; what followed the diverted message
    /// in the bytes at hand, unread (to go back in front of `rest`).
    pub diverted: Option<Bytes>,
}

/// What happens to the messages of one backend answer, for both
/// transports: events cut whole (the one SSE reader of the gateway), the
/// answer to the request found and shown to the inspector, the shape applied.
pub struct Pass<'a> {
    splitter: Splitter,
    /// The id of the request answered (its JSON text); `None` for a server
    /// stream or a batch.
    answer_to: Option<&'a str>,
    shape: Shape<'a>,
    /// Sees the answer (tool hints from `tools/list`, the version `initialize` settled).
    inspect: Option<&'a mut (dyn FnMut(&str) + Send)>,
    /// Sees every message (a federation learns a member's lists changed).
    notice: Option<&'a (dyn Fn(&str) + Sync)>,
    pub seen: Seen,
}

/// One whole event, as the client is to get it.
pub struct Relayable<'e> {
    event: &'e Event,
    message: Option<Cow<'e, str>>,
    replaced: Option<String>,
}

impl Relayable<'_> {
    /// The event's bytes: the backend's own, or re-written around the new message.
    pub fn write_to(&self, out: &mut BytesMut) {
        match &self.replaced {
            Some(new) => out.extend_from_slice(&mcp_sse::format(
                self.event.event_type().as_deref(),
                self.event.id().as_deref(),
                new,
            )),
            None => out.extend_from_slice(self.event.raw()),
        }
    }

    /// The message it carries, shaped (none for keep-alives and priming events).
    pub fn message(&self) -> Option<&str> {
        self.replaced.as_deref().or(self.message.as_deref())
    }
}

impl<'a> Pass<'a> {
    pub fn new(
        answer_to: Option<&'a str>,
        shape: Shape<'a>,
        inspect: Option<&'a mut (dyn FnMut(&str) + Send)>,
    ) -> Self {
        Self {
            splitter: Splitter::new(MAX_EVENT),
            answer_to,
            shape,
            inspect,
            notice: None,
            seen: Seen::default(),
        }
    }

    /// Shows every message to `notice` too.
    pub fn with_notice(mut self, notice: Option<&'a (dyn Fn(&str) + Sync)>) -> Self {
        self.notice = notice;
        self
    }

    /// Whether the client waits for one answer (a request, not a stream).
    pub fn awaits_answer(&self) -> bool {
        self.answer_to.is_some()
    }

    fn answer_seen(&mut self, data: &str) {
        self.seen.answered = true;
        if let Some(f) = self.inspect.as_mut() {
            f(data);
        }
    }

    /// One message of an event stream: notes whether it is the answer;
    /// returns what to send instead (`None`: unchanged).
    fn message(&mut self, data: &str) -> Option<String> {
        if let Some(instead) = self.diverted(data) {
            return Some(instead);
        }
        self.see(data);
        self.shape.apply(data)
    }

    /// What the [`Divert`] gives the client in place of `data` (as its
    /// answer, shaped), if it takes `data`.
    fn diverted(&mut self, data: &str) -> Option<String> {
        if self.seen.answered {
            return None;
        }
        let instead = self.shape.divert.and_then(|d| d(data))?;
        self.seen.diverted = Some(Bytes::new());
        self.seen.messages += 1;
        self.answer_seen(&instead);
        Some(self.shape.apply(&instead).unwrap_or(instead))
    }

    /// A message read whole from an answer the gateway keeps: counted, and
    /// shown to the inspector if it is the answer; says whether it is.
    pub fn see(&mut self, data: &str) -> bool {
        self.seen.messages += 1;
        if let Some(notice) = self.notice {
            notice(data);
        }
        let is_answer = match self.answer_to {
            Some(id) => !self.seen.answered && jsonrpc::answers(data, id),
            None => false,
        };
        if is_answer {
            self.answer_seen(data);
        }
        is_answer
    }

    /// A JSON body read whole (one message, or a batch): the answer itself.
    pub fn whole(&mut self, text: &str) -> Option<String> {
        if let Some(instead) = self.diverted(text) {
            return Some(instead);
        }
        self.seen.messages += 1;
        if let Some(notice) = self.notice {
            notice(text);
        }
        self.answer_seen(text);
        self.shape.apply(text)
    }

    /// Feeds bytes of an event stream; `emit` gets each whole event.
    pub fn push(
        &mut self,
        chunk: &[u8],
        emit: &mut dyn FnMut(Relayable<'_>),
    ) -> Result<(), UpstreamError> {
        let mut events = Vec::new();
        self.splitter
            .push_into(chunk, &mut events)
            .map_err(|e| UpstreamError::Failed(e.to_string()))?;
        for (i, event) in events.iter().enumerate() {
            let message = event.message();
            let replaced = message.as_deref().and_then(|m| self.message(m));
            emit(Relayable {
                event,
                message,
                replaced,
            });
            if self.seen.diverted.is_some() {
                // The client's answer is made: what follows stays unread.
                let mut rest = BytesMut::new();
                for later in &events[i + 1..] {
                    rest.extend_from_slice(later.raw());
                }
                rest.extend_from_slice(&self.splitter.take_pending());
                self.seen.diverted = Some(rest.freeze());
                break;
            }
        }
        Ok(())
    }

    /// The backend session the answer comes from (the mark on its requests).
    pub fn asker(&self) -> Option<Tag> {
        self.shape.asks
    }

    /// Bytes held for an event not yet complete.
    pub fn pending(&self) -> usize {
        self.splitter.pending()
    }
}

/// The client side of one Streamable HTTP request.
pub struct Downstream<'a> {
    pub session: &'a mut Session,
    write_timeout: Duration,
    keepalive: Duration,
    /// The gateway's phase: server streams end cleanly when it closes.
    pub(crate) phase: tokio::sync::watch::Receiver<Phase>,
    /// The response header went out.
    open: bool,
    /// The configured resource (`[auth] resource`), for the challenge of a
    /// refusal about credentials.
    resource: Option<String>,
}

impl<'a> Downstream<'a> {
    pub fn new(session: &'a mut Session, state: &State) -> Self {
        let limits = state.limits();
        Self {
            session,
            write_timeout: limits.write_timeout,
            keepalive: limits.sse_keepalive,
            phase: state.phases(),
            open: false,
            resource: None,
        }
    }

    /// Names the configured resource in credential challenges.
    pub fn with_resource(mut self, resource: Option<String>) -> Self {
        self.resource = resource;
        self
    }

    async fn write_head(&mut self, head: ResponseHeader, end: bool) -> Result<(), Failure> {
        self.open = true;
        match tokio::time::timeout(
            self.write_timeout,
            self.session.write_response_header(Box::new(head), end),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Abort(e)),
            Err(_) => Err(abort("client stopped reading")),
        }
    }

    async fn write(&mut self, data: Option<Bytes>, end: bool) -> Result<(), Failure> {
        match tokio::time::timeout(
            self.write_timeout,
            self.session.write_response_body(data, end),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Abort(e)),
            Err(_) => Err(abort("client stopped reading")),
        }
    }

    /// Sends the header and the first bytes of a stream the gateway writes itself.
    pub async fn start(&mut self, head: ResponseHeader, first: Bytes) -> Result<(), Failure> {
        self.write_head(head, false).await?;
        self.write(Some(first), false).await
    }

    /// More bytes of a stream the gateway writes itself.
    pub async fn send(&mut self, data: Bytes) -> Result<(), Failure> {
        self.write(Some(data), false).await
    }

    /// A complete response whose body is in hand: one write.
    pub async fn whole(&mut self, mut head: ResponseHeader, body: Bytes) -> Result<(), Failure> {
        head.insert_header("content-length", body.len().to_string())
            .map_err(Failure::Abort)?;
        self.write_head(head, false).await?;
        let body = (!body.is_empty()).then_some(body);
        self.write(body, true).await
    }

    /// A complete JSON answer of the gateway's own (`{}` bodies, 202s).
    pub async fn json(&mut self, status: u16, body: Bytes) -> Result<(), Failure> {
        self.whole(json_head(status)?, body).await
    }

    /// Opens an event stream to the client (chunked on HTTP/1.1).
    async fn open_stream(&mut self, mut head: ResponseHeader) -> Result<(), Failure> {
        head.insert_header("cache-control", "no-cache")
            .map_err(Failure::Abort)?;
        head.insert_header("x-accel-buffering", "no")
            .map_err(Failure::Abort)?;
        if !self.session.as_downstream().is_http2() {
            head.insert_header("transfer-encoding", "chunked")
                .map_err(Failure::Abort)?;
        }
        self.write_head(head, false).await
    }

    /// The client's response header, from the backend's.
    fn head_for(&self, answer: &Answer<'_>) -> Result<ResponseHeader, Failure> {
        let mut status = answer.parts.status.as_u16();
        // rmcp answers a session DELETE with 202; clients expect 200/204.
        if self.session.req_header().method == http::Method::DELETE && status == 202 {
            status = 200;
        }
        let mut head = ResponseHeader::build(status, Some(8)).map_err(Failure::Abort)?;
        for (name, value) in upstream::response_headers(&answer.parts.headers) {
            head.append_header(name.clone(), value.clone())
                .map_err(Failure::Abort)?;
        }
        if answer.moved {
            // Says only that the session moved (for clients' diagnostics and
            // benchmarks), never where.
            head.insert_header(MOVED_HEADER, "1")
                .map_err(Failure::Abort)?;
        }
        if let Some(token) = &answer.session {
            head.insert_header(SESSION_HEADER, token.as_str())
                .map_err(Failure::Abort)?;
        }
        Ok(head)
    }
}

impl Sink for Downstream<'_> {
    fn client_headers(&self) -> Option<&HeaderMap> {
        Some(&self.session.req_header().headers)
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        let head = if self.open {
            None
        } else {
            Some(self.head_for(&answer)?)
        };
        let Answer {
            parts,
            frames,
            pass,
            server_stream,
            ..
        } = answer;
        match head {
            _ if upstream::is_event_stream(&parts.headers) => {
                relay_events(self, head, frames, pass, server_stream).await
            }
            Some(head) => relay_plain(self, head, frames, pass).await,
            // A JSON answer from a new backend into a stream already open.
            None => event_then_end(self, frames, pass).await,
        }
    }

    async fn write_refusal(
        &mut self,
        reject: &Reject,
        id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        if !self.open {
            let (session, resource) = (&*self.session, self.resource.as_deref());
            let (head, body) = respond::response(reject, id, || {
                respond::resource_metadata_url(session, resource)
            })
            .map_err(Failure::Abort)?;
            return self.whole(head, body).await;
        }
        if let Some(event) = respond::event(reject, id) {
            self.send(event).await?;
        }
        self.finish().await
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        self.write(None, true).await
    }

    async fn reply(&mut self, answer: Option<Bytes>, session: Option<&str>) -> Result<(), Failure> {
        if self.open {
            if let Some(body) = answer {
                let event = queue::message(&String::from_utf8_lossy(&body));
                self.send(event).await?;
            }
            return self.finish().await;
        }
        let mut head = json_head(if answer.is_some() { 200 } else { 202 })?;
        if let Some(token) = session {
            head.insert_header(SESSION_HEADER, token)
                .map_err(Failure::Abort)?;
        }
        self.whole(head, answer.unwrap_or_default()).await
    }
}

/// The header of a JSON answer the gateway writes itself.
fn json_head(status: u16) -> Result<ResponseHeader, Failure> {
    let mut head = ResponseHeader::build(status, Some(4)).map_err(Failure::Abort)?;
    head.insert_header("content-type", "application/json")
        .map_err(Failure::Abort)?;
    head.insert_header("cache-control", "no-store")
        .map_err(Failure::Abort)?;
    Ok(head)
}

/// A JSON answer read whole, sent as one event into an open stream, which then ends.
async fn event_then_end(
    down: &mut Downstream<'_>,
    mut frames: Frames,
    mut pass: Pass<'_>,
) -> Result<Seen, Failure> {
    let body = frames
        .read_all(MAX_WHOLE_BODY)
        .await
        .map_err(|e| lost(e, true))?;
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if !text.is_empty() {
        let shaped = pass.whole(text);
        let message = shaped.as_deref().unwrap_or(text);
        down.send(mcp_sse::format(Some("message"), None, message))
            .await?;
    }
    down.finish().await?;
    Ok(pass.seen)
}

/// Relays a non-SSE body: whole when its length is known and fits (the
/// pass sees it and may change it), else streamed as it comes.
async fn relay_plain(
    down: &mut Downstream<'_>,
    head: ResponseHeader,
    mut frames: Frames,
    mut pass: Pass<'_>,
) -> Result<Seen, Failure> {
    if frames
        .exact_len()
        .is_some_and(|n| n <= MAX_WHOLE_BODY as u64)
    {
        let body = frames
            .read_all(MAX_WHOLE_BODY)
            .await
            .map_err(|e| lost(e, false))?;
        let body = match pass.whole(&String::from_utf8_lossy(&body)) {
            Some(new) => Bytes::from(new),
            None => body,
        };
        down.whole(head, body).await?;
        return Ok(pass.seen);
    }
    let first = frames.next().await.map_err(|e| lost(e, false))?;
    let Some(first) = first else {
        down.whole(head, Bytes::new()).await?;
        return Ok(pass.seen);
    };
    down.write_head(head, false).await?;
    down.write(Some(first), false).await?;
    loop {
        match frames.next().await {
            Ok(Some(chunk)) => down.write(Some(chunk), false).await?,
            Ok(None) => {
                down.write(None, true).await?;
                return Ok(pass.seen);
            }
            Err(e) => return Err(abort(&e.to_string())),
        }
    }
}

/// Resolves when the gateway starts closing (never, if the watch is gone).
pub async fn closing(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    if phase.wait_for(|p| *p == Phase::Closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Reads a backend stream to its end after the client's response is done,
/// so the backend connection goes back to the pool; bounded in time.
pub fn drain(mut frames: Frames) {
    match frames.next_ready() {
        Some(Ok(None)) | Some(Err(_)) => {}
        _ => {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(Some(_)) = frames.next().await {}
                })
                .await;
            });
        }
    }
}

/// Relays an SSE body event by event, with keep-alives while the backend is
/// quiet.
///
/// For a request (the pass awaits its answer) the response header is held
/// until the first message arrives (at most one keep-alive interval):
/// events carrying only an id or a retry hint wait with it. When that
/// message is the response, which is usual, the client gets the whole
/// answer in one write with `Content-Length`. The client's stream ends as
/// soon as the response has gone by (MCP servers end a POST's stream
/// there); the backend's rest is returned for [`drain`]. For a stream the
/// header goes out at once.
///
/// `head` is `None` when the client's stream is already open (continuing it
/// from another backend after a failover). A `server_stream` (`GET /mcp`)
/// is never ended here: when the backend ends it, the relay reports the
/// backend lost with the client's stream still open, for the caller to
/// continue it.
async fn relay_events(
    down: &mut Downstream<'_>,
    head: Option<ResponseHeader>,
    mut frames: Frames,
    pass: Pass<'_>,
    server_stream: bool,
) -> Result<Seen, Failure> {
    let mut phase = down.phase.clone();
    let every = down.keepalive;
    let mut r = Events {
        down,
        head,
        out: BytesMut::new(),
        pass,
        server_stream,
    };
    if server_stream || !r.pass.awaits_answer() {
        r.open_now().await?;
    }
    let hold_until = tokio::time::Instant::now() + every;
    let mut keepalive = tokio::time::interval(every);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    loop {
        // Wait for bytes, a quiet interval (stream open) or the end of the hold (header held).
        let first = tokio::select! {
            biased;
            _ = closing(&mut phase), if r.server_stream && r.head.is_none() => {
                return r.close_for_shutdown().await;
            }
            next = frames.next() => next,
            _ = keepalive.tick(), if r.head.is_none() => {
                r.down.send(Bytes::from_static(mcp_sse::KEEPALIVE)).await?;
                continue;
            }
            _ = tokio::time::sleep_until(hold_until), if r.head.is_some() => {
                r.open_now().await?;
                r.flush().await?;
                keepalive.reset();
                continue;
            }
        };
        match r.gather(first, &mut frames) {
            Gathered::More => {
                if r.flush_if_due().await? {
                    keepalive.reset();
                }
            }
            Gathered::Ended => return r.end(frames).await,
            Gathered::Failed(e) => return r.failed(e).await,
        }
    }
}

/// What the bytes at hand came to.
enum Gathered {
    /// More may follow.
    More,
    /// The backend finished, or the client's answer went by.
    Ended,
    Failed(UpstreamError),
}

/// The state of one [`relay_events`].
struct Events<'d, 's, 'a> {
    down: &'d mut Downstream<'s>,
    /// The response header, until it is sent.
    head: Option<ResponseHeader>,
    /// Whole events not yet written.
    out: BytesMut,
    pass: Pass<'a>,
    server_stream: bool,
}

impl Events<'_, '_, '_> {
    /// Takes `first` and whatever else is already here, to send it in one write.
    fn gather(
        &mut self,
        first: Result<Option<Bytes>, UpstreamError>,
        frames: &mut Frames,
    ) -> Gathered {
        let mut step = first;
        loop {
            match step {
                Ok(Some(chunk)) => {
                    let out = &mut self.out;
                    if let Err(e) = self.pass.push(&chunk, &mut |ev| ev.write_to(out)) {
                        step = Err(e);
                        continue;
                    }
                    if self.pass.seen.answered {
                        return Gathered::Ended;
                    }
                }
                Ok(None) if self.pass.pending() == 0 => return Gathered::Ended,
                Ok(None) => {
                    step = Err(UpstreamError::Failed(
                        "backend ended its stream mid-event".into(),
                    ));
                    continue;
                }
                Err(e) => return Gathered::Failed(e),
            }
            match frames.next_ready() {
                Some(next) => step = next,
                None => return Gathered::More,
            }
        }
    }

    async fn open_now(&mut self) -> Result<(), Failure> {
        match self.head.take() {
            Some(h) => self.down.open_stream(h).await,
            None => Ok(()),
        }
    }

    async fn flush(&mut self) -> Result<(), Failure> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.down.send(self.out.split().freeze()).await
    }

    /// Writes what is gathered unless the header is still held for a
    /// message; says whether anything was written.
    async fn flush_if_due(&mut self) -> Result<bool, Failure> {
        if self.head.is_some() && self.pass.seen.messages == 0 {
            return Ok(false); // only ids and retry hints so far: keep holding the header
        }
        self.open_now().await?;
        let wrote = !self.out.is_empty();
        self.flush().await?;
        Ok(wrote)
    }

    /// The gateway is going away: the server stream ends cleanly so the
    /// client reopens it (on another replica). The connection closes right
    /// after the last chunk: kept alive, the client could send its next
    /// request on it just as the listener shuts, and see it dropped unanswered.
    async fn close_for_shutdown(mut self) -> Result<Seen, Failure> {
        self.down.session.set_keepalive(None);
        self.flush().await?;
        self.down.finish().await?;
        Ok(self.pass.seen)
    }

    /// The backend failed: what whole events arrived go out first, and the
    /// stream stays at an event boundary for the caller to continue or end.
    async fn failed(mut self, e: UpstreamError) -> Result<Seen, Failure> {
        if self.head.is_some() {
            if self.pass.seen.messages == 0 {
                return Err(lost(e, false));
            }
            self.open_now().await?;
        }
        self.flush().await?;
        Err(lost(e, true))
    }

    /// The backend finished (or the answer went by).
    async fn end(mut self, frames: Frames) -> Result<Seen, Failure> {
        if self.server_stream {
            self.open_now().await?;
            self.flush().await?;
            tracing::debug!("the backend ended a server stream");
            return Err(Failure::BackendLost { open: true });
        }
        if !self.pass.seen.answered && self.pass.awaits_answer() {
            // The backend closed a POST's stream without its answer.
            let why = UpstreamError::Failed("stream ended without the answer".into());
            if self.head.is_some() {
                return Err(lost(why, false));
            }
            self.flush().await?;
            return Err(lost(why, true));
        }
        let data = self.out.split().freeze();
        match self.head.take() {
            Some(head) => self.down.whole(head, data).await?,
            None => {
                self.down
                    .write((!data.is_empty()).then_some(data), true)
                    .await?
            }
        }
        let mut seen = self.pass.seen;
        if seen.answered {
            seen.rest = Some(frames);
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_follows_a_diverted_message_stays_unread() {
        let divert = |data: &str| data.contains("\"ask\"").then(|| "instead".to_owned());
        let shape = Shape {
            divert: Some(&divert),
            ..Shape::default()
        };
        let mut pass = Pass::new(Some("1"), shape, None);
        let mut out = Vec::new();
        let chunk =
            b"data: {\"before\":1}\n\ndata: {\"ask\":2}\n\ndata: {\"after\":3}\n\ndata: {\"half";
        pass.push(chunk, &mut |ev| out.push(ev.message().map(str::to_owned)))
            .unwrap();
        assert_eq!(
            out,
            vec![
                Some("{\"before\":1}".to_owned()),
                Some("instead".to_owned())
            ]
        );
        assert!(pass.seen.answered);
        let rest = pass.seen.diverted.take().unwrap();
        assert_eq!(&rest[..], b"data: {\"after\":3}\n\ndata: {\"half");
        assert_eq!(pass.pending(), 0);
    }
}
