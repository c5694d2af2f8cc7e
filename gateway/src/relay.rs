//! Writing a backend's response to the client. The SSE path forwards whole
//! events only (the backend's bytes, untouched), so the client's stream is
//! always at an event boundary between writes: the gateway can add a comment
//! keep-alive whenever the backend is quiet, and a backend that dies
//! mid-event never leaves half an event behind. Rules:
//!
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
//!   session and continues, answers with a complete error, or ends the
//!   stream — never with a JSON body appended to a live response.
//! - Every write has `write_timeout`: a client that stops reading is dropped.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mcp_sse::{Event, Splitter};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::policy::jsonrpc;
use crate::reject::Reject;
use crate::session::asks::{self, Tag};
use crate::state::Phase;
use crate::upstream::{Frames, UpstreamError};

/// Replaces a message on its way to the client (`None`: unchanged), e.g. a
/// `tools/list` answer without the tools the client may not call.
pub type Rewrite = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How messages are changed on their way to the client: the caller's
/// [`Rewrite`], and the mark on server requests naming the backend session
/// that asked ([`asks`]).
#[derive(Clone, Copy, Default)]
pub struct Shape<'a> {
    pub rewrite: Option<&'a Rewrite>,
    pub asks: Option<Tag>,
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

/// How an exchange ended badly.
#[derive(Debug)]
pub enum Failure {
    /// Nothing was written to the client: answer with this.
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

/// The client side of one relayed response.
pub struct Downstream<'a> {
    pub session: &'a mut Session,
    pub write_timeout: Duration,
    pub keepalive: Duration,
    /// The gateway's phase: server streams end cleanly when it closes.
    pub phase: tokio::sync::watch::Receiver<Phase>,
}

impl<'a> Downstream<'a> {
    pub fn new(session: &'a mut Session, state: &crate::state::State) -> Self {
        Self {
            session,
            write_timeout: state.limits.write_timeout,
            keepalive: state.limits.sse_keepalive,
            phase: state.phases(),
        }
    }

    /// A JSON answer read whole, sent as one event into an open stream, which then ends.
    pub async fn event_then_end(&mut self, mut frames: Frames) -> Result<(), Failure> {
        let body = frames
            .read_all(MAX_WHOLE_BODY)
            .await
            .map_err(|e| lost(e, true))?;
        let text = String::from_utf8_lossy(&body);
        if !text.trim().is_empty() {
            self.send(mcp_sse::format(Some("message"), None, text.trim()))
                .await?;
        }
        self.finish().await
    }

