//! How fast, and how much: GCRA rate limits (`governor`) per principal (per
//! client IP when anonymous), per principal per tool, on new sessions, on
//! open streams, across everything, and per client IP before
//! authentication. Limits come from the principal's tier.
//!
//! Every keyed table is bounded: limiters forget idle keys
//! (`retain_recent`, on a timer and whenever a table passes `max_keys`), and
//! a table still over `max_keys` is cleared (a flood of distinct keys then
//! costs the flooder nothing but also grows nothing). Stream counts hold only
//! principals with a stream open. No lock is shared by all requests: the
//! limiters and counters are sharded maps and atomics.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::auth::Principal;
use crate::config::{GlobalLimits, TierConfig};
use crate::reject::Reject;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// A keyed limiter that can be started over (governor's cannot be emptied).
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    inner: ArcSwap<DefaultKeyedRateLimiter<K>>,
    quota: Quota,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(quota: Quota) -> Self {
        Self {
            inner: ArcSwap::from_pointee(RateLimiter::keyed(quota)),
            quota,
        }
    }

    fn check_key(&self, key: &K) -> Result<(), governor::NotUntil<governor::clock::QuantaInstant>> {
        self.inner.load().check_key(key)
    }

    fn len(&self) -> usize {
        self.inner.load().len()
    }

    fn retain_recent(&self) {
        let l = self.inner.load();
        l.retain_recent();
        l.shrink_to_fit();
    }

    fn reset(&self) {
        self.inner.store(Arc::new(RateLimiter::keyed(self.quota)));
    }
}

/// The limiters of one tier.
struct Tier {
    requests: Keyed<Arc<str>>,
    tools: Option<Keyed<(Arc<str>, Arc<str>)>>,
    per_tool: BTreeMap<String, Keyed<Arc<str>>>,
    sessions: Option<Keyed<Arc<str>>>,
    max_streams: Option<usize>,
}

impl Tier {
    fn new(c: &TierConfig) -> Self {
        let per_minute = |n: u32| Quota::per_minute(nz(n));
        Self {
            requests: Keyed::new(
                Quota::per_second(nz(c.requests_per_second))
                    .allow_burst(nz(c.burst.unwrap_or(c.requests_per_second))),
            ),
            tools: c.tool_calls_per_minute.map(|n| Keyed::new(per_minute(n))),
            per_tool: c
                .tool_limits
                .iter()
                .map(|(tool, n)| (tool.clone(), Keyed::new(per_minute(*n))))
                .collect(),
            sessions: c.sessions_per_minute.map(|n| Keyed::new(per_minute(n))),
            max_streams: c.max_streams,
        }
    }
}

pub struct Limits {
    tiers: BTreeMap<String, Tier>,
    global: Option<DefaultDirectRateLimiter>,
    per_ip: Option<Keyed<IpAddr>>,
    per_ip_connections: Option<Keyed<IpAddr>>,
    per_ip_inflight: Option<usize>,
    ip_inflight: DashMap<IpAddr, usize>,
    streams: DashMap<Arc<str>, usize>,
    max_keys: usize,
}

