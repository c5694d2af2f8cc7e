//! One gateway process's parts, assembled once at start and shared by the
//! proxy service and the admin listener.

use std::sync::Arc;

use crate::config::Limits;
use crate::legacy::Bridge;
use crate::pool::Pool;
use crate::session::Sessions;
use crate::state::State;
use crate::streamable::Streamable;
use crate::token::TokenSealer;
use crate::upstream::Upstream;

pub struct Gateway {
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub streamable: Streamable,
    pub legacy: Arc<Bridge>,
}

impl Gateway {
    pub fn new(
        limits: Limits,
        pools: Vec<Arc<Pool>>,
        sealer: TokenSealer,
        max_legacy_sessions: usize,
        advertise: Option<String>,
    ) -> Arc<Self> {
        let upstream = Arc::new(Upstream::new(
            limits.connect_timeout,
            limits.upstream_idle_timeout,
        ));
        let state = State::new(limits);
        let sessions = Arc::new(Sessions::new(pools, sealer));
        let streamable = Streamable {
            state: Arc::clone(&state),
            sessions: Arc::clone(&sessions),
            upstream: Arc::clone(&upstream),
        };
        let legacy = Arc::new(Bridge::new(
            Arc::clone(&state),
            Arc::clone(&sessions),
            upstream,
            max_legacy_sessions,
            advertise,
        ));
        Arc::new(Self {
            state,
            sessions,
            streamable,
            legacy,
        })
    }
}
