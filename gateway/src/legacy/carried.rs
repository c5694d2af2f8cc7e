//! A legacy session on servers that speak only 2026-07-28: the worker of
//! `worker.rs` over [`Upstreams`] for such a pool. `initialize` is
//! answered by the gateway and the session lives only in the id it seals
//! (kept here: the legacy client is known by its stream); each later
//! message goes to the servers stateless (`revisions/carried.rs`). There
//! is no server stream to relay, and no backend session to end.

use std::sync::Arc;

use bytes::Bytes;

use super::Bridge;
use super::federated::KeepId;
use super::worker::Upstreams;
use crate::metrics::Transport;
use crate::policy::jsonrpc::Rpc;
use crate::pool::Pool;
use crate::relay::Queue;
use crate::revisions::carried::{Carrier, Carrying};
use crate::session::{Binding, Caller};

/// A pool whose servers speak only the stateless revision.
pub(super) struct StatelessPool(pub Arc<Pool>);

impl Bridge {
    fn carrier(&self) -> Carrier<'_> {
        Carrier {
            sessions: &self.sessions,
            upstream: &self.upstream,
            state: &self.state,
        }
    }
}

impl Upstreams for StatelessPool {
    type Session = Binding;

    async fn open(
        self: Arc<Self>,
        bridge: &Bridge,
        body: Bytes,
        rpc: &Rpc,
        out: &mut Queue,
        caller: &Caller,
    ) -> Result<Option<Arc<Binding>>, ()> {
        let msg = carrying(&self.0, body, rpc, caller, None);
        let mut keep = KeepId { out, id: None };
        let rev = self.0.stateless_only();
        bridge
            .carrier()
            .serve(msg, rev.as_deref(), &mut keep)
            .await
            .map_err(|_| ())?;
        let Some(id) = keep.id else { return Ok(None) };
        let opened = bridge.sessions.open(&self.0, &id, &caller.principal);
        Ok(opened.ok().map(Arc::new))
    }

    async fn call(
        self: Arc<Self>,
        bridge: Arc<Bridge>,
        session: Arc<Binding>,
        (body, rpc): (Bytes, Rpc),
        mut out: Queue,
        caller: Arc<Caller>,
    ) {
        let msg = carrying(&self.0, body, &rpc, &caller, Some(&session));
        let _ = bridge.carrier().serve(msg, None, &mut out).await;
    }

    /// 2026-07-28 has no server stream a session could read.
    async fn listen(
        self: Arc<Self>,
        _bridge: Arc<Bridge>,
        _session: Arc<Binding>,
        _out: Queue,
        _caller: Arc<Caller>,
    ) {
    }

    async fn close(&self, bridge: &Bridge, session: &Binding, _caller: &Caller) {
        bridge.sessions.forget(session);
    }
}

fn carrying<'r>(
    pool: &'r Arc<Pool>,
    body: Bytes,
    rpc: &'r Rpc,
    caller: &'r Caller,
    session: Option<&'r Binding>,
) -> Carrying<'r> {
    Carrying {
        pool,
        body,
        rpc,
        caller,
        session,
        transport: Transport::Legacy,
    }
}
