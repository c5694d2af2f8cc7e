//! One message's trip to a backend, for both transports: the one place
//! that picks a backend or follows the session's, sends through
//! `upstream.rs`, reads what came back, moves the session when its backend
//! is lost, and decides whether sending again is safe. The transport hands
//! over the message and its client's [`Sink`]; answers and refusals reach
//! the client only through that sink.
//!
//! When a backend is lost, what happens depends on what it may have done
//! (`session::replay`):
//!
//! - it never got the request (connection refused; it answered 404 for a
//!   session it no longer knows; 503 while draining): the session moves to
//!   another backend (`failover.rs`) and the request is sent there;
//! - it may have got it (reset, timeout, a stream cut before the answer):
//!   the request is sent again, on the moved session, only if that is safe,
//!   else the client gets an "outcome unknown" error (-32003).
//!
//! A client stream already open (a `GET /mcp` stream, a POST's SSE answer
//! under way, a legacy client's stream) stays open across the move: the
//! sink continues it from the new backend, at an event boundary. A client's
//! answer to a server request goes only to the backend session that asked
//! (`asks`); it is never moved nor sent twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::binding::{Binding, Caller, Link, trim_init};
use super::replay::{self, ToolHints};
use super::{ATTEMPTS, Sessions};
use crate::asks;
use crate::metrics::{Metrics, Transport};
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::pool::outlier;
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::relay::{self, Answer, Failure, Pass, Shape, Sink};
use crate::state::State;
use crate::upstream::{self, Frames, Outgoing, SESSION_HEADER, Upstream, UpstreamError};

/// Sends (or moves) one message may take before the gateway gives up: one
/// move and one send on each of [`ATTEMPTS`] backends.
pub const TRIES: usize = 2 * ATTEMPTS;
/// A server stream that lived this long has earned fresh tries.
const STREAM_SETTLED: Duration = Duration::from_secs(5);
/// Largest 400 answer read to see whether it says the session is unknown.
const FORGOT_MAX: u64 = 4096;
/// Largest answer read when the gateway only needs it gone.
const MAX_DISCARDED: usize = 64 * 1024;

/// What the exchange needs of the gateway.
#[derive(Clone, Copy)]
pub struct Exchange<'a> {
    pub sessions: &'a Sessions,
    pub upstream: &'a Upstream,
    pub state: &'a State,
}

/// Where a message may go.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Any backend of the pool: a new session (`initialize`) or a
    /// sessionless request. `seal`: a session it opens is given to the
    /// client as a sealed id (Streamable HTTP).
    Anywhere { seal: bool },
    /// The client's session.
    Session(&'a Binding),
}

/// One message for a backend.
pub struct Message<'a> {
    pub pool: &'a Arc<Pool>,
    pub method: http::Method,
    /// Path and query as the backend serves them (pool prefix removed).
    pub path: &'a str,
    pub body: Bytes,
    pub rpc: Option<&'a Rpc>,
    pub caller: &'a Caller,
    /// For the latency histograms.
    pub transport: Transport,
    /// Set when the gateway speaks for the client (no client headers to pass on).
    pub accept: Option<&'static str>,
    pub content_type: Option<&'static str>,
    /// A `GET` resuming a stream from the client's `Last-Event-ID`: it ends
    /// where the backend ends it (opening it again with the same id would
    /// replay the same events twice).
    pub resuming: bool,
    /// When the gateway speaks for the client: the revision to name where
    /// the session does not say it, and a 2026-07-28 request's
    /// `Mcp-Method`/`Mcp-Name` for the message as it goes.
    pub version: Option<&'a str>,
    pub mcp: Option<(&'a str, Option<&'a str>)>,
    /// Sees every message of the answers (not only the answer).
    pub notice: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Takes a message out of the answer in place of the answer (the version bridge).
    pub divert: Option<&'a relay::Divert<'a>>,
}

impl<'a> Message<'a> {
    /// A message the gateway sends for a client (no client headers go
    /// along): POST `/mcp`, accepting JSON or an event stream.
    pub fn gateway(
        pool: &'a Arc<Pool>,
        body: Bytes,
        rpc: Option<&'a Rpc>,
        caller: &'a Caller,
        transport: Transport,
    ) -> Self {
        Message {
            pool,
            method: http::Method::POST,
            path: "/mcp",
            body,
            rpc,
            caller,
            transport,
            accept: Some("application/json, text/event-stream"),
            content_type: Some("application/json"),
            resuming: false,
            version: None,
            mcp: None,
            notice: None,
            divert: None,
        }
    }
}

