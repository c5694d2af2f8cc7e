//! The version bridge: a client's MCP revision is its own business, and a
//! server's its own. A stateless (2026-07-28) request to a pool whose
//! servers speak only sessions (`Pool::session_only`, learned by
//! `pool/revision.rs`) is served here:
//!
//! - `server/discover` is answered by the gateway from the server's own
//!   `initialize` result (`revision::discover_result`);
//! - every other request is carried over a backend session the gateway
//!   holds for the principal and the capabilities the request declares
//!   ([`held`]), through the one exchange (so failover, replay and the
//!   principal header hold as for any session);
//! - a server request mid-call (sampling, elicitation, roots) becomes the
//!   call's `input_required` answer and the call waits, parked, for the
//!   client's retry ([`rounds`]);
//! - what 2026-07-28 removed or has no session form for is refused with a
//!   JSON-RPC error naming both revisions ([`Reject::Revisions`]).

pub mod carried;
pub mod held;
pub mod rounds;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::value::RawValue;

use crate::asks::Tag;
use crate::metrics::Transport;
use crate::policy::jsonrpc::{Method, Rpc};
use crate::pool::revision::{self, Revision};
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::relay::{self, Answer, Downstream, Failure, Pass, Seen, Shape, Sink};
use crate::session::exchange::{Exchange, Message, Target};
use crate::session::{Caller, Link, Sessions};
use crate::state::State;
use crate::upstream::Upstream;
use held::Held;
use rounds::{Diverter, Parked, Rounds};

/// The bridge's tables: the backend sessions held and the calls paused.
pub struct Revisions {
    pub held: Held,
    pub rounds: Rounds,
}

impl Revisions {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Self {
            held: Held::new(Arc::clone(&upstream)),
            rounds: Rounds::new(upstream),
        }
    }

    /// Ends what has waited or idled too long (the caches evict only when
    /// used; the reloader's tidy timer calls this every 10 s).
    pub fn tidy(&self) {
        self.held.tidy();
        self.rounds.tidy();
    }
}

/// What serving a bridged request needs of the gateway.
pub struct Bridged<'a> {
    pub sessions: &'a Sessions,
    pub upstream: &'a Upstream,
    pub state: &'a State,
    pub revisions: &'a Revisions,
}

/// One stateless request for a pool whose servers speak only sessions.
pub struct Call<'r> {
    pub pool: &'r Arc<Pool>,
    /// What its servers speak.
    pub rev: &'r Revision,
    pub body: Bytes,
    pub rpc: &'r Rpc,
    pub caller: &'r Caller,
}

