//! The session layer: both transports come here, never to each other.
//! It maps a path to a pool, picks a backend for a new session or a
//! sessionless request, pins a backend session by sealing it into the id the
//! client sees, opens that id again on later requests ([`Binding`]), takes a
//! backend that refused a connection out of rotation for a while, and
//! carries each message to a backend ([`exchange`]), moving the session when
//! its backend is gone ([`failover`]). With a store the replicas share, an
//! ended session is recorded there too ([`Sessions::end_shared`]), so every
//! replica refuses it (checked with the request's limits, `policy/shared.rs`).

pub mod binding;
pub mod exchange;
pub mod failover;
pub mod rebind;
pub mod replay;

use std::sync::Arc;
use std::time::Duration;

pub use binding::{Binding, Caller, Link};

use crate::cluster::Store;
use crate::metrics::{Metrics, Transport};
use crate::policy::edge::{self, Endpoint};
use crate::policy::jsonrpc::Method;
use crate::pool::outlier::Outcome;
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::token::{TokenSealer, now_secs};
use rebind::{NonceTable, Rebinds, Rebound};
use replay::ToolHints;

/// The key of a federated session's member `i` in this replica's tables:
/// the id's nonce with the member's index folded into its last bytes (ids'
/// nonces are random, so keys of two sessions do not meet).
pub fn member_key(nonce: [u8; 12], i: usize) -> [u8; 12] {
    let mut key = nonce;
    let [hi, lo] = (i as u16).to_be_bytes();
    key[10] ^= hi ^ 0x5a;
    key[11] ^= lo ^ 0xa5;
    key
}

/// The backend id sealed into a session the gateway keeps alone (see
/// [`Binding::carried`]); no backend has it (ids are addresses or names).
pub const CARRIED: &str = "~carried";

/// Backends tried to open a session elsewhere (and, twice over, to carry one
/// message: `exchange::TRIES`) before the gateway gives up.
pub const ATTEMPTS: usize = 3;
/// Most sessions one replica remembers having moved (and having ended).
pub const MAX_REBINDS: usize = 100_000;

pub struct Sessions {
    /// Longest prefix first, so "/a/b" wins over "/a".
    pools: Vec<Arc<Pool>>,
    sealer: TokenSealer,
    rebinds: Rebinds,
    /// Sessions their clients ended here (DELETE): never moved back to life.
    ended: NonceTable<()>,
    /// Tool hints per pool, by `Pool::index`.
    hints: Vec<ToolHints>,
    /// A session is moved under one of these (by its id's nonce), so that
    /// its concurrent requests move it once ([`MOVE_LOCKS`], fixed).
    moves: Vec<tokio::sync::Mutex<()>>,
    /// The store the replicas share, if any.
    store: Option<Arc<Store>>,
}

/// Locks that serialize the moves of one session across its requests.
pub const MOVE_LOCKS: usize = 64;