/// How an exchange ended.
pub struct Outcome {
    /// The backend that last had the message (for the access log).
    pub backend: Option<Arc<BackendState>>,
    /// `None`: refused, and the refusal was written to the client.
    pub answered: Option<Answered>,
}

/// A message that was answered (or needed no answer).
#[derive(Default)]
pub struct Answered {
    /// The backend session it opened (an `initialize` sent anywhere).
    pub opened: Option<Link>,
    /// A `DELETE` of a session its backend no longer knew: ended all the same.
    pub gone: bool,
}

/// The walk of one message through backends.
struct Trip<'m, 'a> {
    msg: &'m Message<'a>,
    target: Target<'m>,
    /// The body as it goes to the backend (a client's answer, with the
    /// server request's own id back).
    body: Bytes,
    /// Safe to send again after it may have reached a backend.
    repeatable: bool,
    tries: usize,
    /// The backend that last failed it (a sessionless message goes elsewhere next).
    failed: Option<String>,
    /// It was lost on a backend that may have run it.
    lost: bool,
    /// The session moved while serving it.
    moved: bool,
    backend: Option<Arc<BackendState>>,
}

/// What one try came to.
enum Step {
    Done(Answered),
    Again,
}

/// What a backend's first answer says.
enum Reply {
    /// Not run there: try again (the session may have moved).
    Again,
    /// Ended without relaying anything.
    Done(Answered),
    /// An answer to relay.
    Relay(http::response::Parts, Frames),
}

