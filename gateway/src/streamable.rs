//! The Streamable HTTP transport (`/mcp`, sessions and stateless
//! 2026-07-28 requests): each client request is one message for the
//! session layer's exchange (`session::exchange`), answered through a
//! [`Downstream`]. A request with a session id goes where its session
//! lives; one without goes to the least-loaded healthy backend, and a
//! session it opens is sealed into the id the client gets. A `DELETE` that
//! ends a session is recorded in the store the replicas share (if any)
//! before the client hears it ended ([`Ending`]), so no replica serves the
//! id after that.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::value::RawValue;

use crate::metrics::{Metrics, Transport};
use crate::policy::jsonrpc::Rpc;
use crate::pool::revision::Revision;
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::relay::{self, Answer, Downstream, Failure, Pass, Seen, Shape, Sink};
use crate::revisions::carried::{Carrier, Carrying};
use crate::revisions::{Bridged, Call, Revisions};
use crate::session::exchange::{Exchange, Message, Target};
use crate::session::{Binding, Caller, Sessions};
use crate::state::State;
use crate::stdio::STDIO_MEMBER;
use crate::upstream::{Outgoing, SESSION_HEADER, Upstream, UpstreamError};

/// Marks a request relayed from another replica (never relayed again).
const RELAYED: &str = "x-mcp-gateway-relayed";

/// A request the policy steps let through.
pub struct Admitted {
    pub pool: Arc<Pool>,
    pub body: Bytes,
    /// The client's session, when its request carries an id.
    pub binding: Option<Binding>,
    pub caller: Caller,
}

pub struct Streamable {
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub upstream: Arc<Upstream>,
    /// The version bridge's held sessions and paused calls.
    pub revisions: Arc<Revisions>,
}

impl Streamable {
    /// Sends the request to its backend and relays the answer; returns the
    /// backend that had it last (for the access log).
    pub async fn serve(
        &self,
        session: &mut Session,
        req: Admitted,
        rpc: Option<&Rpc>,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        if let Some((rpc, rev)) = bridged(session, &req, rpc) {
            return self.bridge(session, req, rpc, &rev).await;
        }
        if req.binding.as_ref().is_some_and(Binding::carried)
            || (req.binding.is_none() && rpc.is_some_and(Rpc::is_initialize))
                && req.pool.stateless_only().is_some()
        {
            return self.carry(session, req, rpc).await;
        }
        let owner = self.stdio_owner(session, &req);
        let head = session.req_header();
        let method = head.method.clone();
        let path = backend_path(&req.pool, head);
        let resuming = method == http::Method::GET && head.headers.contains_key("last-event-id");
        let transport = if req.binding.is_some() || rpc.is_some_and(Rpc::is_initialize) {
            Transport::Streamable
        } else {
            Transport::Stateless
        };
        let msg = Message {
            pool: &req.pool,
            method,
            path: &path,
            body: req.body,
            rpc,
            caller: &req.caller,
            transport,
            accept: None,
            content_type: None,
            resuming,
            version: None,
            mcp: None,
            notice: None,
            divert: None,
        };
        let target = match &req.binding {
            Some(binding) => Target::Session(binding),
            None => Target::Anywhere { seal: true },
        };
        if let Some(owner) = owner
            && self.relayed(session, &owner, &msg).await?
        {
            return Ok(None);
        }
        let mut down = Downstream::new(session, &self.state);
        let exchange = Exchange {
            sessions: &self.sessions,
            upstream: &self.upstream,
            state: &self.state,
        };
        let outcome = match &req.binding {
            Some(binding) if msg.method == http::Method::DELETE => {
                let mut ending = Ending {
                    down: &mut down,
                    sessions: &self.sessions,
                    binding,
                };
                exchange.run(&msg, target, &mut ending).await?
            }
            _ => exchange.run(&msg, target, &mut down).await?,
        };
        if outcome.answered.is_some_and(|a| a.gone) {
            // The session was already gone there: ended, as the client asked.
            if let Some(binding) = &req.binding {
                self.sessions.end_shared(binding).await;
            }
            let ok = ResponseHeader::build(200, None).map_err(Failure::Abort)?;
            down.whole(ok, Bytes::new()).await?;
        }
        Ok(outcome.backend)
    }
}

/// A stateless request to a pool whose servers speak only sessions: the
/// version bridge carries it (`revisions/`).
fn bridged<'r>(
    session: &Session,
    req: &Admitted,
    rpc: Option<&'r Rpc>,
) -> Option<(&'r Rpc, Arc<Revision>)> {
    if req.binding.is_some() || session.req_header().method != http::Method::POST {
        return None;
    }
    let rpc = rpc.filter(|r| !r.is_initialize())?;
    Some((rpc, req.pool.session_only()?))
}

impl Streamable {
    async fn bridge(
        &self,
        session: &mut Session,
        req: Admitted,
        rpc: &Rpc,
        rev: &Revision,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let mut down = Downstream::new(session, &self.state);
        let bridged = Bridged {
            sessions: &self.sessions,
            upstream: &self.upstream,
            state: &self.state,
            revisions: &self.revisions,
        };
        let call = Call {
            pool: &req.pool,
            rev,
            body: req.body,
            rpc,
            caller: &req.caller,
        };
        bridged.serve(&mut down, call).await
    }

