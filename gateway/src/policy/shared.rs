//! The rate limits across replicas (`[cluster] store`): the last policy
//! step. A request the local limits let through (the first line: a flood
//! from one client is refused there and never becomes a flood of store
//! calls) is counted against the same limits in the shared store, in one
//! round trip that also asks whether its session id was ended on another
//! replica. Refusals look exactly like local ones (429, `Retry-After`,
//! JSON-RPC -32023), an ended id like any unknown one (404).
//!
//! While the store is down or slow (its calls fail within `store_timeout`,
//! then are not made at all until the watcher sees it back), requests are
//! decided without it: `fail_open` checks them against the local limits
//! divided by `replicas` (so N replicas together stay near the configured
//! limits), `fail_closed` refuses them (503 + Retry-After). Each such
//! request is counted (`mcp_gateway_store_fallbacks_total`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::limits::{Call, Limiters};
use crate::cluster::{Store, Unavailable, Verdict};
use crate::config::{Config, StoreDown};
use crate::reject::Reject;

pub struct Shared {
    pub store: Arc<Store>,
    /// The limits each 1/replicas, for while the store is down (`fail_open`).
    fallback: Arc<Limiters>,
}

/// Whole seconds to wait, at least one.
fn retry_after(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

impl Shared {
    pub fn new(store: Arc<Store>, config: &Config) -> Self {
        let limits = &config.limits;
        Self {
            fallback: Limiters::divided(&limits.tiers, &limits.global, store.replicas()),
            store,
        }
    }

    /// `call` against the shared limits, and `session` (the nonce of the
    /// id the request carries) against the ended ones. `limits`: the local
    /// limits in force, whose quotas the store applies.
    pub async fn check(
        &self,
        limits: &Limiters,
        call: &Call<'_>,
        session: Option<&[u8; 12]>,
    ) -> Result<(), Reject> {
        let mut asks = Vec::new();
        limits.asks(call, self.store.prefix(), &mut asks);
        if asks.is_empty() && session.is_none() {
            return Ok(());
        }
        match self.store.check(&asks, session).await {
            Ok(Verdict::Allowed) => Ok(()),
            Ok(Verdict::Limited { index, wait }) => Err(Reject::RateLimited {
                retry_after: retry_after(wait),
                what: asks.get(index).map_or("requests", |a| a.what),
            }),
            Ok(Verdict::Ended) => Err(Reject::UnknownSession("the session was ended".into())),
            Err(Unavailable) => self.without_store(call),
        }
    }

    /// The store is down: what `on_store_down` says.
    fn without_store(&self, call: &Call<'_>) -> Result<(), Reject> {
        let stats = &self.store.stats;
        match self.store.on_down() {
            StoreDown::FailOpen => {
                stats.fail_open.fetch_add(1, Relaxed);
                self.fallback.check_rates(call)
            }
            StoreDown::FailClosed => {
                stats.fail_closed.fetch_add(1, Relaxed);
                Err(Reject::StoreUnavailable)
            }
        }
    }

    /// Forgets the fallback's idle keys (on the limiters' timer).
    pub fn tidy(&self) {
        self.fallback.tidy();
    }
}
