//! A legacy session on a virtual server: the worker of `worker.rs` (the
//! first message alone, a notification before the next message, the rest
//! side by side) over [`Upstreams`] for a virtual server: each message is the
//! federation's (`federation::serve`) — `initialize` opens a session on
//! every member and the federated id it seals is kept here (the legacy
//! client never sees it); every member's server stream is merged into the
//! client's stream. When the client's stream ends, every member session ends.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::value::RawValue;

use super::Bridge;
use super::worker::Upstreams;
use crate::federation::serve::{Federated, Request};
use crate::federation::{Opened, Virtual};
use crate::metrics::Transport;
use crate::policy::jsonrpc::Rpc;
use crate::reject::Reject;
use crate::relay::{Answer, Failure, Queue, Seen, Sink};
use crate::session::Caller;

impl Bridge {
    fn federated(&self) -> Federated<'_> {
        Federated {
            sessions: &self.sessions,
            upstream: &self.upstream,
            state: &self.state,
        }
    }
}

fn request<'r>(
    vs: &'r Arc<Virtual>,
    (body, rpc): (Bytes, Option<&'r Rpc>),
    caller: &'r Caller,
    session: Option<&'r Opened>,
) -> Request<'r> {
    Request {
        vs,
        body,
        rpc,
        caller,
        session,
        version: None,
        transport: Transport::Legacy,
    }
}

/// A virtual server: the first message opens a session on every member.
impl Upstreams for Virtual {
    type Session = Opened;

    async fn open(
        self: Arc<Self>,
        bridge: &Bridge,
        body: Bytes,
        rpc: &Rpc,
        out: &mut Queue,
        caller: &Caller,
    ) -> Result<Option<Arc<Opened>>, ()> {
        let req = request(&self, (body, Some(rpc)), caller, None);
        let mut keep = KeepId { out, id: None };
        bridge
            .federated()
            .serve(&req, &mut keep)
            .await
            .map_err(|_| ())?;
        let Some(id) = keep.id else { return Ok(None) };
        let opened = Virtual::open(&self, &bridge.sessions, &id, &caller.principal);
        Ok(opened.ok().map(Arc::new))
    }

    async fn call(
        self: Arc<Self>,
        bridge: Arc<Bridge>,
        session: Arc<Opened>,
        (body, rpc): (Bytes, Rpc),
        mut out: Queue,
        caller: Arc<Caller>,
    ) {
        let req = request(&self, (body, Some(&rpc)), &caller, Some(&session));
        let _ = bridge.federated().serve(&req, &mut out).await;
    }

    /// Every member's server stream, into the client's.
    async fn listen(
        self: Arc<Self>,
        bridge: Arc<Bridge>,
        session: Arc<Opened>,
        out: Queue,
        caller: Arc<Caller>,
    ) {
        let req = request(&self, (Bytes::new(), None), &caller, Some(&session));
        bridge.federated().feeds(&req, &session, out).await;
    }

    async fn close(&self, bridge: &Bridge, session: &Opened, caller: &Caller) {
        for member in &session.members {
            member.close(&bridge.upstream, caller).await;
        }
    }
}

/// The client's stream as the sink of `initialize`, keeping the federated
/// id the gateway sealed (the legacy client is known by its stream instead).
pub(super) struct KeepId<'q> {
    pub out: &'q mut Queue,
    pub id: Option<String>,
}

impl Sink for KeepId<'_> {
    fn client_headers(&self) -> Option<&HeaderMap> {
        None
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        self.out.relay(answer).await
    }

    async fn write_refusal(
        &mut self,
        reject: &Reject,
        id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        self.out.write_refusal(reject, id).await
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        self.out.finish().await
    }

    async fn reply(&mut self, answer: Option<Bytes>, session: Option<&str>) -> Result<(), Failure> {
        self.id = session.map(str::to_owned);
        self.out.reply(answer, None).await
    }
}