impl Sessions {
    pub fn new(mut pools: Vec<Arc<Pool>>, sealer: TokenSealer) -> Self {
        let hints = (0..pools.len()).map(|_| ToolHints::default()).collect();
        pools.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        let max_age = sealer.max_age().as_secs();
        Self {
            pools,
            sealer,
            rebinds: Rebinds::new(MAX_REBINDS, max_age),
            ended: NonceTable::new(MAX_REBINDS, max_age),
            hints,
            moves: (0..MOVE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            store: None,
        }
    }

    /// The lock a session is moved under.
    fn move_lock(&self, nonce: &[u8; 12]) -> &tokio::sync::Mutex<()> {
        let at = u32::from_le_bytes([nonce[0], nonce[1], nonce[2], nonce[3]]) as usize;
        &self.moves[at % self.moves.len()]
    }

    /// Ended sessions are recorded in `store` too (for every replica).
    pub fn sharing(mut self, store: Option<Arc<Store>>) -> Self {
        self.store = store;
        self
    }

    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    pub fn sealer(&self) -> &TokenSealer {
        &self.sealer
    }

    /// Records a relayed message's latency by transport and method, and a
    /// tool call's by tool (both transports come here).
    pub fn record(
        &self,
        metrics: &Metrics,
        pool: &Pool,
        transport: Transport,
        method: &Method,
        took: Duration,
    ) {
        metrics
            .latencies
            .observe(transport, method.metric_index(), took);
        if let Method::ToolsCall { name } = method {
            pool.tool_seconds
                .observe(name, || self.hints(pool).lists(name), took);
        }
    }

    /// Which tools of a pool are safe to call twice.
    pub fn hints(&self, pool: &Pool) -> &ToolHints {
        &self.hints[pool.index as usize]
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

    /// Opens a client's session id. A session this replica moved is found
    /// where it lives now; one whose backend is gone for good comes back
    /// with no link, to be moved before it is used.
    pub fn open(&self, pool: &Arc<Pool>, token: &str, principal: &str) -> Result<Binding, Reject> {
        let sref = self
            .sealer
            .open(token)
            .map_err(|e| Reject::UnknownSession(e.to_string()))?;
        if sref.pool != pool.index {
            return Err(Reject::UnknownSession(
                "the session belongs to another route".into(),
            ));
        }
        if self.ended.contains(&sref.nonce) {
            return Err(Reject::UnknownSession("the session was ended".into()));
        }
        if sref.principal != principal {
            // Session ids are not credentials: another principal's id is unknown here.
            return Err(Reject::UnknownSession(
                "not a session of these credentials".into(),
            ));
        }
        if sref.backend == CARRIED {
            let mut binding = Binding::new(Arc::clone(pool), sref.init, Some(sref.nonce), None);
            binding.issued_at = sref.issued_at;
            binding.carried = true;
            return Ok(binding);
        }
        let (backend_id, backend_session) = match self.rebinds.get(&sref.nonce) {
            Some(moved) => (moved.backend, moved.backend_session),
            None => (sref.backend.clone(), sref.backend_session.clone()),
        };
        let backend = pool.member(&backend_id);
        if backend.is_none() && sref.init.is_empty() {
            return Err(Reject::UnknownSession(
                "the session's backend is gone".into(),
            ));
        }
        let link = backend.map(|backend| Link {
            backend,
            session: backend_session,
            version: None,
            generation: 0,
        });
        let mut binding = Binding::new(Arc::clone(pool), sref.init, Some(sref.nonce), link);
        binding.issued_at = sref.issued_at;
        Ok(binding)
    }

    /// Opens a federated session's id (a virtual server at route `route`,
    /// whose members are `pools`): one `Binding` per member, each where this
    /// replica last saw it live, or with no link when the member has no
    /// session yet (it is opened, as a move is, when first used). Returns
    /// the id's nonce and the members' bindings.
    pub fn open_members<'p>(
        &self,
        route: u16,
        pools: impl Iterator<Item = &'p Arc<Pool>>,
        token: &str,
        principal: &str,
    ) -> Result<([u8; 12], Vec<Binding>), Reject> {
        let fref = self
            .sealer
            .open_federated(token)
            .map_err(|e| Reject::UnknownSession(e.to_string()))?;
        if fref.route != route {
            return Err(Reject::UnknownSession(
                "the session belongs to another route".into(),
            ));
        }
        if self.ended.contains(&fref.nonce) {
            return Err(Reject::UnknownSession("the session was ended".into()));
        }
        if fref.principal != principal {
            return Err(Reject::UnknownSession(
                "not a session of these credentials".into(),
            ));
        }
        let bindings = pools
            .enumerate()
            .map(|(i, pool)| {
                let key = member_key(fref.nonce, i);
                let sealed = fref.members.iter().find(|m| m.0 as usize == i);
                let (backend, session) = match (self.rebinds.get(&key), sealed) {
                    (Some(moved), _) => (moved.backend, moved.backend_session),
                    (None, Some((_, b, s))) => (b.clone(), s.clone()),
                    (None, None) => (String::new(), String::new()),
                };
                let link = pool.member(&backend).map(|backend| Link {
                    backend,
                    session,
                    version: None,
                    generation: 0,
                });
                let mut binding =
                    Binding::new(Arc::clone(pool), fref.init.clone(), Some(key), link);
                binding.issued_at = fref.issued_at;
                binding
            })
            .collect();
        Ok((fref.nonce, bindings))
    }

    /// Seals a federated session (its members' backend sessions, by member
    /// index) into the id the client will use; returns it and its nonce.
    pub fn pin_members(
        &self,
        route: u16,
        principal: &str,
        init: &str,
        links: &[(u16, &Link)],
    ) -> Option<(String, [u8; 12])> {
        let members: Vec<(u16, &str, &str)> = links
            .iter()
            .map(|(i, l)| (*i, l.backend.id.as_str(), l.session.as_str()))
            .collect();
        self.sealer
            .issue_federated(route, principal, init, &members)
    }

    /// The client ended a federated session (DELETE): never bring it back.
    pub fn forget_members(&self, nonce: [u8; 12], members: &[Binding]) {
        for binding in members {
            self.forget(binding);
        }
        self.ended.insert(nonce, ());
    }

    /// Seals a new backend session into the id the client will use.
    pub fn pin(
        &self,
        pool: &Pool,
        backend: &BackendState,
        backend_session: &str,
        principal: &str,
        init: &str,
    ) -> Option<String> {
        let (token, _) =
            self.sealer
                .issue(pool.index, &backend.id, backend_session, principal, init)?;
        Some(token)
    }

    /// Seals a session the gateway keeps alone (no backend session: the
    /// pool's servers speak only 2026-07-28) into the id the client will use.
    pub fn pin_carried(&self, pool: &Pool, principal: &str, init: &str) -> Option<String> {
        let (token, _) = self
            .sealer
            .issue(pool.index, CARRIED, "", principal, init)?;
        Some(token)
    }

    /// The client ended the session (DELETE): forget where it was moved, and
    /// never bring it back.
    pub fn forget(&self, binding: &Binding) {
        if let Some(nonce) = binding.nonce {
            self.rebinds.remove(&nonce);
            self.ended.insert(nonce, ());
        }
    }

    /// The client is ending the session (its DELETE was answered with
    /// success): every replica sharing the store refuses its id from now
    /// on. The mark lives as long as the id could (the rest of `max_age`).
    /// Called before the client hears the answer; with the store down the
    /// mark is only this replica's (`forget`), and the failure is counted.
    pub async fn end_shared(&self, binding: &Binding) {
        if let Some(nonce) = binding.nonce() {
            self.end_shared_id(nonce, binding.issued_at).await;
        }
    }

    /// The client ended a federated session (DELETE): as
    /// [`Self::forget_members`], and, like [`Self::end_shared`], for every
    /// replica sharing the store, before the client hears the answer.
    pub async fn end_members(&self, nonce: [u8; 12], members: &[Binding]) {
        self.forget_members(nonce, members);
        let issued_at = members.first().map_or(0, |b| b.issued_at);
        self.end_shared_id(&nonce, issued_at).await;
    }

    /// Marks the id with `nonce`, issued at `issued_at`, ended in the store
    /// for the rest of its life.
    async fn end_shared_id(&self, nonce: &[u8; 12], issued_at: u64) {
        let Some(store) = &self.store else {
            return;
        };
        let ends = issued_at + self.sealer.max_age().as_secs();
        let left = ends.saturating_sub(now_secs());
        if left > 0
            && store
                .end_session(nonce, Duration::from_secs(left))
                .await
                .is_err()
        {
            tracing::debug!("an ended session was not recorded in the shared store (down)");
        }
    }

    /// Records where a moved session lives now.
    fn rebind(&self, nonce: [u8; 12], backend: &str, backend_session: &str) {
        self.rebinds.insert(
            nonce,
            Rebound {
                backend: backend.to_owned(),
                backend_session: backend_session.to_owned(),
            },
        );
    }

    /// A connection to a backend failed: no new work for it until it is
    /// back (`Pool::record` has the rules).
    pub fn eject(&self, pool: &Pool, backend: &BackendState) {
        pool.record(backend, Outcome::Refused);
    }
}
