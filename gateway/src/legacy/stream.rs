//! The client's stream (`GET /sse`): the `endpoint` event, then every
//! message for the client as an `event: message`, with keep-alives. The
//! session's worker writes to it through [`Out`], its [`Sink`]: bounded in
//! events and bytes, and a client that cannot take an event within
//! `write_timeout` is given up.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc};

use super::Bridge;
use super::table::{Entry, Full, Inbound};
use crate::policy::jsonrpc;
use crate::pool::Pool;
use crate::reject::Reject;
use crate::relay::{self, Answer, Downstream, Failure, MAX_WHOLE_BODY, Seen, Sink};
use crate::respond;
use crate::session::Caller;
use crate::upstream;

/// Messages a session's inbox holds before POSTs get 503.
const INBOX: usize = 64;
/// Events queued for a client's stream before the worker waits.
const OUTBOX: usize = 32;
/// Bytes of events queued for a client's stream before the worker waits
/// (one larger event may still pass alone).
const OUTBOX_BYTES: usize = 2 * 1024 * 1024;
/// How often a stream that may end (the gateway is closing) checks whether
/// its session still has work under way.
const CLOSING_CHECK: Duration = Duration::from_millis(100);

/// An event for the client's stream, holding its share of the outbox bytes.
type OutEvent = (Bytes, tokio::sync::OwnedSemaphorePermit);

