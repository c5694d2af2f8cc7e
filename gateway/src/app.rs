//! One gateway process's parts, assembled once at start and shared by the
//! proxy service and the admin listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::cluster::Store;
use crate::config::{Cli, Config};
use crate::federation::Federation;
use crate::legacy::Bridge;
use crate::metrics::Metrics;
use crate::policy::guard::Guard;
use crate::pool::Pool;
use crate::revisions::Revisions;
use crate::session::Sessions;
use crate::state::{Phase, State};
use crate::stdio::{HostLimits, StdioHost};
use crate::streamable::Streamable;
use crate::tls::ServedCert;
use crate::token::TokenSealer;
use crate::upstream::Upstream;

pub struct Gateway {
    /// The policy in force (credentials, rules, limits), swapped whole on reload.
    guard: ArcSwap<Guard>,
    /// The command line the gateway started with: a reload loads the
    /// configuration from it again, exactly as the start did.
    cli: Cli,
    /// The configuration in force.
    config: ArcSwap<Config>,
    /// What the session key files held at start (a reload must not change it).
    key_files: Option<[u8; 32]>,
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    /// The stdio pools' in-process hosts (one per stdio pool).
    pub stdio: Vec<Arc<StdioHost>>,
    pub streamable: Streamable,
    pub legacy: Arc<Bridge>,
    /// The virtual servers over the pools.
    pub federation: Arc<Federation>,
    /// The store the replicas share (`[cluster] store`), if any.
    pub store: Option<Arc<Store>>,
    /// The HTTPS listener's certificate, when there is one.
    pub tls: Option<Arc<ServedCert>>,
    /// How often its files are checked for a change (zero: never).
    pub tls_reload_interval: Duration,
    /// One info-level line per request (`access_log`; changes on reload).
    access_log: AtomicBool,
}

impl Gateway {
    // Each argument is one part of the process, made once by main.rs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        cli: Cli,
        guard: Guard,
        pools: Vec<Arc<Pool>>,
        stdio: Vec<Arc<StdioHost>>,
        sealer: TokenSealer,
        tls: Option<Arc<ServedCert>>,
        store: Option<Arc<Store>>,
    ) -> Arc<Self> {
        let limits = config.limits.clone();
        let max_legacy_sessions = config.sessions.max_legacy_sessions;
        let advertise = config.cluster.advertise.clone();
        let hosts = stdio
            .iter()
            .filter_map(|h| Some((h.addr(), http::HeaderValue::from_str(h.key()).ok()?)))
            .collect();
        let upstream = Arc::new(
            Upstream::new(limits.connect_timeout, limits.upstream_idle_timeout).with_hosts(hosts),
        );
        let state = State::new(limits);
        let federation = Arc::new(Federation::new(config, &pools));
        let sessions = Arc::new(Sessions::new(pools, sealer).sharing(store.clone()));
        let streamable = Streamable {
            state: Arc::clone(&state),
            sessions: Arc::clone(&sessions),
            upstream: Arc::clone(&upstream),
            revisions: Arc::new(Revisions::new(Arc::clone(&upstream))),
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
            cli,
            config: ArcSwap::from_pointee(config.clone()),
            key_files: key_files(config),
            state,
            sessions,
            stdio,
            streamable,
            legacy,
            federation,
            store,
            tls,
            tls_reload_interval: config.tls.reload_interval,
            access_log: AtomicBool::new(config.access_log),
        })
    }
}

impl Gateway {
    /// The policy in force now.
    pub fn guard(&self) -> Arc<Guard> {
        self.guard.load_full()
    }

    /// The in-process host of the stdio pool named `pool`.
    pub fn stdio_host(&self, pool: &str) -> Option<&Arc<StdioHost>> {
        self.stdio.iter().find(|h| h.pool() == pool)
    }