impl Exchange<'_> {
    fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// Takes `msg` to a backend of its target and its answer to `sink`;
    /// every refusal is written to the sink here. `Err` only when the
    /// client's side failed (its stream is to be cut).
    pub async fn run<S: Sink>(
        &self,
        msg: &Message<'_>,
        target: Target<'_>,
        sink: &mut S,
    ) -> Result<Outcome, Failure> {
        let started = Instant::now();
        let walked = match self.start(msg, target) {
            Ok(mut trip) => {
                let walked = self.walk(&mut trip, sink).await;
                (walked, trip.backend)
            }
            Err(r) => (Err(r.into()), None),
        };
        if let Some(rpc) = msg.rpc {
            let took = started.elapsed();
            self.sessions
                .record(self.metrics(), msg.pool, msg.transport, &rpc.method, took);
        }
        let (walked, backend) = walked;
        let answered = match walked {
            Ok(answered) => Some(answered),
            Err(Failure::Reject(r)) => {
                let id = msg.rpc.and_then(|r| r.id.as_deref());
                relay::refuse(sink, self.metrics(), &r, id).await?;
                None
            }
            // Nothing more to say on a stream the backend broke: end it.
            Err(Failure::BackendLost { .. }) => {
                sink.finish().await?;
                None
            }
            Err(abort) => return Err(abort),
        };
        Ok(Outcome { backend, answered })
    }

    fn start<'m, 'a>(
        &self,
        msg: &'m Message<'a>,
        target: Target<'m>,
    ) -> Result<Trip<'m, 'a>, Reject> {
        let hints = self.sessions.hints(msg.pool);
        let repeatable = msg
            .rpc
            .is_none_or(|r| !r.batch && replay::safe_to_repeat(&r.method, hints));
        let is_answer = msg.rpc.is_some_and(|r| r.method == Method::Response);
        let body = if is_answer {
            to_asker(&msg.body, target)?
        } else {
            msg.body.clone()
        };
        Ok(Trip {
            msg,
            target,
            body,
            repeatable,
            tries: 0,
            failed: None,
            lost: false,
            moved: false,
            backend: None,
        })
    }

    async fn walk<S: Sink>(
        &self,
        trip: &mut Trip<'_, '_>,
        sink: &mut S,
    ) -> Result<Answered, Failure> {
        loop {
            trip.tries += 1;
            if trip.tries > TRIES {
                // Backends answered but failed it: a gateway error, not "none available".
                let why = if trip.lost {
                    Reject::BadGateway
                } else {
                    Reject::NoBackend
                };
                return Err(why.into());
            }
            let Some((backend, link)) = self.choose(trip).await? else {
                continue; // the session moved: try its new backend
            };
            trip.backend = Some(Arc::clone(&backend));
            let _load = backend.start_request();
            let sent_at = Instant::now();
            let sent = self
                .upstream
                .send(
                    backend.addr,
                    outgoing(trip, link.as_deref(), sink.client_headers()),
                )
                .await;
            if let Ok((parts, _)) = &sent {
                let pool = trip.msg.pool;
                pool.upstream_seconds.observe(sent_at.elapsed());
                pool.record(&backend, outlier::Outcome::Answered(parts.status.as_u16()));
            }
            let (parts, frames) = match self.reply(trip, &backend, link.as_deref(), sent).await? {
                Reply::Again => continue,
                Reply::Done(answered) => return Ok(answered),
                Reply::Relay(parts, frames) => (parts, frames),
            };
            let relayed_at = Instant::now();
            match self
                .relay(trip, &backend, link.as_deref(), parts, frames, sink)
                .await?
            {
                Step::Done(answered) => return Ok(answered),
                Step::Again if relayed_at.elapsed() > STREAM_SETTLED => trip.tries = 0,
                Step::Again => {}
            }
        }
    }

    /// The backend for the next try: the session's, or any; `None` when the
    /// session had to move first.
    async fn choose(
        &self,
        trip: &mut Trip<'_, '_>,
    ) -> Result<Option<(Arc<BackendState>, Option<Arc<Link>>)>, Failure> {
        match trip.target {
            Target::Session(binding) => match binding.current() {
                Some(link) => Ok(Some((Arc::clone(&link.backend), Some(link)))),
                None => {
                    self.relocate(trip, binding, None).await?;
                    Ok(None)
                }
            },
            Target::Anywhere { .. } => {
                let picked = trip.msg.pool.pick_except(trip.failed.as_deref());
                // Lost on a backend with none left to try: the backend failed it.
                let none = if trip.lost {
                    Reject::BadGateway
                } else {
                    Reject::NoBackend
                };
                Ok(Some((picked.ok_or(none)?, None)))
            }
        }
    }

    /// Reads the backend's first answer: what says the message was not run
    /// there (move or go elsewhere, and send it again) and what is an answer.
    async fn reply(
        &self,
        trip: &mut Trip<'_, '_>,
        backend: &Arc<BackendState>,
        link: Option<&Link>,
        sent: Result<(http::response::Parts, Frames), UpstreamError>,
    ) -> Result<Reply, Failure> {
        let (parts, mut frames) = match sent {
            Ok(answer) => answer,
            Err(e) if e.never_reached() => {
                trip.failed = Some(backend.id.clone());
                self.sessions.eject(trip.msg.pool, backend);
                self.move_if_bound(trip, link).await?;
                return Ok(Reply::Again);
            }
            Err(e) => {
                trip.msg.pool.record(backend, outlier::Outcome::Lost);
                Metrics::inc(&self.metrics().upstream_errors);
                tracing::warn!(backend = %backend.id, error = %e, "backend exchange failed");
                trip.failed = Some(backend.id.clone());
                self.after_loss(trip, link).await?;
                return Ok(Reply::Again);
            }
        };
        if let Some(name) = parts
            .headers
            .get(upstream::INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            backend.note_instance(name);
        }
        let status = parts.status.as_u16();
        if status == 404 && link.is_some() {
            // The backend does not know the session: not run there.
            upstream::read_messages(&parts.headers, &mut frames, MAX_DISCARDED).await;
            if trip.msg.method == http::Method::DELETE {
                self.forget(trip);
                let gone = Answered {
                    gone: true,
                    ..Answered::default()
                };
                return Ok(Reply::Done(gone));
            }
            self.move_if_bound(trip, link).await?;
            return Ok(Reply::Again);
        }
        if status == 400 && link.is_some() && frames.exact_len().is_some_and(|n| n <= FORGOT_MAX) {
            // Some servers answer a session they no longer know with 400
            // instead of the specification's 404: not run there either.
            let body = frames
                .read_all(FORGOT_MAX as usize)
                .await
                .unwrap_or_default();
            if forgot_session(&body) {
                self.move_if_bound(trip, link).await?;
                return Ok(Reply::Again);
            }
            frames.unread(body);
        }
        if status == 503 && !trip.msg.pool.stdio {
            // Draining or overloaded: not run there (the pool has recorded
            // the answer: new work goes elsewhere for a moment), whether or
            // not the client's stream is open already. A stdio pool's host
            // is its only member: its 503 (all processes in use) is the
            // answer.
            upstream::read_messages(&parts.headers, &mut frames, MAX_DISCARDED).await;
            self.move_if_bound(trip, link).await?;
            return Ok(Reply::Again);
        }
        Ok(Reply::Relay(parts, frames))
    }

    /// Hands an answer to the client's sink; a backend lost on the way is
    /// a lost request (or, for a server stream, one to open again).
    async fn relay<S: Sink>(
        &self,
        trip: &mut Trip<'_, '_>,
        backend: &Arc<BackendState>,
        link: Option<&Link>,
        parts: http::response::Parts,
        frames: Frames,
        sink: &mut S,
    ) -> Result<Step, Failure> {
        let msg = trip.msg;
        let status = parts.status;
        let _stream = upstream::is_event_stream(&parts.headers).then(|| backend.stream_opened());
        let opened = match trip.target {
            Target::Anywhere { .. } => parts
                .headers
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Target::Session(_) => None,
        };
        let session = match (&opened, trip.target) {
            (Some(sid), Target::Anywhere { seal: true }) => Some(self.seal(msg, backend, sid)?),
            _ => None,
        };
        let mut watch = Watch::new(self.sessions.hints(msg.pool), msg.rpc);
        let mut see = |answer: &str| watch.see(answer);
        let shaped = msg
            .rpc
            .is_some_and(|r| r.batch || r.method == Method::ToolsList);
        let shape = Shape {
            rewrite: msg.caller.rewrite.as_ref().filter(|_| shaped),
            asks: link.map(Link::tag),
            divert: msg.divert,
        };
        let answer_to = msg.rpc.filter(|r| !r.batch).and_then(Rpc::id_text);
        let answer = Answer {
            parts,
            frames,
            pass: Pass::new(answer_to, shape, Some(&mut see)).with_notice(msg.notice),
            server_stream: msg.method == http::Method::GET,
            session,
            moved: trip.moved,
        };
        match sink.relay(answer).await {
            Ok(mut seen) => {
                if let Some(rest) = seen.rest.take() {
                    relay::drain(rest);
                }
                let opened = opened.map(|session| Link {
                    backend: Arc::clone(backend),
                    session,
                    version: watch.version.take(),
                    generation: 0,
                });
                Ok(Step::Done(self.answered(trip, status, opened)))
            }
            Err(Failure::BackendLost { open: true }) if msg.resuming => {
                sink.finish().await?;
                Ok(Step::Done(Answered::default()))
            }
            // A server stream ended or broke: open it again (a dead backend
            // or a forgotten session shows on the next try).
            Err(Failure::BackendLost { .. }) if msg.method == http::Method::GET => Ok(Step::Again),
            Err(Failure::BackendLost { .. }) => {
                msg.pool.record(backend, outlier::Outcome::Lost);
                trip.failed = Some(backend.id.clone());
                Metrics::inc(&self.metrics().upstream_errors);
                self.after_loss(trip, link).await?;
                Ok(Step::Again)
            }
            Err(other) => Err(other),
        }
    }

    /// What an answered message counts for.
    fn answered(
        &self,
        trip: &Trip<'_, '_>,
        status: http::StatusCode,
        opened: Option<Link>,
    ) -> Answered {
        if status.is_success() {
            if matches!(
                trip.msg.rpc,
                Some(Rpc {
                    method: Method::ToolsCall { .. },
                    ..
                })
            ) {
                Metrics::inc(&self.metrics().tool_calls);
            }
            if trip.msg.method == http::Method::DELETE {
                self.forget(trip);
            }
        }
        if let Some(link) = &opened {
            link.backend.session_opened();
            Metrics::inc(&self.metrics().sessions_issued);
        }
        Answered {
            opened,
            gone: false,
        }
    }

    /// The client's id for a session this message opened on `backend`.
    fn seal(&self, msg: &Message<'_>, backend: &BackendState, sid: &str) -> Result<String, Reject> {
        let initialize = msg.rpc.is_some_and(Rpc::is_initialize);
        let init = match jsonrpc::params_of(&msg.body) {
            Some(params) if initialize => trim_init(params),
            _ => String::new(),
        };
        self.sessions
            .pin(msg.pool, backend, sid, &msg.caller.principal, &init)
            .ok_or(Reject::BadGateway)
    }

    /// The client ended its session: never bring it back.
    fn forget(&self, trip: &Trip<'_, '_>) {
        if let Target::Session(binding) = trip.target {
            self.sessions.forget(binding);
        }
    }

    /// The backend may have had the message: move on only if sending it
    /// again is safe.
    async fn after_loss(
        &self,
        trip: &mut Trip<'_, '_>,
        link: Option<&Link>,
    ) -> Result<(), Failure> {
        trip.lost = true;
        if !trip.repeatable {
            Metrics::inc(&self.metrics().outcome_unknown);
            return Err(Reject::OutcomeUnknown.into());
        }
        self.move_if_bound(trip, link).await
    }

    async fn move_if_bound(
        &self,
        trip: &mut Trip<'_, '_>,
        lost: Option<&Link>,
    ) -> Result<(), Failure> {
        match trip.target {
            Target::Session(binding) => self.relocate(trip, binding, lost).await,
            Target::Anywhere { .. } => Ok(()),
        }
    }

    /// Moves the session off `lost`. A client's answer to a server request
    /// is never sent to the new backend session: the request it answers
    /// died with the old one.
    async fn relocate(
        &self,
        trip: &mut Trip<'_, '_>,
        binding: &Binding,
        lost: Option<&Link>,
    ) -> Result<(), Failure> {
        let caller = trip.msg.caller;
        if self
            .sessions
            .relocate(self.upstream, binding, lost, caller)
            .await?
        {
            Metrics::inc(&self.metrics().failovers);
        }
        trip.moved = true;
        if trip.msg.rpc.is_some_and(|r| r.method == Method::Response) {
            return Err(Reject::AnswerUndeliverable.into());
        }
        Ok(())
    }
}

