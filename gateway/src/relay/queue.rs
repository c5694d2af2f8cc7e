//! A client stream fed through a queue: the legacy transport's (every
//! message of the session) and a federated session's `GET` stream (every
//! member's server stream, merged). Exchanges write into a [`Queue`] — the
//! sink — as `event: message` events, bounded in events and bytes; one task
//! per stream takes them out and writes them to the client ([`pump`]), with
//! keep-alives, so many exchanges can feed one stream at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Answer, Downstream, Failure, MAX_WHOLE_BODY, Seen, Sink, abort, closing};
use crate::policy::jsonrpc;
use crate::reject::Reject;
use crate::respond;
use crate::upstream;

/// Events queued for a client's stream before the writers wait.
pub const QUEUE_EVENTS: usize = 32;
/// Bytes of events queued for a client's stream before the writers wait
/// (one larger event may still pass alone).
pub const QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// How often a stream that may end (the gateway is closing) checks whether
/// its writers are done.
const CLOSING_CHECK: Duration = Duration::from_millis(100);

/// An event for the client's stream, holding its share of the queue's bytes.
pub type Queued = (Bytes, OwnedSemaphorePermit);

/// The response header of a stream the gateway writes itself.
pub fn stream_head() -> Result<pingora::http::ResponseHeader, Failure> {
    let mut head = pingora::http::ResponseHeader::build(200, Some(4)).map_err(Failure::Abort)?;
    for (k, v) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),
    ] {
        head.insert_header(k, v).map_err(Failure::Abort)?;
    }
    Ok(head)
}

/// One message as an `event: message`.
pub fn message(data: &str) -> Bytes {
    mcp_sse::format(Some("message"), None, data)
}

/// The writing end of a queued stream: a [`Sink`] every exchange of the
/// stream shares (a clone each).
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    timeout: Duration,
}

impl Queue {
    /// A queue and its reading end; a writer that cannot queue an event
    /// within `timeout` gives up on the client.
    pub fn new(timeout: Duration) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
        let queue = Self {
            tx,
            bytes: Arc::new(Semaphore::new(QUEUE_BYTES)),
            timeout,
        };
        (queue, rx)
    }

    /// Queues an event; an error if the client is gone or stuck.
    pub async fn deliver(&self, event: Bytes) -> Result<(), Failure> {
        let n = event.len().clamp(1, QUEUE_BYTES) as u32;
        let queued = async {
            let permit = Arc::clone(&self.bytes).acquire_many_owned(n).await.ok()?;
            self.tx.send((event, permit)).await.ok()
        };
        match tokio::time::timeout(self.timeout, queued).await {
            Ok(Some(())) => Ok(()),
            _ => Err(abort("the client is gone or stopped reading")),
        }
    }

    /// An answer read whole: one event, if it is a JSON-RPC message.
    async fn relay_whole(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        let Answer {
            parts,
            mut frames,
            mut pass,
            server_stream,
            ..
        } = answer;
        let body = frames.read_all(MAX_WHOLE_BODY).await.map_err(|e| {
            tracing::warn!(error = %e, "backend answer unreadable");
            Failure::BackendLost { open: true }
        })?;
        if server_stream && !parts.status.is_success() {
            return Ok(pass.seen); // the server offers no stream of its own
        }
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        if text.is_empty() && parts.status.is_success() {
            return Ok(pass.seen); // accepted (a notification, an answer)
        }
        if jsonrpc::parse(text.as_bytes()).is_err() {
            tracing::warn!(status = %parts.status, "backend answered with something that is not JSON-RPC");
            return Err(Reject::BackendAnswer(parts.status.as_u16()).into());
        }
        let shaped = pass.whole(text);
        self.deliver(message(shaped.as_deref().unwrap_or(text)))
            .await?;
        Ok(pass.seen)
    }

    /// An event stream: each message as an `event: message`, until the
    /// answer to the request went by (or, for a server stream, the end).
    async fn relay_events(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        let Answer {
            mut frames,
            mut pass,
            server_stream,
            ..
        } = answer;
        let mut ready = Vec::new();
        loop {
            let chunk = match frames.next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) if server_stream || pass.pending() > 0 || pass.awaits_answer() => {
                    return Err(Failure::BackendLost { open: true });
                }
                Ok(None) => return Ok(pass.seen),
                Err(e) => {
                    tracing::warn!(error = %e, "backend stream failed");
                    return Err(Failure::BackendLost { open: true });
                }
            };
            let pushed = pass.push(&chunk, &mut |ev| match ev.message() {
                Some(m) if m.trim_start().starts_with(['{', '[']) => ready.push(message(m)),
                Some(_) => tracing::warn!("backend sent a non-JSON SSE event; skipped"),
                None => {}
            });
            if let Err(e) = pushed {
                tracing::warn!(error = %e, "dropping the backend stream");
                return Err(Failure::BackendLost { open: true });
            }
            for event in ready.drain(..) {
                self.deliver(event).await?;
            }
            if pass.seen.answered {
                // Like a POST's stream: done once the answer went by.
                let mut seen = pass.seen;
                seen.rest = Some(frames);
                return Ok(seen);
            }
        }
    }
}

impl Sink for Queue {
    fn client_headers(&self) -> Option<&HeaderMap> {
        None // the gateway speaks for the client
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        if upstream::is_event_stream(&answer.parts.headers) {
            self.relay_events(answer).await
        } else {
            self.relay_whole(answer).await
        }
    }

    async fn write_refusal(
        &mut self,
        reject: &Reject,
        id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        match respond::event(reject, id) {
            Some(event) => self.deliver(event).await,
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        Ok(()) // the stream ends with the session, not with a message
    }

    async fn reply(
        &mut self,
        answer: Option<Bytes>,
        _session: Option<&str>,
    ) -> Result<(), Failure> {
        match answer {
            Some(body) => self.deliver(message(&String::from_utf8_lossy(&body))).await,
            None => Ok(()),
        }
    }
}

/// Writes a queued stream to the client until its writers are all gone
/// (the stream then ends cleanly), with a keep-alive after `keepalive` of
/// quiet. When the gateway closes, the connection is to close after the
/// stream, which ends as soon as `done` says the writers have finished.
pub async fn pump(
    down: &mut Downstream<'_>,
    rx: &mut mpsc::Receiver<Queued>,
    keepalive: Duration,
    done: impl Fn(&mpsc::Receiver<Queued>) -> bool,
) -> Result<(), Failure> {
    let mut phase = down.phase.clone();
    let mut closing_seen = false;
    let mut tick = tokio::time::interval(keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut check = tokio::time::interval(CLOSING_CHECK);
    loop {
        // The event's queue bytes are returned once it is written.
        let (chunk, _permit) = tokio::select! {
            ev = rx.recv() => match ev {
                Some((ev, permit)) => (ev, Some(permit)),
                None => return down.finish().await,
            },
            _ = tick.tick() => (Bytes::from_static(mcp_sse::KEEPALIVE), None),
            _ = closing(&mut phase), if !closing_seen => {
                closing_seen = true;
                down.session.set_keepalive(None);
                continue;
            }
            _ = check.tick(), if closing_seen => {
                if done(rx) {
                    return down.finish().await;
                }
                continue;
            }
        };
        down.send(chunk).await?;
        tick.reset();
    }
}
