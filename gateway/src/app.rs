//! One gateway process's parts, assembled once at start and shared by the
//! proxy service and the admin listener.

use std::sync::Arc;

use crate::config::Limits;
use crate::legacy::Bridge;
use crate::pool::Pool;
use crate::session::Sessions;
use crate::state::{Phase, State};
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

/// The signals pingora acts on, with a drain in front: on SIGTERM (stop) or
/// SIGQUIT (graceful upgrade) the gateway first drains for `drain_for` —
/// the admin `/health` answers 503 so balancers move new connections away,
/// and every answer closes its connection so clients move their next
/// requests — then tells pingora, which closes the listeners and idle
/// connections and lets requests in flight finish. Server streams end
/// cleanly at that point, so clients reopen them elsewhere.
pub struct DrainingSignals {
    pub gw: Arc<Gateway>,
    pub drain_for: std::time::Duration,
}

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut quit), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        let kind = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        };
        if !matches!(kind, ShutdownSignal::FastShutdown) {
            tracing::info!(drain_for = ?self.drain_for, "stopping: draining before the listeners close");
            self.gw.state.set_phase(Phase::Draining);
            tokio::time::sleep(self.drain_for).await;
        }
        tracing::info!(
            "closing the listeners; server streams end so clients reopen them elsewhere"
        );
        self.gw.state.set_phase(Phase::Closing);
        kind
    }
}