/// What the exchange learns from the answer to its message: tool hints
/// from a `tools/list`, the revision an `initialize` settled on.
struct Watch<'h> {
    hints: &'h ToolHints,
    learn: bool,
    initialize: bool,
    version: Option<String>,
}

impl<'h> Watch<'h> {
    fn new(hints: &'h ToolHints, rpc: Option<&Rpc>) -> Self {
        let method = rpc.map(|r| &r.method);
        Self {
            hints,
            learn: method == Some(&Method::ToolsList),
            initialize: method == Some(&Method::Initialize),
            version: None,
        }
    }

    fn see(&mut self, answer: &str) {
        if self.learn {
            self.hints.learn(answer);
        }
        if self.initialize {
            self.version = jsonrpc::result_of(answer).and_then(jsonrpc::protocol_version);
        }
    }
}

/// The request as it goes to `link`'s backend (or, without a link, to any).
fn outgoing<'t>(
    trip: &'t Trip<'_, '_>,
    link: Option<&'t Link>,
    client_headers: Option<&'t http::HeaderMap>,
) -> Outgoing<'t> {
    let msg = trip.msg;
    Outgoing {
        method: msg.method.clone(),
        path: msg.path,
        client_headers,
        session: link.map(|l| l.session.as_str()),
        // The client's own header says it, when the client's headers go along.
        protocol_version: link
            .and_then(|l| l.version.as_deref())
            .or(msg.version)
            .filter(|_| client_headers.is_none()),
        mcp: msg.mcp,
        accept: msg.accept,
        content_type: msg.content_type,
        body: trip.body.clone(),
        forwarded: &msg.caller.forwarded,
        principal: msg.caller.principal_header(),
        keep_credentials: false,
        shared: msg.pool.http2_streams && msg.method == http::Method::GET,
    }
}

