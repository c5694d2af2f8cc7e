//! The reloadable part of the request path: who may come in
//! ([`Authenticator`]), what they may do ([`Rules`]), how fast ([`Limiters`],
//! and [`Shared`] across replicas when they share a store), and each pool's
//! credential mode. Built whole from the configuration and
//! swapped whole on reload (SIGHUP, `POST /reload`), so a request sees one
//! consistent set; an invalid file leaves the running set in place.

use std::sync::Arc;

use super::auth::{Authenticator, Rules};
use super::limits::Limiters;
use super::shared::Shared;
use crate::cluster::Store;
use crate::config::{AuthMode, Config};

pub struct Guard {
    pub auth: Authenticator,
    pub rules: Rules,
    pub limits: Arc<Limiters>,
    /// The same limits across replicas (`[cluster] store`).
    pub shared: Option<Shared>,
    /// Credential mode per pool, by pool index.
    modes: Vec<AuthMode>,
    /// Header carrying the verified principal to backends.
    pub principal_header: http::HeaderName,
    /// For the protected-resource metadata document.
    pub resource: Option<String>,
    pub authorization_servers: Vec<String>,
}

impl Guard {
    /// The policy of `config` after `previous`: the counts of what is held
    /// now (open streams, requests in flight per address) carry over; the
    /// limits hold across the replicas sharing `store`.
    pub fn reloaded(
        config: &Config,
        previous: &Guard,
        store: Option<Arc<Store>>,
    ) -> anyhow::Result<Self> {
        let mut guard = Self::with_store(config, store)?;
        if let Some(limits) = Arc::get_mut(&mut guard.limits) {
            limits.keep_counts(&previous.limits);
        }
        Ok(guard)
    }

    /// The policy of `config`, without a shared store.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Self::with_store(config, None)
    }

    /// The policy of `config`; its limits hold across the replicas sharing `store`.
    pub fn with_store(config: &Config, store: Option<Arc<Store>>) -> anyhow::Result<Self> {
        let auth = Authenticator::new(&config.auth)?;
        let default = if auth.configured() {
            AuthMode::Required
        } else {
            AuthMode::None
        };
        // By route index: the pools, then the virtual servers.
        let pools = config.pools.iter().map(|p| p.auth);
        let servers = config.servers.iter().map(|s| s.auth);
        let modes = pools
            .chain(servers)
            .map(|m| m.unwrap_or(default))
            .collect::<Vec<_>>();
        if !auth.configured() && modes.iter().any(|m| *m != AuthMode::None) {
            anyhow::bail!("a pool asks for credentials but no [auth] keys or jwt are configured");
        }
        for tier in config.limits.tiers.values() {
            if tier.requests_per_second == 0 {
                anyhow::bail!("a tier's requests_per_second must be at least 1");
            }
        }
        Ok(Self {
            auth,
            rules: Rules::new(&config.auth)?,
            limits: Limiters::new(&config.limits.tiers, &config.limits.global),
            shared: store.map(|s| Shared::new(s, config)),
            modes,
            principal_header: http::HeaderName::from_bytes(
                config.auth.principal_header.to_ascii_lowercase().as_bytes(),
            )
            .map_err(|_| anyhow::anyhow!("[auth] principal_header is not a header name"))?,
            resource: config.auth.resource.clone(),
            authorization_servers: config.auth.authorization_servers.clone(),
        })
    }

    /// Forgets idle limiter keys (on a timer).
    pub fn tidy(&self) {
        self.limits.tidy();
        if let Some(shared) = &self.shared {
            shared.tidy();
        }
    }

    /// How pool `index` treats credentials.
    pub fn mode(&self, index: u16) -> AuthMode {
        self.modes
            .get(index as usize)
            .copied()
            .unwrap_or(AuthMode::None)
    }

    /// Whether any pool asks for credentials (said at start-up).
    pub fn summary(&self) -> String {
        if self.modes.iter().all(|m| *m == AuthMode::None) {
            "authentication: none (every client is anonymous; configure [auth] to require keys or JWTs)".into()
        } else {
            let modes: Vec<String> = self
                .modes
                .iter()
                .map(|m| format!("{m:?}").to_lowercase())
                .collect();
            format!("authentication: {} (by pool)", modes.join(", "))
        }
    }
}