    async fn write_head(&mut self, head: ResponseHeader, end: bool) -> Result<(), Failure> {
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
    pub async fn open(&mut self, head: ResponseHeader, first: Bytes) -> Result<(), Failure> {
        self.write_head(head, false).await?;
        self.write(Some(first), false).await
    }

    /// More bytes of a stream the gateway writes itself.
    pub async fn send(&mut self, data: Bytes) -> Result<(), Failure> {
        self.write(Some(data), false).await
    }

    /// Ends a stream cleanly.
    pub async fn finish(&mut self) -> Result<(), Failure> {
        self.write(None, true).await
    }

    /// A complete response whose body is in hand: one write.
    pub async fn whole(&mut self, mut head: ResponseHeader, body: Bytes) -> Result<(), Failure> {
        head.insert_header("content-length", body.len().to_string())
            .map_err(Failure::Abort)?;
        self.write_head(head, false).await?;
        let body = (!body.is_empty()).then_some(body);
        self.write(body, true).await
    }
}

fn lost(e: UpstreamError, open: bool) -> Failure {
    tracing::warn!(error = %e, "backend failed mid-response");
    Failure::BackendLost { open }
}

/// Relays a non-SSE body: whole when it fits (`inspect` sees it), else
/// streamed as it comes.
pub async fn relay_plain(
    down: &mut Downstream<'_>,
    head: ResponseHeader,
    mut frames: Frames,
    rewrite: Option<&Rewrite>,
    inspect: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<(), Failure> {
    if frames
        .exact_len()
        .is_some_and(|n| n <= MAX_WHOLE_BODY as u64)
    {
        let body = frames
            .read_all(MAX_WHOLE_BODY)
            .await
            .map_err(|e| lost(e, false))?;
        inspect(&body);
        let body = match rewrite.and_then(|r| r(&String::from_utf8_lossy(&body))) {
            Some(new) => Bytes::from(new),
            None => body,
        };
        return down.whole(head, body).await;
    }
    let first = frames.next().await.map_err(|e| lost(e, false))?;
    let Some(first) = first else {
        return down.whole(head, Bytes::new()).await;
    };
    down.write_head(head, false).await?;
    down.write(Some(first), false).await?;
    loop {
        match frames.next().await {
            Ok(Some(chunk)) => down.write(Some(chunk), false).await?,
            Ok(None) => return down.write(None, true).await,
            Err(e) => return Err(abort(&e.to_string())),
        }
    }
}

/// What an event relay saw, for the caller's bookkeeping.
#[derive(Default)]
pub struct Seen {
    pub events: usize,
    /// Events carrying a message (not only an id, a retry hint or comments).
    pub messages: usize,
    /// The response to the client's request went by (the client's stream is complete).
    pub answered: bool,
    /// The backend's stream, when the client's ended before it (see [`drain`]).
    pub rest: Option<Frames>,
}

/// Collects the complete events in `chunk` into `out`.
fn gather(
    splitter: &mut Splitter,
    chunk: &[u8],
    out: &mut BytesMut,
    seen: &mut Seen,
    answer_to: Option<&str>,
    shape: Shape<'_>,
    inspect: &mut (dyn FnMut(&Event) + Send),
) -> Result<(), UpstreamError> {
    let mut events = Vec::new();
    splitter
        .push_into(chunk, &mut events)
        .map_err(|e| UpstreamError::Failed(e.to_string()))?;
    for ev in events {
        inspect(&ev);
        seen.events += 1;
        let mut replaced = None;
        if let Some(data) = ev.data().filter(|d| !d.trim().is_empty()) {
            seen.messages += 1;
            if let (Some(id), false) = (answer_to, seen.answered)
                && jsonrpc::answers(&data, id)
            {
                seen.answered = true;
            }
            if let Some(new) = shape.apply(&data) {
                replaced = Some(mcp_sse::format(
                    ev.event_type().as_deref(),
                    ev.id().as_deref(),
                    &new,
                ));
            }
        }
        match replaced {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => out.extend_from_slice(ev.raw()),
        }
    }
    Ok(())
}

/// Resolves when the gateway starts closing (never, if the watch is gone).
async fn closing(phase: &mut tokio::sync::watch::Receiver<Phase>) {
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

impl Downstream<'_> {
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
}

/// Relays an SSE body event by event, with keep-alives while the backend is
/// quiet.
///
/// With `answer_to` (the id of the client's request, for a POST), the
/// response header is held until the first message arrives (at most one
/// keep-alive interval): events carrying only an id or a retry hint wait with
/// it. When that message is the response, which is usual, the client gets
/// the whole answer in one write with `Content-Length`. The client's stream
/// ends as soon as the response has gone by (MCP servers end a POST's stream
/// there); the backend's rest is returned for [`drain`]. Without
/// `answer_to` (a `GET` stream) the header goes out at once.
///
/// `head` is `None` when the client's stream is already open (continuing it
/// from another backend after a failover). A `server_stream` (`GET /mcp`)
/// is never ended here: when the backend ends it, the relay reports the
/// backend lost with the client's stream still open, for the caller to
/// continue it.
pub async fn relay_events(
    down: &mut Downstream<'_>,
    head: Option<ResponseHeader>,
    mut frames: Frames,
    answer_to: Option<&str>,
    server_stream: bool,
    shape: Shape<'_>,
    inspect: &mut (dyn FnMut(&Event) + Send),
) -> Result<Seen, Failure> {
    let mut splitter = Splitter::new(MAX_EVENT);
    let mut seen = Seen::default();
    let mut out = BytesMut::new();
    // The response header, until it is sent.
    let mut head = head;
    if (server_stream || answer_to.is_none())
        && let Some(h) = head.take()
    {
        down.open_stream(h).await?;
    }
    let hold_until = tokio::time::Instant::now() + down.keepalive;
    let mut keepalive = tokio::time::interval(down.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();
    loop {
        // Wait for bytes, a quiet interval (stream open) or the end of the hold (header held).
        let first = tokio::select! {
            biased;
            _ = closing(&mut down.phase), if server_stream && head.is_none() => {
                // The gateway is going away: end the stream cleanly so the
                // client reopens it (on another replica). The connection
                // closes right after the last chunk: kept alive, the client
                // could send its next request on it just as the listener
                // shuts, and see it dropped unanswered.
                down.session.set_keepalive(None);
                if !out.is_empty() {
                    down.write(Some(out.split().freeze()), false).await?;
                }
                down.write(None, true).await?;
                return Ok(seen);
            }
            next = frames.next() => next,
            _ = keepalive.tick(), if head.is_none() => {
                down.write(Some(Bytes::from_static(mcp_sse::KEEPALIVE)), false).await?;
                continue;
            }
            _ = tokio::time::sleep_until(hold_until), if head.is_some() => {
                if let Some(h) = head.take() {
                    down.open_stream(h).await?;
                }
                if !out.is_empty() {
                    down.write(Some(out.split().freeze()), false).await?;
                }
                keepalive.reset();
                continue;
            }
        };
        // Then take whatever else is already here, to send it in one write.
        let mut step = first;
        let ended = loop {
            match step {
                Ok(Some(chunk)) => {
                    if let Err(e) = gather(
                        &mut splitter,
                        &chunk,
                        &mut out,
                        &mut seen,
                        answer_to,
                        shape,
                        inspect,
                    ) {
                        step = Err(e);
                        continue;
                    }
                    if seen.answered {
                        break true;
                    }
                }
                Ok(None) if splitter.pending() == 0 => break true,
                Ok(None) => {
                    step = Err(UpstreamError::Failed(
                        "backend ended its stream mid-event".into(),
                    ));
                    continue;
                }
                Err(e) => {
                    if let Some(h) = head.take() {
                        if seen.messages == 0 {
                            return Err(lost(e, false));
                        }
                        // Messages arrived before the failure: they go out first.
                        down.open_stream(h).await?;
                    }
                    // Send the whole events that did arrive; the stream stays
                    // open at an event boundary for the caller to continue or end.
                    if !out.is_empty() {
                        down.write(Some(out.split().freeze()), false).await?;
                    }
                    return Err(lost(e, true));
                }
            }
            match frames.next_ready() {
                Some(next) => step = next,
                None => break false,
            }
        };
        if ended && server_stream {
            if let Some(h) = head.take() {
                down.open_stream(h).await?;
            }
            if !out.is_empty() {
                down.write(Some(out.split().freeze()), false).await?;
            }
            tracing::debug!("the backend ended a server stream");
            return Err(Failure::BackendLost { open: true });
        }
        if ended {
            if !seen.answered && answer_to.is_some() {
                // The backend closed a POST's stream without its answer.
                let why = UpstreamError::Failed("stream ended without the answer".into());
                if head.is_some() {
                    return Err(lost(why, false));
                }
                if !out.is_empty() {
                    down.write(Some(out.split().freeze()), false).await?;
                }
                return Err(lost(why, true));
            }
            if seen.answered {
                seen.rest = Some(frames);
            }
            let data = out.split().freeze();
            match head.take() {
                Some(head) => down.whole(head, data).await?,
                None => down.write((!data.is_empty()).then_some(data), true).await?,
            }
            return Ok(seen);
        }
        if head.is_some() && seen.messages == 0 {
            continue; // only ids and retry hints so far: keep holding the header
        }
        if let Some(h) = head.take() {
            down.open_stream(h).await?;
        }
        if !out.is_empty() {
            down.write(Some(out.split().freeze()), false).await?;
            keepalive.reset();
        }
    }
}
