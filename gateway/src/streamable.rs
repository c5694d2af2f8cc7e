//! The Streamable HTTP transport (`/mcp`, sessions and stateless
//! 2026-07-28 requests): each client request is one message for the
//! session layer's exchange (`session::exchange`), answered through a
//! [`Downstream`]. A request with a session id goes where its session
//! lives; one without goes to the least-loaded healthy backend, and a
//! session it opens is sealed into the id the client gets.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::metrics::Transport;
use crate::policy::jsonrpc::Rpc;
use crate::pool::{BackendState, Pool};
use crate::relay::{Downstream, Failure};
use crate::session::exchange::{Exchange, Message, Target};
use crate::session::{Binding, Caller, Sessions};
use crate::state::State;
use crate::upstream::Upstream;

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
        };
        let target = match &req.binding {
            Some(binding) => Target::Session(binding),
            None => Target::Anywhere { seal: true },
        };
        let mut down = Downstream::new(session, &self.state);
        let exchange = Exchange {
            sessions: &self.sessions,
            upstream: &self.upstream,
            state: &self.state,
        };
        let outcome = exchange.run(&msg, target, &mut down).await?;
        if outcome.answered.is_some_and(|a| a.gone) {
            // The session was already gone there: ended, as the client asked.
            let ok = ResponseHeader::build(200, None).map_err(Failure::Abort)?;
            down.whole(ok, Bytes::new()).await?;
        }
        Ok(outcome.backend)
    }
}

/// The request's path and query as the backend serves them (pool prefix removed).
fn backend_path(pool: &Pool, req: &pingora::http::RequestHeader) -> String {
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    pq.strip_prefix(pool.prefix.as_str())
        .unwrap_or(pq)
        .to_owned()
}