/// Whether a 400 answer says the server does not know the session: a
/// JSON-RPC error for no request (`id` null or absent — the message was
/// not taken) that speaks of the session.
fn forgot_session(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Refusal {
        #[serde(default)]
        id: Option<serde_json::Value>,
        error: Option<Error>,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Refusal>(body).is_ok_and(|r| {
        r.id.is_none_or(|id| id.is_null())
            && r.error
                .is_some_and(|e| e.message.to_ascii_lowercase().contains("session"))
    })
}

/// A client's answer to a server request goes only to the backend session
/// that asked ([`asks`]): its original ids are restored, and an answer to
/// another backend session (one the session has moved away from) is refused.
fn to_asker(body: &Bytes, target: Target<'_>) -> Result<Bytes, Reject> {
    match asks::unmark(body) {
        asks::Answer::Unmarked => Ok(body.clone()),
        asks::Answer::Mixed => Err(Reject::AnswerUndeliverable),
        asks::Answer::Marked { tag, body } => {
            let here = match target {
                Target::Session(binding) => binding.tag() == Some(tag),
                Target::Anywhere { .. } => false,
            };
            if !here {
                tracing::info!(
                    "an answer to a server request of a backend session that is gone; refused"
                );
                return Err(Reject::AnswerUndeliverable);
            }
            Ok(body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::forgot_session;

    #[test]
    fn a_400_for_no_request_that_speaks_of_the_session_means_the_session_is_unknown() {
        let forgot = br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#;
        assert!(forgot_session(forgot));
        let answered =
            br#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"bad session argument"},"id":4}"#;
        assert!(
            !forgot_session(answered),
            "an answer to the request was taken by the server"
        );
        assert!(!forgot_session(
            br#"{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid"},"id":null}"#
        ));
        assert!(!forgot_session(b"not json"));
    }
}