/// A stream (or in-flight request) counted against a cap until dropped.
pub struct Held<K: std::hash::Hash + Eq + Clone> {
    table: Arc<Limits>,
    key: K,
    which: fn(&Limits) -> &DashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Held<K> {
    fn drop(&mut self) {
        let map = (self.which)(&self.table);
        map.remove_if_mut(&self.key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// How long until a refused request may be tried again.
fn wait(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    let secs = not_until
        .wait_time_from(DefaultClock::default().now())
        .as_secs_f64();
    secs.ceil().max(1.0) as u64
}

impl Limits {
    pub fn new(tiers: &BTreeMap<String, TierConfig>, global: &GlobalLimits) -> Arc<Self> {
        Arc::new(Self {
            tiers: tiers
                .iter()
                .map(|(n, c)| (n.clone(), Tier::new(c)))
                .collect(),
            global: global
                .requests_per_second
                .map(|n| RateLimiter::direct(Quota::per_second(nz(n)))),
            per_ip: global
                .per_ip_requests_per_second
                .map(|n| Keyed::new(Quota::per_second(nz(n)))),
            per_ip_connections: global.per_ip_connections_per_second.map(|n| {
                Keyed::new(
                    Quota::per_second(nz(n))
                        .allow_burst(nz(global.per_ip_connection_burst.unwrap_or(n))),
                )
            }),
            per_ip_inflight: global.per_ip_inflight,
            ip_inflight: DashMap::new(),
            streams: DashMap::new(),
            max_keys: global.max_keys.max(16),
        })
    }

    fn tier(&self, who: &Principal) -> Option<&Tier> {
        self.tiers
            .get(&who.tier)
            .or_else(|| self.tiers.get("default"))
    }

    /// The key a principal is limited by: its name, or its IP when anonymous.
    pub fn key(who: &Principal, ip: Option<IpAddr>) -> Arc<str> {
        if who.is_anonymous() {
            Arc::from(ip.map(|i| i.to_string()).unwrap_or_default())
        } else {
            Arc::from(who.name.as_str())
        }
    }

    /// A new connection from `ip`: within its address's connection rate?
    /// (Checked at accept, before TLS; a refused connection is closed.)
    pub fn accept_connection(&self, ip: IpAddr) -> bool {
        let Some(l) = &self.per_ip_connections else {
            return true;
        };
        self.bound(l);
        l.check_key(&ip).is_ok()
    }

    /// Before authentication: the client IP's rate and in-flight cap.
    pub fn check_ip(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Option<Held<IpAddr>>, Reject> {
        let Some(ip) = ip else { return Ok(None) };
        if let Some(l) = &self.per_ip {
            self.bound(l);
            l.check_key(&ip).map_err(|n| Reject::RateLimited {
                retry_after: wait(n),
                what: "requests per client address",
            })?;
        }
        let Some(cap) = self.per_ip_inflight else {
            return Ok(None);
        };
        let mut n = self.ip_inflight.entry(ip).or_insert(0);
        if *n >= cap {
            return Err(Reject::RateLimited {
                retry_after: 1,
                what: "requests in flight per client address",
            });
        }
        *n += 1;
        drop(n);
        Ok(Some(Held {
            table: Arc::clone(self),
            key: ip,
            which: |l| &l.ip_inflight,
        }))
    }

    /// Every request: the global rate and the principal's.
    pub fn check_request(&self, who: &Principal, key: &Arc<str>) -> Result<(), Reject> {
        if let Some(g) = &self.global {
            g.check().map_err(|n| Reject::RateLimited {
                retry_after: wait(n),
                what: "requests to the gateway",
            })?;
        }
        if let Some(t) = self.tier(who) {
            self.bound(&t.requests);
            t.requests.check_key(key).map_err(|n| Reject::RateLimited {
                retry_after: wait(n),
                what: "requests per principal",
            })?;
        }
        Ok(())
    }

    /// A `tools/call`: the principal's rate for that tool.
    pub fn check_tool(&self, who: &Principal, key: &Arc<str>, tool: &str) -> Result<(), Reject> {
        let Some(t) = self.tier(who) else {
            return Ok(());
        };
        let refused = |n| Reject::RateLimited {
            retry_after: wait(n),
            what: "calls of this tool per principal",
        };
        if let Some(l) = t.per_tool.get(tool) {
            self.bound(l);
            return l.check_key(key).map_err(refused);
        }
        if let Some(l) = &t.tools {
            self.bound(l);
            l.check_key(&(Arc::clone(key), Arc::from(tool)))
                .map_err(refused)?;
        }
        Ok(())
    }

    /// A new session (initialize, GET /sse).
    pub fn check_new_session(&self, who: &Principal, key: &Arc<str>) -> Result<(), Reject> {
        if let Some(l) = self.tier(who).and_then(|t| t.sessions.as_ref()) {
            self.bound(l);
            l.check_key(key).map_err(|n| Reject::RateLimited {
                retry_after: wait(n),
                what: "new sessions per principal",
            })?;
        }
        Ok(())
    }

    /// An open stream (GET /mcp, GET /sse), held until the guard drops.
    pub fn open_stream(
        self: &Arc<Self>,
        who: &Principal,
        key: &Arc<str>,
    ) -> Result<Option<Held<Arc<str>>>, Reject> {
        let Some(cap) = self.tier(who).and_then(|t| t.max_streams) else {
            return Ok(None);
        };
        let mut n = self.streams.entry(Arc::clone(key)).or_insert(0);
        if *n >= cap {
            return Err(Reject::RateLimited {
                retry_after: 1,
                what: "open streams per principal",
            });
        }
        *n += 1;
        drop(n);
        Ok(Some(Held {
            table: Arc::clone(self),
            key: Arc::clone(key),
            which: |l| &l.streams,
        }))
    }

    /// Keeps a keyed limiter within `max_keys`.
    fn bound<K: std::hash::Hash + Eq + Clone>(&self, l: &Keyed<K>) {
        if l.len() >= self.max_keys {
            l.retain_recent();
            // Still full of keys seen just now: start over (lenient, bounded).
            if l.len() >= self.max_keys {
                tracing::warn!(
                    keys = l.len(),
                    "a rate-limit table hit its key cap; starting it over"
                );
                l.reset();
            }
        }
    }

    /// Forgets idle keys everywhere (called on a timer).
    pub fn tidy(&self) {
        for t in self.tiers.values() {
            t.requests.retain_recent();
            if let Some(l) = &t.tools {
                l.retain_recent();
            }
            for l in t.per_tool.values() {
                l.retain_recent();
            }
            if let Some(l) = &t.sessions {
                l.retain_recent();
            }
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.per_ip_connections {
            l.retain_recent();
        }
    }

    /// Keys held now, over all tables (for /metrics and the bound's test).
    pub fn keys(&self) -> usize {
        let mut n = self.streams.len() + self.ip_inflight.len();
        for t in self.tiers.values() {
            n += t.requests.len();
            n += t.tools.as_ref().map_or(0, |l| l.len());
            n += t.per_tool.values().map(|l| l.len()).sum::<usize>();
            n += t.sessions.as_ref().map_or(0, |l| l.len());
        }
        n + self.per_ip.as_ref().map_or(0, |l| l.len())
            + self.per_ip_connections.as_ref().map_or(0, |l| l.len())
    }

    /// How often [`Limits::tidy`] should run.
    pub const TIDY_EVERY: Duration = Duration::from_secs(10);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str) -> Principal {
        Principal {
            name: format!("key:{name}"),
            credential: super::super::auth::Credential::ApiKey,
            subject: name.into(),
            tier: "default".into(),
            scopes: vec![],
        }
    }

    fn tier(rps: u32) -> BTreeMap<String, TierConfig> {
        let mut m = BTreeMap::new();
        m.insert(
            "default".into(),
            TierConfig {
                requests_per_second: rps,
                burst: Some(rps),
                tool_calls_per_minute: Some(3),
                tool_limits: [("delete_agent".to_string(), 1)].into_iter().collect(),
                sessions_per_minute: Some(2),
                max_streams: Some(2),
            },
        );
        m
    }

    #[test]
    fn each_limit_lets_n_through_and_refuses_the_next() {
        let l = Limits::new(&tier(5), &GlobalLimits::default());
        let (a, ka) = (who("a"), Arc::<str>::from("a"));
        for _ in 0..5 {
            l.check_request(&a, &ka).unwrap();
        }
        match l.check_request(&a, &ka) {
            Err(Reject::RateLimited { retry_after, .. }) => assert!(retry_after >= 1),
            other => panic!("{other:?}"),
        }
        let kb = Arc::<str>::from("b");
        l.check_request(&who("b"), &kb)
            .expect("another principal has its own budget");
        for _ in 0..3 {
            l.check_tool(&a, &ka, "get_agent").unwrap();
        }
        assert!(l.check_tool(&a, &ka, "get_agent").is_err());
        assert!(l.check_tool(&a, &ka, "list_agents").is_ok(), "per tool");
        l.check_tool(&a, &ka, "delete_agent").unwrap();
        assert!(
            l.check_tool(&a, &ka, "delete_agent").is_err(),
            "its own limit"
        );
        l.check_new_session(&a, &ka).unwrap();
        l.check_new_session(&a, &ka).unwrap();
        assert!(l.check_new_session(&a, &ka).is_err());
        let s1 = l.open_stream(&a, &ka).unwrap();
        let _s2 = l.open_stream(&a, &ka).unwrap();
        assert!(l.open_stream(&a, &ka).is_err());
        drop(s1);
        assert!(
            l.open_stream(&a, &ka).is_ok(),
            "a closed stream frees its place"
        );
    }

    #[test]
    fn a_spray_of_distinct_keys_stays_bounded() {
        let l = Limits::new(
            &tier(100),
            &GlobalLimits {
                max_keys: 1000,
                ..GlobalLimits::default()
            },
        );
        for i in 0..100_000u32 {
            let k: Arc<str> = Arc::from(i.to_string());
            let _ = l.check_request(&who("x"), &k);
            assert!(l.keys() <= 1000 + 1, "keys {} at {i}", l.keys());
        }
    }
}
