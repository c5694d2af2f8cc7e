//! One worker per legacy session: it takes the client's messages in the
//! order they came and carries each to the session's backend through the
//! session layer's exchange (`session::exchange`, as Streamable HTTP
//! requests go), writing what comes back to the client's stream (a `Queue`).
//!
//! The first message (normally `initialize`) opens the backend session and
//! runs alone: later messages need it. After it, a notification reaches the
//! backend before the next message leaves (servers may register tools on
//! `notifications/initialized`, so a call overtaking it would find no such
//! tool); requests and answers run side by side, at most
//! `legacy_session_concurrency` at a time, each holding a unit of the
//! gateway's in-flight budget. A listener relays the backend's own stream
//! (`GET /mcp`) and opens it again where the session moves. When the
//! client's stream ends, the worker ends the backend session.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::Bridge;
use super::table::Inbound;
use crate::metrics::Transport;
use crate::policy::jsonrpc::{self, Rpc};
use crate::pool::Pool;
use crate::relay::{self, Queue, Sink as _};
use crate::session::binding::trim_init;
use crate::session::exchange::{Answered, Message, Outcome, Target};
use crate::session::{Binding, Caller};
use crate::state::Slot;
use crate::trace;

/// What a message holds while it runs: a unit of the in-flight budget and
/// one of the session's concurrency permits.
pub(super) type Held = (Slot, OwnedSemaphorePermit);

/// What a legacy session's messages go to: a pool (one backend session)
/// or a virtual server (one session per member, `federated.rs`). The
/// worker's rules are the same for both.
pub(super) trait Upstreams: Send + Sync + 'static {
    /// The session the first message opened.
    type Session: Send + Sync + 'static;

    /// Sends the first message (normally `initialize`). `Ok(Some)`: the
    /// session exists; `Ok(None)`: not yet; `Err`: the client is gone.
    fn open<'a>(
        self: Arc<Self>,
        bridge: &'a Bridge,
        body: Bytes,
        rpc: &'a Rpc,
        out: &'a mut Queue,
        caller: &'a Caller,
    ) -> impl Future<Output = Result<Option<Arc<Self::Session>>, ()>> + Send + 'a;

    /// One later message on the session.
    fn call(
        self: Arc<Self>,
        bridge: Arc<Bridge>,
        session: Arc<Self::Session>,
        message: (Bytes, Rpc),
        out: Queue,
        caller: Arc<Caller>,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// The server's own stream(s) into the client's, for the session's life.
    fn listen(
        self: Arc<Self>,
        bridge: Arc<Bridge>,
        session: Arc<Self::Session>,
        out: Queue,
        caller: Arc<Caller>,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// Ends the session (its client is gone).
    fn close<'a>(
        &'a self,
        bridge: &'a Bridge,
        session: &'a Self::Session,
        caller: &'a Caller,
    ) -> impl Future<Output = ()> + Send + 'a;
}

impl Bridge {
    pub(super) async fn worker<U: Upstreams>(
        self: Arc<Self>,
        up: Arc<U>,
        mut inbox: mpsc::Receiver<Inbound>,
        mut out: Queue,
        caller: Caller,
        permits: Arc<Semaphore>,
    ) {
        let caller = Arc::new(caller);
        let mut session: Option<Arc<U::Session>> = None;
        let mut calls = JoinSet::new();
        let mut listener = None;
        while let Some(inbound) = inbox.recv().await {
            while calls.try_join_next().is_some() {}
            let Some((body, rpc, span, held)) = self.take(inbound, &permits, &mut out).await else {
                continue;
            };
            match session.clone() {
                Some(s) if !rpc.is_initialize() => {
                    let in_order = rpc.method.is_notification();
                    let call = Arc::clone(&up).call(
                        Arc::clone(&self),
                        s,
                        (body, rpc),
                        out.clone(),
                        Arc::clone(&caller),
                    );
                    let call = async move {
                        call.await;
                        drop(held);
                    }
                    .instrument(span);
                    if in_order {
                        // Boxed, as `open` and `close` below: the worker
                        // waits on its inbox for the whole session, and its
                        // task is as large as the largest thing it awaits.
                        Box::pin(call).await;
                    } else {
                        calls.spawn(call);
                    }
                }
                _ => {
                    let opened = Box::pin(
                        Arc::clone(&up)
                            .open(&self, body, &rpc, &mut out, &caller)
                            .instrument(span),
                    )
                    .await;
                    drop(held);
                    let Ok(opened) = opened else { break }; // the client is gone
                    if let (Some(s), None) = (&opened, &listener) {
                        let listen = Arc::clone(&up).listen(
                            Arc::clone(&self),
                            Arc::clone(s),
                            out.clone(),
                            Arc::clone(&caller),
                        );
                        listener = Some(tokio::spawn(listen));
                    }
                    session = opened.or(session);
                }
            }
        }
        calls.abort_all();
        if let Some(l) = listener {
            l.abort();
        }
        if let Some(s) = session {
            Box::pin(up.close(&self, &s, &caller)).await;
        }
    }