fn new_id() -> String {
    let mut raw = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn message(data: &str) -> Bytes {
    mcp_sse::format(Some("message"), None, data)
}

/// Where a worker sends events for its client: the legacy transport's sink.
#[derive(Clone)]
pub(super) struct Out {
    tx: mpsc::Sender<OutEvent>,
    bytes: Arc<Semaphore>,
    timeout: Duration,
}

impl Out {
    /// Queues an event; an error if the client is gone or stuck.
    async fn deliver(&self, event: Bytes) -> Result<(), Failure> {
        let n = event.len().clamp(1, OUTBOX_BYTES) as u32;
        let queued = async {
            let permit = Arc::clone(&self.bytes).acquire_many_owned(n).await.ok()?;
            self.tx.send((event, permit)).await.ok()
        };
        match tokio::time::timeout(self.timeout, queued).await {
            Ok(Some(())) => Ok(()),
            _ => Err(relay::abort("the legacy client is gone or stopped reading")),
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
            tracing::warn!(error = %e, "legacy bridge: backend answer unreadable");
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
                    tracing::warn!(error = %e, "legacy bridge: backend stream failed");
                    return Err(Failure::BackendLost { open: true });
                }
            };
            let pushed = pass.push(&chunk, &mut |ev| match ev.message() {
                Some(m) if m.trim_start().starts_with(['{', '[']) => ready.push(message(m)),
                Some(_) => tracing::warn!("backend sent a non-JSON SSE event; skipped"),
                None => {}
            });
            if let Err(e) = pushed {
                tracing::warn!(error = %e, "legacy bridge: dropping the backend stream");
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

impl Sink for Out {
    fn client_headers(&self) -> Option<&HeaderMap> {
        None // the bridge speaks for the client
    }

    fn is_open(&self) -> bool {
        true // the client's stream outlives every message
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
}

impl Bridge {
    /// `GET /sse`: holds the client's stream for the life of the session.
    pub async fn serve_stream(
        self: &Arc<Self>,
        session: &mut Session,
        pool: &Arc<Pool>,
        caller: Caller,
        client: Arc<str>,
    ) -> Result<(), Failure> {
        let id = new_id();
        // The id the client sees: sealed, naming this replica, when replicas share sessions.
        let public = match &self.advertise {
            Some(me) => self
                .sessions
                .sealer()
                .issue_legacy(me, &id)
                .ok_or(Reject::BadGateway)?,
            None => id.clone(),
        };
        let (inbox_tx, inbox_rx) = mpsc::channel::<Inbound>(INBOX);
        let (out_tx, mut out_rx) = mpsc::channel::<OutEvent>(OUTBOX);
        let entry = Entry::new(inbox_tx, &caller.principal, pool.index, client);
        match self.table.insert(&id, entry) {
            Ok(()) => {}
            Err(Full::Pool) => return Err(Reject::LegacyCapacity.into()),
            Err(Full::Client) => {
                return Err(Reject::RateLimited {
                    retry_after: 5,
                    what: "legacy sessions per client",
                }
                .into());
            }
        }
        let out = Out {
            tx: out_tx,
            bytes: Arc::new(Semaphore::new(OUTBOX_BYTES)),
            timeout: self.state.limits().write_timeout,
        };
        let concurrency = self.state.limits().legacy_session_concurrency.max(1);
        let busy = Arc::new(Semaphore::new(concurrency));
        // The worker ends once its inbox closes (the entry leaves the table
        // below); it then closes the backend session.
        let worker =
            Arc::clone(self).worker(Arc::clone(pool), inbox_rx, out, caller, Arc::clone(&busy));
        tokio::spawn(worker);
        let result = self
            .stream_to_client(
                session,
                pool,
                (&id, &public),
                &mut out_rx,
                (&busy, concurrency),
            )
            .await;
        self.table.remove(&id);
        tracing::info!(legacy_session = %&id[..8], "legacy SSE session closed");
        result
    }

    async fn stream_to_client(
        &self,
        session: &mut Session,
        pool: &Pool,
        (id, public): (&str, &str),
        out_rx: &mut mpsc::Receiver<OutEvent>,
        (busy, concurrency): (&Semaphore, usize),
    ) -> Result<(), Failure> {
        let limits = self.state.limits();
        let mut head = ResponseHeader::build(200, Some(4)).map_err(Failure::Abort)?;
        for (k, v) in [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
            ("x-accel-buffering", "no"),
        ] {
            head.insert_header(k, v).map_err(Failure::Abort)?;
        }
        let mut down = Downstream::new(session, &self.state);
        let endpoint = format!("{}/messages?sessionId={public}", pool.prefix);
        down.start(head, mcp_sse::format(Some("endpoint"), None, &endpoint))
            .await?;
        tracing::info!(legacy_session = %&id[..8], pool = %pool.name, "legacy SSE session opened");
        let mut phase = self.state.phases();
        let mut closing = false;
        let idle = |out_rx: &mpsc::Receiver<OutEvent>| {
            out_rx.is_empty() && busy.available_permits() == concurrency
        };
        let mut keepalive = tokio::time::interval(limits.sse_keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        let mut check = tokio::time::interval(CLOSING_CHECK);
        loop {
            // The event's outbox bytes are returned once it is written.
            let (chunk, _permit) = tokio::select! {
                ev = out_rx.recv() => match ev {
                    Some((ev, permit)) => (ev, Some(permit)),
                    // The worker gave up on the session: end the stream cleanly.
                    None => return down.finish().await,
                },
                _ = keepalive.tick() => (Bytes::from_static(mcp_sse::KEEPALIVE), None),
                _ = relay::closing(&mut phase), if !closing => {
                    // The listeners are closed: the stream ends (its
                    // connection with it) once the session's calls under way
                    // have answered, so the client opens a new one elsewhere.
                    closing = true;
                    down.session.set_keepalive(None);
                    continue;
                }
                _ = check.tick(), if closing => {
                    if idle(out_rx) {
                        return down.finish().await;
                    }
                    continue;
                }
            };
            if let Err(e) = down.send(chunk).await {
                tracing::info!(legacy_session = %&id[..8], "legacy SSE client went away or stopped reading");
                return Err(e);
            }
            keepalive.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sse_message_events() {
        assert_eq!(&message("{}")[..], b"event: message\ndata: {}\n\n");
        assert_eq!(new_id().len(), 32);
    }
}
