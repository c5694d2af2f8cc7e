//! The Streamable HTTP transport (`/mcp`, sessions and stateless
//! 2026-07-28 requests): one exchange with a backend per client request,
//! through the session layer and the one upstream client.
//!
//! A request with a session id goes to the backend its session lives on;
//! one without goes to the least-loaded healthy backend. When the backend
//! is lost, what happens depends on what it may have done (`session::replay`):
//!
//! - it never got the request (connection refused; it answered 404 for a
//!   session it no longer knows; 503 while draining): the session moves to
//!   another backend (`session::failover`) and the request is sent there;
//! - it may have got it (reset, timeout, a stream cut before the answer):
//!   the request is sent again on the moved session only if that is safe,
//!   else the client gets an "outcome unknown" JSON-RPC error.
//!
//! A client stream that is already open (a `GET /mcp` stream, or a POST's
//! SSE answer under way) stays open across the move: the gateway continues
//! it from the new backend, at an event boundary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::metrics::{Metrics, Transport};
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::pool::outlier::Outcome;
use crate::pool::{BackendState, LoadGuard, Pool};
use crate::reject::Reject;
pub use crate::relay::Rewrite;
use crate::relay::{self, Downstream, Failure, Shape};
use crate::session::{ATTEMPTS, Pinned, Sessions, asks, failover, replay};
use crate::state::State;
use crate::upstream::{self, Forwarded, Frames, Outgoing, SESSION_HEADER, Upstream};

/// A request the policy steps let through.
pub struct Admitted {
    pub pool: Arc<Pool>,
    pub rpc: Option<Rpc>,
    pub body: Bytes,
    pub pinned: Option<Pinned>,
    pub forwarded: Forwarded,
    /// Who the client is ("" when anonymous); sealed into new session ids
    /// and sent to backends in `principal_header`.
    pub principal: String,
    pub principal_header: http::HeaderName,
    /// Applied to the answers (the `tools/list` filter of a restricted principal).
    pub rewrite: Option<Rewrite>,
}

pub struct Streamable {
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub upstream: Arc<Upstream>,
}

/// The backend that served a request (for the access log).
pub struct Served {
    pub backend: Arc<BackendState>,
    _load: LoadGuard,
}

/// Set on an answer whose session moved to another backend on the way.
pub const MOVED_HEADER: &str = "x-mcp-gateway-moved";

/// A `GET /mcp` stream that lived this long has earned fresh attempts.
const STREAM_SETTLED: Duration = Duration::from_secs(5);

/// What one attempt came to.
enum Step {
    Done,
    /// Try again (the session may have moved).
    Again,
}

/// One client request's walk through backends.
struct Exchange<'a> {
    t: &'a Streamable,
    req: &'a mut Admitted,
    method: http::Method,
    path: String,
    /// Safe to send again after it may have reached a backend.
    repeatable: bool,
    /// The client's event stream is open (its header went out).
    open: bool,
    /// The backend that last failed this request (a sessionless request goes
    /// elsewhere next), and whether the request was lost on it.
    failed: Option<String>,
    lost: bool,
    /// The session moved to another backend while serving this request.
    moved: bool,
    /// A `GET` resuming a stream from the client's `Last-Event-ID`.
    resuming: bool,
}

impl Streamable {
    /// Sends the request to its backend and relays the answer, moving the
    /// session when its backend is lost.
    pub async fn serve(
        &self,
        session: &mut Session,
        req: &mut Admitted,
        served: &mut Option<Served>,
    ) -> Result<(), Failure> {
        let method = session.req_header().method.clone();
        let path = backend_path(&req.pool, session.req_header());
        let repeatable = match &req.rpc {
            Some(r) => {
                !r.batch && replay::safe_to_repeat(&r.method, self.sessions.hints(&req.pool))
            }
            None => true, // a GET stream or a DELETE
        };
        if let Some(Rpc {
            method: Method::Response,
            ..
        }) = &req.rpc
        {
            check_answer(req)?;
        }
        let resuming = method == http::Method::GET
            && session.req_header().headers.contains_key("last-event-id");
        let mut x = Exchange {
            t: self,
            resuming,
            req,
            method,
            path,
            repeatable,
            open: false,
            failed: None,
            lost: false,
            moved: false,
        };
        let started = Instant::now();
        let result = x.run(session, served).await;
        let result = match result {
            // Never a whole response into an open stream: the error becomes an event.
            Err(Failure::Reject(r)) if x.open => x.end_with_error(session, &r).await,
            other => other,
        };
        if let Some(rpc) = &req.rpc {
            let transport = if req.pinned.is_some() || rpc.is_initialize() {
                Transport::Streamable
            } else {
                Transport::Stateless
            };
            self.sessions.record(
                &self.state.metrics,
                &req.pool,
                transport,
                &rpc.method,
                started.elapsed(),
            );
        }
        result
    }
}