    /// Unpacks a queued message and takes what it holds while it runs;
    /// `None` when it was refused (the refusal is on the client's stream).
    pub(super) async fn take(
        &self,
        inbound: Inbound,
        permits: &Arc<Semaphore>,
        out: &mut Queue,
    ) -> Option<(Bytes, Rpc, tracing::Span, Held)> {
        let Inbound {
            body,
            rpc,
            refused,
            trace: parent,
            _queued,
        } = inbound;
        drop(_queued);
        let metrics = &self.state.metrics;
        let id = rpc.id.as_deref();
        if let Some(r) = refused {
            // Counted when its POST was refused: only written here.
            let _ = out.write_refusal(&r, id).await;
            return None;
        }
        let slot = match self.state.enter() {
            Ok(slot) => slot,
            Err(r) => {
                let _ = relay::refuse(out, metrics, &r, id).await;
                return None;
            }
        };
        let permit = Arc::clone(permits).acquire_owned().await.ok()?;
        let span = trace::message_span(&rpc, parent.as_ref());
        Some((body, rpc, span, (slot, permit)))
    }
}

fn message<'a>(pool: &'a Arc<Pool>, body: Bytes, rpc: &'a Rpc, caller: &'a Caller) -> Message<'a> {
    Message::gateway(pool, body, Some(rpc), caller, Transport::Legacy)
}

/// A pool: the first message opens one backend session; the backend's
/// `GET` stream is relayed and opened again where the session moves.
impl Upstreams for Pool {
    type Session = Binding;

    async fn open(
        self: Arc<Self>,
        bridge: &Bridge,
        body: Bytes,
        rpc: &Rpc,
        out: &mut Queue,
        caller: &Caller,
    ) -> Result<Option<Arc<Binding>>, ()> {
        let pool = &self;
        let init = jsonrpc::params_of(&body).map(trim_init).unwrap_or_default();
        let msg = message(pool, body, rpc, caller);
        let target = Target::Anywhere { seal: false };
        match bridge.exchange().run(&msg, target, out).await {
            Err(_) => Err(()),
            Ok(Outcome {
                answered:
                    Some(Answered {
                        opened: Some(link), ..
                    }),
                ..
            }) => Ok(Some(Arc::new(Binding::new(
                Arc::clone(pool),
                init,
                None,
                Some(link),
            )))),
            Ok(_) => Ok(None),
        }
    }

    async fn call(
        self: Arc<Self>,
        bridge: Arc<Bridge>,
        binding: Arc<Binding>,
        (body, rpc): (Bytes, Rpc),
        mut out: Queue,
        caller: Arc<Caller>,
    ) {
        let msg = message(&binding.pool, body, &rpc, &caller);
        let _ = bridge
            .exchange()
            .run(&msg, Target::Session(&binding), &mut out)
            .await;
    }

    /// The backend's server-to-client stream (`GET /mcp`), if it offers one,
    /// opened again on the session's new backend when the session moves.
    async fn listen(
        self: Arc<Self>,
        bridge: Arc<Bridge>,
        binding: Arc<Binding>,
        mut out: Queue,
        caller: Arc<Caller>,
    ) {
        let msg = Message {
            method: http::Method::GET,
            accept: Some("text/event-stream"),
            content_type: None,
            ..Message::gateway(
                &binding.pool,
                Bytes::new(),
                None,
                &caller,
                Transport::Legacy,
            )
        };
        loop {
            let target = Target::Session(&binding);
            if bridge.exchange().run(&msg, target, &mut out).await.is_err() {
                return; // the client is gone
            }
            // Ended, refused or not offered: wait for the session to move.
            binding.moved().await;
        }
    }

    async fn close(&self, bridge: &Bridge, binding: &Binding, caller: &Caller) {
        binding.close(&bridge.upstream, caller).await;
    }
}