    /// A session client's message for servers that speak only 2026-07-28
    /// (`revisions/carried.rs`): its `initialize`, or a session the gateway
    /// keeps alone.
    async fn carry(
        &self,
        session: &mut Session,
        req: Admitted,
        rpc: Option<&Rpc>,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let method = session.req_header().method.clone();
        let mut down = Downstream::new(session, &self.state);
        let refused = match (&req.binding, rpc) {
            (Some(binding), _) if method == http::Method::DELETE => {
                self.sessions.forget(binding);
                self.sessions.end_shared(binding).await;
                down.json(200, Bytes::new()).await?;
                return Ok(None);
            }
            (_, Some(rpc)) if method == http::Method::POST => {
                let carrier = Carrier {
                    sessions: &self.sessions,
                    upstream: &self.upstream,
                    state: &self.state,
                };
                let msg = Carrying {
                    pool: &req.pool,
                    body: req.body,
                    rpc,
                    caller: &req.caller,
                    session: req.binding.as_ref(),
                    transport: Transport::Streamable,
                };
                let rev = req.pool.stateless_only();
                return carrier.serve(msg, rev.as_deref(), &mut down).await;
            }
            // No server stream: 2026-07-28 has none a session client could read.
            _ => Reject::Method {
                allow: "POST, DELETE",
            },
        };
        relay::refuse(&mut down, &self.state.metrics, &refused, None).await?;
        Ok(None)
    }

    /// The replica holding a stdio session's process, when it is another
    /// one: the session's sealed member is a stdio host of another replica
    /// (`stdio@ADDRESS`, with `[cluster] advertise`) and this replica has
    /// not moved it here. A request relayed once is never relayed again.
    fn stdio_owner(&self, session: &Session, req: &Admitted) -> Option<String> {
        let binding = req.binding.as_ref()?;
        if !req.pool.stdio {
            return None;
        }
        if binding.current().is_some() {
            return None; // its member is here
        }
        let head = session.req_header();
        if head.headers.contains_key(RELAYED) {
            return None;
        }
        let token = head.headers.get(SESSION_HEADER)?.to_str().ok()?;
        // A second open, only for a session whose member is not here.
        let sealed = self.sessions.sealer().open(token).ok()?;
        let owner = sealed
            .backend
            .strip_prefix(STDIO_MEMBER)?
            .strip_prefix('@')?;
        Some(owner.to_owned())
    }

    /// Serves a stdio session's request from the replica holding its
    /// process; `false` when that replica is gone (the session then moves
    /// to a process here, as any lost backend's would).
    async fn relayed(
        &self,
        session: &mut Session,
        owner: &str,
        msg: &Message<'_>,
    ) -> Result<bool, Failure> {
        let head = session.req_header();
        let (headers, uri) = (head.headers.clone(), head.uri.clone());
        let mut down = Downstream::new(session, &self.state);
        match self.to_replica(&mut down, owner, msg, &headers, &uri).await {
            Ok(()) => Ok(true),
            Err(UpstreamError::Connect(e)) => {
                tracing::info!(%owner, error = %e, "the replica holding a stdio session is gone; moving the session here");
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(%owner, error = %e, "relay to the replica holding a stdio session failed");
                let id = msg.rpc.and_then(|r| r.id.as_deref());
                relay::refuse(&mut down, &self.state.metrics, &Reject::BadGateway, id).await?;
                Ok(true)
            }
        }
    }

    /// Relays the client's request whole to the replica `owner` (its
    /// credentials too: the owner checks them itself) and its answer back.
    /// `Err(Connect)`: the owner is not there, nothing was sent.
    async fn to_replica(
        &self,
        down: &mut Downstream<'_>,
        owner: &str,
        msg: &Message<'_>,
        headers: &http::HeaderMap,
        uri: &http::Uri,
    ) -> Result<(), UpstreamError> {
        let addr = owner
            .parse()
            .map_err(|_| UpstreamError::Connect(format!("not an address: {owner}")))?;
        let mut relayed = headers.clone();
        relayed.insert(RELAYED, http::HeaderValue::from_static("1"));
        let token = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
        let out = Outgoing {
            client_headers: Some(&relayed),
            session: token,
            body: msg.body.clone(),
            keep_credentials: true,
            ..Outgoing::own(
                msg.method.clone(),
                uri.path_and_query().map_or("/", |p| p.as_str()),
                &msg.caller.forwarded,
            )
        };
        let (parts, frames) = self.upstream.send(addr, out).await?;
        Metrics::inc(&self.state.metrics.stdio_relayed);
        let answer = Answer {
            parts,
            frames,
            pass: Pass::new(None, Shape::default(), None),
            server_stream: msg.method == http::Method::GET,
            session: None,
            moved: false,
        };
        match down.relay(answer).await {
            Ok(seen) => {
                if let Some(rest) = seen.rest {
                    relay::drain(rest);
                }
                Ok(())
            }
            Err(Failure::BackendLost { open: true }) => {
                let _ = down.finish().await;
                Ok(())
            }
            Err(_) => Err(UpstreamError::Failed("the relayed answer broke".into())),
        }
    }
}

/// The client's sink for a `DELETE` of its session: a success answer is
/// relayed only after the session's end is recorded for every replica.
struct Ending<'a, 'b> {
    down: &'a mut Downstream<'b>,
    sessions: &'a Sessions,
    binding: &'a Binding,
}

impl Sink for Ending<'_, '_> {
    fn client_headers(&self) -> Option<&HeaderMap> {
        self.down.client_headers()
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        if answer.parts.status.is_success() {
            self.sessions.end_shared(self.binding).await;
        }
        self.down.relay(answer).await
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

/// The request's path and query as the backend serves them (pool prefix removed).
fn backend_path(pool: &Pool, req: &pingora::http::RequestHeader) -> String {
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    pq.strip_prefix(pool.prefix.as_str())
        .unwrap_or(pq)
        .to_owned()
}
