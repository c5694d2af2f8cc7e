//! The legacy HTTP+SSE transport (2024-11-05), bridged onto Streamable HTTP
//! sessions so backends only ever serve `/mcp`.
//!
//! `GET /sse` opens a stream whose first event names a gateway-relative
//! `/messages?sessionId=…` ([`stream`]); each POST there (already checked by
//! the policy steps) is answered 202 at once and queued for the session's
//! worker ([`messages`]), which carries it to the session's backend through
//! the session layer's exchange — the same one Streamable HTTP requests
//! take — and whatever comes back (JSON or SSE) reaches the client as
//! `event: message` events on its stream ([`worker`]).
//!
//! Bounds: the session table is capped ([`table`]); each session's inbox is
//! bounded in messages and in bytes (503 when full); its calls to the backend
//! run at most `legacy_session_concurrency` at a time and each takes a unit
//! of the gateway's in-flight budget; its outbound queue is bounded, and a
//! client that cannot take an event within `write_timeout` is dropped.
//!
//! Replicas: with `[cluster] advertise` set, a session id is sealed and names
//! the replica holding the client's stream; a `POST /messages` that lands on
//! another replica is relayed there (once), so the seed's client works behind
//! a round-robin balancer in front of several gateways.

mod carried;
mod federated;
mod messages;
mod stream;
pub mod table;
mod worker;

use std::sync::Arc;

pub use messages::Located;

use crate::session::Sessions;
use crate::session::exchange::Exchange;
use crate::state::State;
use crate::upstream::Upstream;
use table::Table;

pub struct Bridge {
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub upstream: Arc<Upstream>,
    pub table: Table,
    /// This replica's address as other replicas reach it (`[cluster] advertise`).
    pub advertise: Option<String>,
}

impl Bridge {
    pub fn new(
        state: Arc<State>,
        sessions: Arc<Sessions>,
        upstream: Arc<Upstream>,
        max_sessions: usize,
        advertise: Option<String>,
    ) -> Self {
        let share = state.limits().client_share;
        Self {
            state,
            sessions,
            upstream,
            table: Table::new(max_sessions, share),
            advertise,
        }
    }

    fn exchange(&self) -> Exchange<'_> {
        Exchange {
            sessions: &self.sessions,
            upstream: &self.upstream,
            state: &self.state,
        }
    }
}