impl Exchange<'_> {
    async fn run(
        &mut self,
        session: &mut Session,
        served: &mut Option<Served>,
    ) -> Result<(), Failure> {
        let mut tries = 0;
        loop {
            tries += 1;
            if tries > 2 * ATTEMPTS {
                // Backends answered but failed it: a gateway error, not "none available".
                return Err(if self.lost {
                    Reject::BadGateway
                } else {
                    Reject::NoBackend
                }
                .into());
            }
            let backend = match self.req.pinned.as_ref() {
                Some(Pinned {
                    backend: Some(b), ..
                }) => Arc::clone(b),
                Some(_) => {
                    self.move_session().await?;
                    continue;
                }
                None => self
                    .req
                    .pool
                    .pick_except(self.failed.as_deref())
                    // Lost on a backend with none left to try: the backend failed it.
                    .ok_or(if self.lost {
                        Reject::BadGateway
                    } else {
                        Reject::NoBackend
                    })?,
            };
            let load = backend.start_request();
            let sent_at = Instant::now();
            let sent = self
                .t
                .upstream
                .send(
                    backend.addr,
                    Outgoing {
                        method: self.method.clone(),
                        path: &self.path,
                        client_headers: Some(&session.req_header().headers),
                        session: self.req.pinned.as_ref().map(|p| p.backend_session.as_str()),
                        protocol_version: None,
                        accept: None,
                        content_type: None,
                        body: self.req.body.clone(),
                        forwarded: &self.req.forwarded,
                        principal: Some((&self.req.principal_header, &self.req.principal)),
                        keep_credentials: false,
                    },
                )
                .await;
            if let Ok((parts, _)) = &sent {
                self.req.pool.upstream_seconds.observe(sent_at.elapsed());
                self.req
                    .pool
                    .record(&backend, Outcome::Answered(parts.status.as_u16()));
            }
            *served = Some(Served {
                backend: Arc::clone(&backend),
                _load: load,
            });
            let (parts, frames) = match sent {
                Ok(answer) => answer,
                Err(e) if e.never_reached() => {
                    self.failed = Some(backend.id.clone());
                    self.t.sessions.eject(&self.req.pool, &backend);
                    if self.req.pinned.is_some() {
                        self.move_session().await?;
                    }
                    continue;
                }
                Err(e) => {
                    self.req.pool.record(&backend, Outcome::Lost);
                    Metrics::inc(&self.t.state.metrics.upstream_errors);
                    tracing::warn!(backend = %backend.id, error = %e, "backend exchange failed");
                    self.failed = Some(backend.id.clone());
                    self.after_loss().await?;
                    continue;
                }
            };
            let started = Instant::now();
            match self.answer(session, &backend, parts, frames).await? {
                Step::Done => return Ok(()),
                Step::Again if started.elapsed() > STREAM_SETTLED => tries = 0,
                Step::Again => {}
            }
        }
    }

    /// Handles one backend answer: relays it, or says to try again.
    async fn answer(
        &mut self,
        session: &mut Session,
        backend: &Arc<BackendState>,
        parts: http::response::Parts,
        frames: Frames,
    ) -> Result<Step, Failure> {
        if let Some(name) = parts
            .headers
            .get(upstream::INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            backend.note_instance(name);
        }
        let status = parts.status.as_u16();
        // Answers that say the request was not run: move (or go elsewhere) and send it again.
        if status == 404 && self.req.pinned.is_some() {
            failover::read_messages(&parts.headers, frames).await;
            if self.method == http::Method::DELETE {
                // The session is already gone there; so be it.
                if let Some(p) = &self.req.pinned {
                    self.t.sessions.forget(p);
                }
                Downstream::new(session, &self.t.state)
                    .whole(
                        ResponseHeader::build(200, None).map_err(Failure::Abort)?,
                        Bytes::new(),
                    )
                    .await?;
                return Ok(Step::Done);
            }
            self.move_session().await?;
            return Ok(Step::Again);
        }
        if status == 503 && !self.open {
            failover::read_messages(&parts.headers, frames).await;
            // Draining or overloaded (the pool has recorded it: new work goes
            // elsewhere for a moment).
            if self.req.pinned.is_some() {
                self.move_session().await?;
            }
            return Ok(Step::Again);
        }
        let head = if self.open {
            None
        } else {
            Some(self.head(backend, &parts)?)
        };
        let mut down = Downstream::new(session, &self.t.state);
        let learn = matches!(
            self.req.rpc,
            Some(Rpc {
                method: Method::ToolsList,
                ..
            })
        );
        let hints = self.t.sessions.hints(&self.req.pool);
        let relayed = if upstream::is_event_stream(&parts.headers) {
            let _open = backend.stream_opened();
            let answer_to = self
                .req
                .rpc
                .as_ref()
                .filter(|r| !r.batch)
                .and_then(Rpc::id_text);
            let mut inspect = |ev: &mcp_sse::Event| {
                if learn && let Some(d) = ev.data() {
                    hints.learn(&d);
                }
            };
            let server_stream = self.method == http::Method::GET;
            let shape = Shape {
                rewrite: self.req.rewrite.as_ref(),
                asks: self.req.pinned.as_ref().and_then(Pinned::tag),
            };
            relay::relay_events(
                &mut down,
                head,
                frames,
                answer_to,
                server_stream,
                shape,
                &mut inspect,
            )
            .await
            .map(|seen| {
                if let Some(rest) = seen.rest {
                    relay::drain(rest);
                }
            })
        } else {
            match head {
                Some(head) => {
                    relay::relay_plain(
                        &mut down,
                        head,
                        frames,
                        self.req.rewrite.as_ref(),
                        &mut |body| {
                            if learn {
                                hints.learn(&String::from_utf8_lossy(body));
                            }
                        },
                    )
                    .await
                }
                // A JSON answer from the new backend into a stream already open.
                None => down.event_then_end(frames).await,
            }
        };
        match relayed {
            Ok(()) if self.method == http::Method::GET && self.open => {
                // A JSON answer ended a reopened server stream: nothing more to do.
                Ok(Step::Done)
            }
            Ok(()) => {
                if let Some(Rpc {
                    method: Method::ToolsCall { .. },
                    ..
                }) = &self.req.rpc
                {
                    Metrics::inc(&self.t.state.metrics.tool_calls);
                }
                Ok(Step::Done)
            }
            Err(Failure::BackendLost { open: true }) if self.resuming => {
                // A resumption (Last-Event-ID) ends where the backend ends
                // it: opening it again with the same id would replay the
                // same events twice. The client resumes from its own last id.
                Downstream::new(session, &self.t.state).finish().await?;
                Ok(Step::Done)
            }
            Err(Failure::BackendLost { open }) if self.method == http::Method::GET => {
                // The server stream ended or broke: open it again (a dead
                // backend or a forgotten session shows on the next attempt).
                self.open |= open;
                Ok(Step::Again)
            }
            Err(Failure::BackendLost { open }) => {
                self.req.pool.record(backend, Outcome::Lost);
                self.open |= open;
                self.failed = Some(backend.id.clone());
                Metrics::inc(&self.t.state.metrics.upstream_errors);
                self.after_loss().await?;
                Ok(Step::Again)
            }
            Err(other) => Err(other),
        }
    }

    /// The backend may have had the request: move on if repeating is safe.
    async fn after_loss(&mut self) -> Result<(), Failure> {
        self.lost = true;
        if !self.repeatable {
            Metrics::inc(&self.t.state.metrics.outcome_unknown);
            return Err(Reject::OutcomeUnknown.into());
        }
        if self.req.pinned.is_some() {
            self.move_session().await?;
        }
        Ok(())
    }

    async fn move_session(&mut self) -> Result<(), Failure> {
        let Some(pinned) = self.req.pinned.as_mut() else {
            return Ok(());
        };
        self.t
            .sessions
            .fail_over(
                &self.t.upstream,
                &self.req.pool,
                pinned,
                &self.req.forwarded,
            )
            .await?;
        self.moved = true;
        Metrics::inc(&self.t.state.metrics.failovers);
        if matches!(
            self.req.rpc,
            Some(Rpc {
                method: Method::Response,
                ..
            })
        ) {
            // The session lives on elsewhere, but the request this answers
            // died with its backend: never hand the answer to another one.
            return Err(Reject::AnswerUndeliverable.into());
        }
        Ok(())
    }

    /// The client's response header, from the backend's.
    fn head(
        &self,
        backend: &BackendState,
        parts: &http::response::Parts,
    ) -> Result<ResponseHeader, Failure> {
        let mut status = parts.status.as_u16();
        // rmcp answers a session DELETE with 202; clients expect 200/204.
        if self.method == http::Method::DELETE && status == 202 {
            status = 200;
        }
        if self.method == http::Method::DELETE
            && (200..300).contains(&status)
            && let Some(p) = &self.req.pinned
        {
            self.t.sessions.forget(p);
        }
        let mut head = ResponseHeader::build(status, Some(8)).map_err(Failure::Abort)?;
        for (name, value) in upstream::response_headers(&parts.headers) {
            head.append_header(name.clone(), value.clone())
                .map_err(Failure::Abort)?;
        }
        if self.moved {
            // Says only that the session moved (for clients' diagnostics and
            // benchmarks), never where.
            head.insert_header(MOVED_HEADER, "1")
                .map_err(Failure::Abort)?;
        }
        if let Some(sid) = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            && self.req.pinned.is_none()
        {
            // A new backend session: the client gets a sealed id naming it,
            // with what is needed to re-create it elsewhere.
            let init = jsonrpc::params_of(&self.req.body).unwrap_or("");
            let token = self
                .t
                .sessions
                .pin(&self.req.pool, backend, sid, &self.req.principal, init)
                .ok_or(Reject::BadGateway)?;
            head.insert_header(SESSION_HEADER, token)
                .map_err(Failure::Abort)?;
            Metrics::inc(&self.t.state.metrics.sessions_issued);
        }
        Ok(head)
    }

    /// Ends an open client stream with a JSON-RPC error for the request.
    async fn end_with_error(&mut self, session: &mut Session, r: &Reject) -> Result<(), Failure> {
        self.t.state.metrics.reject(r.reason());
        let id = self.req.rpc.as_ref().and_then(|r| r.id.as_deref());
        let mut down = Downstream::new(session, &self.t.state);
        match id {
            Some(id) => {
                let body = jsonrpc::error_body(Some(id), r.code(), &r.to_string());
                let event = mcp_sse::format(Some("message"), None, &String::from_utf8_lossy(&body));
                down.send(event).await?;
                down.finish().await
            }
            // A server stream with no request to answer: just end it.
            None => down.finish().await,
        }
    }
}

/// A client's answer to a server request goes only to the backend session
/// that asked ([`asks`]): its original ids are restored, and an answer to
/// another backend session (one the session has moved away from) is refused.
fn check_answer(req: &mut Admitted) -> Result<(), Reject> {
    match asks::unmark(&req.body) {
        asks::Answer::Unmarked => Ok(()),
        asks::Answer::Mixed => Err(Reject::AnswerUndeliverable),
        asks::Answer::Marked { tag, body } => {
            let asker_here = req.pinned.as_ref().and_then(Pinned::tag) == Some(tag);
            if !asker_here {
                tracing::info!(
                    "an answer to a server request of a backend session that is gone; refused"
                );
                return Err(Reject::AnswerUndeliverable);
            }
            req.body = body;
            Ok(())
        }
    }
}

/// The request's path and query as the backend serves them (pool prefix removed).
fn backend_path(pool: &Pool, req: &pingora::http::RequestHeader) -> String {
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    pq.strip_prefix(pool.prefix.as_str())
        .unwrap_or(pq)
        .to_owned()
}
