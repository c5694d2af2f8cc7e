//! One gateway process's parts, assembled once at start and shared by the
//! proxy service and the admin listener.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::legacy::Bridge;
use crate::metrics::Metrics;
use crate::policy::guard::Guard;
use crate::pool::Pool;
use crate::session::Sessions;
use crate::state::{Phase, State};
use crate::streamable::Streamable;
use crate::tls::ServedCert;
use crate::token::TokenSealer;
use crate::upstream::Upstream;

pub struct Gateway {
    /// The policy in force (credentials, rules, limits), swapped whole on reload.
    guard: ArcSwap<Guard>,
    /// Where the configuration came from (for reloads).
    pub config_path: Option<std::path::PathBuf>,
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub streamable: Streamable,
    pub legacy: Arc<Bridge>,
    /// The HTTPS listener's certificate, when there is one.
    pub tls: Option<Arc<ServedCert>>,
    /// How often its files are checked for a change (zero: never).
    pub tls_reload_interval: Duration,
    /// One info-level line per request (`access_log`).
    pub access_log: bool,
}

impl Gateway {
    pub fn new(
        config: &Config,
        config_path: Option<std::path::PathBuf>,
        guard: Guard,
        pools: Vec<Arc<Pool>>,
        sealer: TokenSealer,
        tls: Option<Arc<ServedCert>>,
    ) -> Arc<Self> {
        let limits = config.limits.clone();
        let max_legacy_sessions = config.sessions.max_legacy_sessions;
        let advertise = config.cluster.advertise.clone();
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
            guard: ArcSwap::from_pointee(guard),
            config_path,
            state,
            sessions,
            streamable,
            legacy,
            tls,
            tls_reload_interval: config.tls.reload_interval,
            access_log: config.access_log,
        })
    }
}

impl Gateway {
    /// The policy in force now.
    pub fn guard(&self) -> Arc<Guard> {
        self.guard.load_full()
    }

    /// Reloads the configuration's credentials, rules and limits, and the
    /// TLS certificate from its files (SIGHUP, `POST /reload`).
    pub fn reload(&self) -> anyhow::Result<String> {
        let summary = self.reload_config()?;
        if let Some(tls) = &self.tls {
            tls.reload()
                .map_err(|e| anyhow::anyhow!("TLS certificate not reloaded: {e}"))?;
        }
        Ok(summary)
    }

    /// Reads the configuration file again and swaps in its credentials,
    /// rules and limits. An invalid file changes nothing; the error says why.
    /// Sessions, streams and pools are untouched.
    fn reload_config(&self) -> anyhow::Result<String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("started without --config: nothing to reload"))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
        if config.pools.len() != self.sessions.pools().len() {
            anyhow::bail!("pools cannot change on reload (restart the gateway for that)");
        }
        let guard = Guard::new(&config)?;
        let summary = guard.summary();
        self.guard.store(Arc::new(guard));
        tracing::info!(path = %path.display(), %summary, "configuration reloaded");
        Ok(summary)
    }
}

/// Reloads credentials, rules and limits on SIGHUP.
pub struct Reloader(pub Arc<Gateway>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Reloader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        let mut tidy = tokio::time::interval(crate::policy::limits::Limits::TIDY_EVERY);
        // The certificate files, checked for a change on their own timer.
        let check_every = self.0.tls_reload_interval;
        let mut certs = tokio::time::interval(check_every.max(Duration::from_millis(100)));
        certs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = certs.tick(), if !check_every.is_zero() => {
                    if let Some(tls) = &self.0.tls {
                        match tls.reload_if_changed() {
                            Ok(true) => Metrics::inc(&self.0.state.metrics.tls_reloads),
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "TLS certificate files changed but do not load; the served certificate stays"),
                        }
                    }
                }
                _ = hup.recv() => {
                    if let Err(e) = self.0.reload() {
                        tracing::error!(error = %e, "reload failed; what did not load stays as it was");
                    }
                }
                _ = tidy.tick() => self.0.guard().limits.tidy(),
                _ = shutdown.changed() => return,
            }
        }
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

/// Checks each new connection against its address's connection rate, at
/// accept and before TLS (pingora's connection filter).
#[derive(Debug)]
pub struct AcceptFilter {
    pub gw: Arc<Gateway>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gateway")
    }
}

#[async_trait::async_trait]
impl pingora::listeners::ConnectionFilter for AcceptFilter {
    async fn should_accept(&self, addr: Option<&std::net::SocketAddr>) -> bool {
        crate::metrics::Metrics::inc(&self.gw.state.metrics.connections_accepted);
        let Some(addr) = addr else { return true };
        let ok = self.gw.guard().limits.accept_connection(addr.ip());
        if !ok {
            crate::metrics::Metrics::inc(&self.gw.state.metrics.connections_refused);
        }
        ok
    }
}