impl Bridged<'_> {
    /// Serves `call`; every refusal is written to `down`.
    pub async fn serve(
        &self,
        down: &mut Downstream<'_>,
        call: Call<'_>,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let id = call.rpc.id.as_deref();
        match self.route(down, call).await {
            Err(Failure::Reject(r)) => {
                relay::refuse(down, &self.state.metrics, &r, id).await?;
                Ok(None)
            }
            other => other,
        }
    }

    async fn route(
        &self,
        down: &mut Downstream<'_>,
        call: Call<'_>,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let Call {
            pool,
            rev,
            body,
            rpc,
            caller,
        } = call;
        if rpc.batch {
            return Err(Reject::Revisions(format!(
                "batches are not part of MCP {}; this server speaks {}",
                revision::STATELESS,
                rev.versions.join(", ")
            ))
            .into());
        }
        match &rpc.method {
            Method::ServerDiscover => {
                let answer = response(rpc.id.as_deref(), revision::discover_result(rev));
                down.reply(Some(answer), None).await?;
                return Ok(None);
            }
            Method::Other(m) if m == "subscriptions/listen" || m == "resources/subscribe" => {
                return Err(Reject::Revisions(format!(
                    "{m} is not carried from MCP {} to a server that speaks only {} (its notifications need a session stream)",
                    revision::STATELESS,
                    rev.versions.join(", ")
                ))
                .into());
            }
            Method::Response => return Err(Reject::AnswerUndeliverable.into()),
            // Notifications (a cancel is the stream closing in 2026-07-28): taken.
            m if m.is_notification() => {
                down.reply(None, None).await?;
                return Ok(None);
            }
            _ => {}
        }
        let Some(client_id) = rpc.id_text() else {
            return Err(Reject::Invalid("a request needs an id".into()).into());
        };
        let method = rpc.method.as_str().unwrap_or_default();
        if let Some((state, response)) = rounds::retry_of(&body) {
            return self
                .resume(down, &state, response, client_id, method, caller)
                .await;
        }
        let holding = self.revisions.held.session(pool, rev, caller, &body);
        // Many clients' requests share the held session: each goes with an id of the gateway's.
        let own = rounds::own_id();
        let body =
            rounds::with_id(&body, &own).ok_or(Reject::Invalid("a request needs an id".into()))?;
        let diverter = Diverter::new(&own, client_id, method);
        let divert = |data: &str| diverter.divert(data);
        let msg = Message {
            divert: Some(&divert),
            ..Message::gateway(pool, body, Some(rpc), caller, Transport::Stateless)
        };
        let mut sink = Carried {
            down,
            diverter: &diverter,
            holding: &holding,
            link: None,
            revisions: self.revisions,
        };
        let exchange = Exchange {
            sessions: self.sessions,
            upstream: self.upstream,
            state: self.state,
        };
        let outcome = exchange
            .run(&msg, Target::Session(&holding.binding), &mut sink)
            .await?;
        Ok(outcome.backend)
    }

    /// A retry of a paused call: the client's answer to the server, then
    /// the rest of the call as this request's answer.
    async fn resume(
        &self,
        down: &mut Downstream<'_>,
        state: &str,
        response: Option<serde_json::Value>,
        client_id: &str,
        method: &str,
        caller: &Caller,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let unknown = || {
            Reject::Invalid(format!(
                "requestState is unknown or expired: a call paused for input waits {} s, on the gateway replica that paused it",
                rounds::PARKED_FOR.as_secs()
            ))
        };
        let parked = self
            .revisions
            .rounds
            .take(state, &caller.principal)
            .ok_or_else(unknown)?;
        let frames = parked
            .frames
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .ok_or_else(unknown)?;
        let delivered = match response {
            Some(r) => rounds::answer(self.upstream, &parked, "result", r).await,
            None => {
                let e = serde_json::json!({"code": -32602, "message": "the client's retry carried no inputResponses for the request"});
                rounds::answer(self.upstream, &parked, "error", e).await
            }
        };
        if !delivered {
            return Err(Reject::AnswerUndeliverable.into());
        }
        let diverter = Diverter::new(&parked.first_id, client_id, method);
        let divert = |data: &str| diverter.divert(data);
        let shape = Shape {
            rewrite: None,
            asks: None,
            divert: Some(&divert),
        };
        let (parts, ()) = http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "text/event-stream")
            .body(())
            .map_err(|_| Reject::BadGateway)?
            .into_parts();
        let answer = Answer {
            parts,
            frames,
            pass: Pass::new(Some(&parked.first_id), shape, None),
            server_stream: false,
            session: None,
            moved: false,
        };
        let mut sink = Carried {
            down,
            diverter: &diverter,
            holding: &parked.holding,
            link: Some(Arc::clone(&parked.link)),
            revisions: self.revisions,
        };
        match sink.relay(answer).await {
            Ok(_) => Ok(Some(Arc::clone(&parked.link.backend))),
            Err(Failure::BackendLost { open }) => {
                if !open {
                    return Err(Reject::OutcomeUnknown.into());
                }
                relay::refuse(
                    sink.down,
                    &self.state.metrics,
                    &Reject::OutcomeUnknown,
                    None,
                )
                .await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The client's sink for a bridged call: the gateway speaks for the client
/// to the backend (its 2026-07-28 headers do not go along: the backend
/// session's revision does), and a call that paused for input is parked.
struct Carried<'d, 's, 'p> {
    down: &'d mut Downstream<'s>,
    diverter: &'p Diverter<'p>,
    holding: &'p Arc<held::Holding>,
    /// The backend session the call runs on, when known (a resumed call's).
    link: Option<Arc<Link>>,
    revisions: &'p Revisions,
}

impl Carried<'_, '_, '_> {
    /// Parks the call when its answer was a server request diverted:
    /// the rest of the backend's stream (what followed the request in the
    /// same bytes put back in front), with the backend session that asked.
    fn park(&mut self, seen: &mut Seen, asker: Option<Tag>) {
        let asked = self.diverter.asked.lock().ok().and_then(|mut a| a.take());
        let Some((asked, first_id)) = asked else {
            return;
        };
        // The session the request went on: if the held session moved since,
        // the client's answer has nowhere to go (its retry hears so).
        let link = self.link.clone().or_else(|| {
            let now = self.holding.binding.current()?;
            (Some(now.tag()) == asker).then_some(now)
        });
        let (Some(link), Some(mut frames)) = (link, seen.rest.take()) else {
            return;
        };
        frames.unread(seen.diverted.take().unwrap_or_default());
        self.revisions.rounds.park(
            self.diverter.token.clone(),
            Parked {
                principal: self.holding.caller.principal.clone(),
                holding: Arc::clone(self.holding),
                link,
                asked,
                first_id,
                frames: Mutex::new(Some(frames)),
            },
        );
    }
}

impl Sink for Carried<'_, '_, '_> {
    fn client_headers(&self) -> Option<&HeaderMap> {
        None
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        let asker = answer.pass.asker();
        let mut seen = self.down.relay(answer).await?;
        self.park(&mut seen, asker);
        Ok(seen)
    }

    async fn write_refusal(
        &mut self,
        reject: &Reject,
        id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        self.down.write_refusal(reject, id).await
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        self.down.finish().await
    }

    async fn reply(&mut self, answer: Option<Bytes>, session: Option<&str>) -> Result<(), Failure> {
        self.down.reply(answer, session).await
    }
}

/// A client's sink as the gateway speaks for the client: the client's
/// headers (its revision's) do not go to the backend.
pub struct Speaking<'s, S> {
    pub inner: &'s mut S,
}

impl<S: Sink> Sink for Speaking<'_, S> {
    fn client_headers(&self) -> Option<&HeaderMap> {
        None
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        self.inner.relay(answer).await
    }

    async fn write_refusal(
        &mut self,
        reject: &Reject,
        id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        self.inner.write_refusal(reject, id).await
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        self.inner.finish().await
    }

    async fn reply(&mut self, answer: Option<Bytes>, session: Option<&str>) -> Result<(), Failure> {
        self.inner.reply(answer, session).await
    }
}

/// A JSON-RPC response with `result`.
fn response(id: Option<&RawValue>, result: serde_json::Value) -> Bytes {
    crate::policy::jsonrpc::result_body(id.map_or("null", RawValue::get), &result)
}