    /// Ready to serve: not draining, and (when the gateway fails closed
    /// without its shared store) the store is up.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.state.is_draining() {
            return Err("draining");
        }
        match &self.store {
            Some(s) if s.on_down() == crate::config::StoreDown::FailClosed && !s.is_up() => {
                Err("shared store unavailable")
            }
            _ => Ok(()),
        }
    }

    /// Whether each request gets an info-level access line.
    pub fn access_log(&self) -> bool {
        self.access_log.load(Ordering::Relaxed)
    }

    /// Reloads the TLS certificate from its files, then loads the
    /// configuration again (file, flags and environment, as at start) and
    /// applies it (SIGHUP, `POST /reload`). A certificate that does not load
    /// stops the reload before anything changed (the old one is served); a
    /// configuration that does not load, or that changes a setting only a
    /// restart can change, is not applied: the error names why.
    pub fn reload(&self) -> Result<String, ReloadError> {
        if let Some(tls) = &self.tls {
            tls.reload()
                .map_err(|e| ReloadError::Invalid(format!("TLS certificate not reloaded: {e}")))?;
            Metrics::inc(&self.state.metrics.tls_reloads);
        }
        self.reload_config()
    }

    fn reload_config(&self) -> Result<String, ReloadError> {
        if self.cli.config.is_none() {
            return Ok("started without --config: only the certificate is read again".into());
        }
        let next = Config::load(&self.cli).map_err(|e| ReloadError::Invalid(format!("{e:#}")))?;
        let mut restart = self.config.load().restart_needed(&next);
        if key_files(&next) != self.key_files {
            restart.push("the session key (its file's content)".into());
        }
        if !restart.is_empty() {
            return Err(ReloadError::NeedsRestart(restart));
        }
        let guard = Guard::reloaded(&next, &self.guard(), self.store.clone())
            .map_err(|e| ReloadError::Invalid(format!("{e:#}")))?;
        let summary = guard.summary();
        self.guard.store(Arc::new(guard));
        self.state.set_limits(next.limits.clone());
        self.legacy
            .upstream
            .set_idle(next.limits.upstream_idle_timeout);
        let host_limits = HostLimits {
            max_body_bytes: next.limits.max_body_bytes,
            upstream_idle_timeout: next.limits.upstream_idle_timeout,
        };
        for host in &self.stdio {
            host.set_limits(&host_limits);
        }
        let legacy = &next.sessions;
        self.legacy
            .table
            .set_caps(legacy.max_legacy_sessions, next.limits.client_share);
        self.access_log.store(next.access_log, Ordering::Relaxed);
        self.config.store(Arc::new(next));
        tracing::info!(%summary, "configuration reloaded");
        Ok(summary)
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration does not load or validate.
    #[error("{0}")]
    Invalid(String),
    /// It changes settings that need a restart.
    #[error("these settings cannot change without a restart: {}", .0.join(", "))]
    NeedsRestart(Vec<String>),
}

/// A digest of the session key files' content (none when the key comes
/// from the environment, which a running process cannot see change).
fn key_files(config: &Config) -> Option<[u8; 32]> {
    if std::env::var_os(crate::config::SESSION_KEY_ENV).is_some() {
        return None;
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for file in [
        &config.sessions.key_file,
        &config.sessions.previous_key_file,
    ] {
        let content = file.as_ref().and_then(|f| std::fs::read(f).ok());
        ctx.update(&[u8::from(content.is_some())]);
        ctx.update(content.as_deref().unwrap_or_default());
    }
    ctx.finish().as_ref().try_into().ok()
}

/// Reloads the configuration and the certificate on SIGHUP.
pub struct Reloader(pub Arc<Gateway>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Reloader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        let mut tidy = tokio::time::interval(crate::policy::limits::Limiters::TIDY_EVERY);
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
                        tracing::error!(error = %e, "reload refused; the configuration in force stays");
                    }
                }
                _ = tidy.tick() => {
                    self.0.guard().tidy();
                    self.0.streamable.revisions.tidy();
                }
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
