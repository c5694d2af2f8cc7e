//! The session layer: both transports come here, never to each other.
//! It maps a path to a pool, picks a backend for a new session or a
//! sessionless request, pins a backend session by sealing it into the id the
//! client sees, opens that id again on later requests, and takes a backend
//! that refused a connection out of rotation for a while.

use std::sync::Arc;

use crate::policy::edge::{self, Endpoint};
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::token::TokenSealer;

/// Backends tried for one request that may go anywhere (a new session or a
/// sessionless request) when each refuses the connection.
pub const ATTEMPTS: usize = 3;

/// A request's session, once its id has been opened.
#[derive(Clone)]
pub struct Pinned {
    pub backend: Arc<BackendState>,
    /// The backend's own session id (never shown to the client).
    pub backend_session: String,
}

pub struct Sessions {
    /// Longest prefix first, so "/a/b" wins over "/a".
    pools: Vec<Arc<Pool>>,
    sealer: TokenSealer,
}

impl Sessions {
    pub fn new(mut pools: Vec<Arc<Pool>>, sealer: TokenSealer) -> Self {
        pools.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        Self { pools, sealer }
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Which pool and endpoint a path names.
    pub fn route(&self, path: &str) -> Result<(Arc<Pool>, Endpoint), Reject> {
        self.pools
            .iter()
            .find_map(|pool| {
                let rest = pool.strip(path)?;
                edge::endpoint(rest).map(|e| (Arc::clone(pool), e))
            })
            .ok_or(Reject::NoRoute)
    }

    /// Opens a client's session id: the backend it is pinned to must still
    /// be a member of the pool the request came to.
    pub fn open(&self, pool: &Pool, token: &str) -> Result<Pinned, Reject> {
        let opened = self
            .sealer
            .open(token)
            .map_err(|e| Reject::UnknownSession(e.to_string()))?;
        if opened.pool != pool.index {
            return Err(Reject::UnknownSession(
                "the session belongs to another route".into(),
            ));
        }
        let backend = pool
            .member(&opened.backend)
            .ok_or_else(|| Reject::UnknownSession("the session's backend is gone".into()))?;
        Ok(Pinned {
            backend,
            backend_session: opened.backend_session,
        })
    }

    /// The backend for a new session or a sessionless request.
    pub fn pick(&self, pool: &Pool) -> Result<Arc<BackendState>, Reject> {
        pool.pick().ok_or(Reject::NoBackend)
    }

    /// Seals a new backend session into the id the client will use.
    pub fn pin(
        &self,
        pool: &Pool,
        backend: &BackendState,
        backend_session: &str,
    ) -> Option<String> {
        let token = self
            .sealer
            .issue(pool.index, backend.addr, backend_session)?;
        backend.session_opened();
        Some(token)
    }

    /// A backend refused a connection: no new work for it for a while.
    pub fn eject(&self, pool: &Pool, backend: &BackendState) {
        backend.eject(pool.eject_for);
        tracing::warn!(pool = %pool.name, backend = %backend.addr, "backend refused a connection; ejected");
    }
}
