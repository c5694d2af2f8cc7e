//! How fast, and how much: GCRA rate limits (`governor`) per principal (per
//! client IP when anonymous), per principal per tool, on new sessions, on
//! open streams, across everything, and per client IP before
//! authentication. Limits come from the principal's tier.
//!
//! Every keyed table is bounded by keys (`max_keys`) and by bytes
//! (`max_key_bytes`): limiters forget keys whose bucket has filled again (on
//! a timer), and past either bound the least recently seen keys
//! ([`keyed`](super::keyed)), so a flood of new keys never resets the
//! budgets of principals that keep coming. A key's size is bounded too: a
//! tool gets its own per-principal key only if the pool's servers listed
//! it (clients cannot make keys by inventing names; the others share one),
//! and tool names over the specification's 128 characters never get here
//! (`jsonrpc::parse` refuses them). Stream counts hold only principals with
//! a stream open. No lock is shared by all requests: the limiters and
//! counters are sharded maps and atomics.
//!
//! With a store the replicas share (`[cluster] store`), these tables are
//! the first line: a request they let through is then counted against the
//! same limits in the store ([`Limiters::asks`], checked by
//! [`shared`](super::shared)); one they refuse never reaches it. While the
//! store is down, [`Limiters::divided`] (each limit 1/replicas) stands in
//! for it ([`Limiters::check_rates`]). Stream counts, the in-flight cap per
//! address and the connection rate per address stay per replica.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::auth::Principal;
use super::keyed::Keyed;
use crate::cluster::Ask;
use crate::config::{GlobalLimits, TierConfig};
use crate::reject::Reject;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

/// The bounds every keyed table gets.
#[derive(Clone, Copy)]
struct Bounds {
    keys: usize,
    bytes: usize,
}

impl Bounds {
    fn keyed<K: std::hash::Hash + Eq + Clone + super::keyed::Weigh>(self, q: Quota) -> Keyed<K> {
        Keyed::new(q, self.keys, self.bytes)
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
    fn new(c: &TierConfig, b: Bounds) -> Self {
        let per_minute = |n: u32| Quota::per_minute(nz(n));
        Self {
            requests: b.keyed(
                Quota::per_second(nz(c.requests_per_second))
                    .allow_burst(nz(c.burst.unwrap_or(c.requests_per_second))),
            ),
            tools: c.tool_calls_per_minute.map(|n| b.keyed(per_minute(n))),
            per_tool: c
                .tool_limits
                .iter()
                .map(|(tool, n)| (tool.clone(), b.keyed(per_minute(*n))))
                .collect(),
            sessions: c.sessions_per_minute.map(|n| b.keyed(per_minute(n))),
            max_streams: c.max_streams,
        }
    }

    fn tables(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let one = |l: &Keyed<Arc<str>>| (l.keys(), l.bytes());
        std::iter::once(one(&self.requests))
            .chain(self.tools.iter().map(|l| (l.keys(), l.bytes())))
            .chain(self.per_tool.values().map(one))
            .chain(self.sessions.iter().map(one))
    }
}

pub struct Limiters {
    tiers: BTreeMap<String, Tier>,
    global: Option<DefaultDirectRateLimiter>,
    global_quota: Option<Quota>,
    per_ip: Option<Keyed<IpAddr>>,
    per_ip_connections: Option<Keyed<IpAddr>>,
    per_ip_inflight: Option<usize>,
    /// Counts of what is held now (kept across a reload, see [`Limiters::keep_counts`]).
    ip_inflight: Arc<DashMap<IpAddr, usize>>,
    streams: Arc<DashMap<Arc<str>, usize>>,
    /// The tool part of the key of every tool the pool's servers did not list.
    unlisted: Arc<str>,
}

/// A stream (or in-flight request) counted against a cap until dropped.
pub struct Held<K: std::hash::Hash + Eq + Clone> {
    table: Arc<Limiters>,
    key: K,
    which: fn(&Limiters) -> &DashMap<K, usize>,
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

impl Limiters {
    pub fn new(tiers: &BTreeMap<String, TierConfig>, global: &GlobalLimits) -> Arc<Self> {
        let b = Bounds {
            keys: global.max_keys.max(16),
            bytes: global.max_key_bytes.max(64 * 1024),
        };
        Arc::new(Self {
            tiers: tiers
                .iter()
                .map(|(n, c)| (n.clone(), Tier::new(c, b)))
                .collect(),
            global: global
                .requests_per_second
                .map(|n| RateLimiter::direct(Quota::per_second(nz(n)))),
            global_quota: global.requests_per_second.map(|n| Quota::per_second(nz(n))),
            per_ip: global
                .per_ip_requests_per_second
                .map(|n| b.keyed(Quota::per_second(nz(n)))),
            per_ip_connections: global.per_ip_connections_per_second.map(|n| {
                b.keyed(
                    Quota::per_second(nz(n))
                        .allow_burst(nz(global.per_ip_connection_burst.unwrap_or(n))),
                )
            }),
            per_ip_inflight: global.per_ip_inflight,
            ip_inflight: Arc::default(),
            streams: Arc::default(),
            unlisted: Arc::from(""),
        })
    }

    /// Counts open streams and in-flight requests in `old`'s tables, so a
    /// reload does not forget what is held (a stream opened before it still
    /// counts against the cap, and is still given back when it ends).
    pub fn keep_counts(&mut self, old: &Limiters) {
        self.ip_inflight = Arc::clone(&old.ip_inflight);
        self.streams = Arc::clone(&old.streams);
    }

    fn tier(&self, who: &Principal) -> Option<&Tier> {
        self.tier_named(who).map(|(_, t)| t)
    }

    /// The principal's tier and its name (an unknown tier is "default").
    fn tier_named(&self, who: &Principal) -> Option<(&str, &Tier)> {
        self.tiers
            .get_key_value(&who.tier)
            .or_else(|| self.tiers.get_key_value("default"))
            .map(|(name, t)| (name.as_str(), t))
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
        l.check_key(&ip).is_ok()
    }

    /// Before authentication: the client IP's rate and in-flight cap.
    pub fn check_ip(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Option<Held<IpAddr>>, Reject> {
        let Some(ip) = ip else { return Ok(None) };
        self.check_ip_rate(ip)?;
        let Some(cap) = self.per_ip_inflight else {
            return Ok(None);
        };
        // (a cap of 0 refuses without an entry: a refused key leaves none behind)
        let mut n = match cap {
            0 => None,
            _ => Some(self.ip_inflight.entry(ip).or_insert(0)),
        };
        if n.as_ref().is_none_or(|n| **n >= cap) {
            return Err(Reject::RateLimited {
                retry_after: 1,
                what: "requests in flight per client address",
            });
        }
        if let Some(n) = n.as_mut() {
            **n += 1;
        }
        drop(n);
        Ok(Some(Held {
            table: Arc::clone(self),
            key: ip,
            which: |l| &l.ip_inflight,
        }))
    }

    /// The client address's request rate.
    fn check_ip_rate(&self, ip: IpAddr) -> Result<(), Reject> {
        if let Some(l) = &self.per_ip {
            l.check_key(&ip).map_err(|n| Reject::RateLimited {
                retry_after: wait(n),
                what: "requests per client address",
            })?;
        }
        Ok(())
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
            t.requests.check_key(key).map_err(|n| Reject::RateLimited {
                retry_after: wait(n),
                what: "requests per principal",
            })?;
        }
        Ok(())
    }

    /// A `tools/call`: the principal's rate for that tool. `listed` says
    /// whether the pool's servers listed the tool (`session::replay::
    /// ToolHints::lists`): only those get a key of their own, every other
    /// name shares one, so clients cannot make keys by inventing names.
    pub fn check_tool(
        &self,
        who: &Principal,
        key: &Arc<str>,
        tool: &str,
        listed: impl Fn(&str) -> bool,
    ) -> Result<(), Reject> {
        let Some(t) = self.tier(who) else {
            return Ok(());
        };
        let refused = |n| Reject::RateLimited {
            retry_after: wait(n),
            what: "calls of this tool per principal",
        };
        if let Some(l) = t.per_tool.get(tool) {
            return l.check_key(key).map_err(refused);
        }
        if let Some(l) = &t.tools {
            let tool = if listed(tool) {
                Arc::from(tool)
            } else {
                Arc::clone(&self.unlisted)
            };
            l.check_key(&(Arc::clone(key), tool)).map_err(refused)?;
        }
        Ok(())
    }

    /// A new session (initialize, GET /sse).
    pub fn check_new_session(&self, who: &Principal, key: &Arc<str>) -> Result<(), Reject> {
        if let Some(l) = self.tier(who).and_then(|t| t.sessions.as_ref()) {
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
        let mut n = match cap {
            0 => None,
            _ => Some(self.streams.entry(Arc::clone(key)).or_insert(0)),
        };
        if n.as_ref().is_none_or(|n| **n >= cap) {
            return Err(Reject::RateLimited {
                retry_after: 1,
                what: "open streams per principal",
            });
        }
        if let Some(n) = n.as_mut() {
            **n += 1;
        }
        drop(n);
        Ok(Some(Held {
            table: Arc::clone(self),
            key: Arc::clone(key),
            which: |l| &l.streams,
        }))
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
        self.tables().map(|(keys, _)| keys).sum::<usize>()
            + self.streams.len()
            + self.ip_inflight.len()
    }

    /// Bytes counted for the keys of the rate-limit tables.
    pub fn key_bytes(&self) -> usize {
        self.tables().map(|(_, bytes)| bytes).sum()
    }

    /// Keys and bytes of each rate-limit table.
    fn tables(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let ip = |l: &Keyed<IpAddr>| (l.keys(), l.bytes());
        self.tiers
            .values()
            .flat_map(Tier::tables)
            .chain(self.per_ip.iter().map(ip))
            .chain(self.per_ip_connections.iter().map(ip))
    }

    /// How often [`Limiters::tidy`] should run.
    pub const TIDY_EVERY: Duration = Duration::from_secs(10);
}

/// What one request counts against the rate limits, as the shared store
/// and the fallback see it (the same limits the steps checked here).
pub struct Call<'a> {
    pub who: &'a Principal,
    /// [`Limiters::key`]: the principal's name, or the address of an anonymous client.
    pub key: &'a Arc<str>,
    pub ip: Option<IpAddr>,
    /// Messages in the body (a batch's each count as a request; 1 otherwise).
    pub messages: u32,
    /// Its `tools/call`s (a batch may hold several): each tool, and whether
    /// the pool's servers listed it.
    pub tools: &'a [(&'a str, bool)],
    /// It opens a session (`initialize`, `GET /sse`).
    pub new_session: bool,
}

/// A GCRA limit as the store takes it: one cell every interval, a burst.
fn ask(
    prefix: &str,
    kind: &str,
    parts: &[&str],
    q: Quota,
    what: &'static str,
) -> crate::cluster::Ask {
    Ask::new(
        prefix,
        kind,
        parts,
        q.replenish_interval(),
        q.burst_size().get(),
        what,
    )
}

impl Limiters {
    /// The rate limits `call` counts against, as asks of the shared store
    /// (keys under `prefix`), in the order the steps check them here.
    pub fn asks(&self, call: &Call<'_>, prefix: &str, out: &mut Vec<Ask>) {
        if let (Some(l), Some(ip)) = (&self.per_ip, call.ip) {
            let ip = ip.to_string();
            let what = "requests per client address";
            out.push(ask(prefix, "ip", &[&ip], l.quota(), what));
        }
        let messages = call.messages;
        if let Some(q) = self.global_quota {
            let all = ask(prefix, "all", &[], q, "requests to the gateway");
            out.push(all.taking(messages));
        }
        let Some((tier, t)) = self.tier_named(call.who) else {
            return;
        };
        let key: &str = call.key;
        let what = "requests per principal";
        let requests = ask(prefix, "rq", &[tier, key], t.requests.quota(), what);
        out.push(requests.taking(messages));
        for &(tool, listed) in call.tools {
            let what = "calls of this tool per principal";
            let one = if let Some(l) = t.per_tool.get(tool) {
                ask(prefix, "pt", &[tier, tool, key], l.quota(), what)
            } else if let Some(l) = &t.tools {
                let tool = if listed { tool } else { &self.unlisted };
                ask(prefix, "tl", &[tier, key, tool], l.quota(), what)
            } else {
                continue;
            };
            // A batch calling one tool twice takes two cells of one key.
            match out.iter_mut().find(|a| a.key == one.key) {
                Some(same) => same.cells += 1,
                None => out.push(one),
            }
        }
        if let (true, Some(l)) = (call.new_session, &t.sessions) {
            let what = "new sessions per principal";
            out.push(ask(prefix, "ss", &[tier, key], l.quota(), what));
        }
    }

    /// Every rate limit `call` counts against, checked here (the fallback
    /// while the shared store is down).
    pub fn check_rates(&self, call: &Call<'_>) -> Result<(), Reject> {
        if let Some(ip) = call.ip {
            self.check_ip_rate(ip)?;
        }
        for _ in 0..call.messages.max(1) {
            self.check_request(call.who, call.key)?;
        }
        for &(tool, listed) in call.tools {
            self.check_tool(call.who, call.key, tool, |_| listed)?;
        }
        if call.new_session {
            self.check_new_session(call.who, call.key)?;
        }
        Ok(())
    }

    /// These limits, each rate and burst 1/`n` (rounded up): what one of
    /// `n` replicas allows on its own while their shared store is down.
    pub fn divided(
        tiers: &BTreeMap<String, TierConfig>,
        global: &GlobalLimits,
        n: u32,
    ) -> Arc<Self> {
        let n = n.max(1);
        let part = |v: u32| v.div_ceil(n).max(1);
        let tiers = tiers
            .iter()
            .map(|(name, t)| {
                let t = TierConfig {
                    requests_per_second: part(t.requests_per_second),
                    burst: t.burst.map(part),
                    tool_calls_per_minute: t.tool_calls_per_minute.map(part),
                    tool_limits: t
                        .tool_limits
                        .iter()
                        .map(|(k, v)| (k.clone(), part(*v)))
                        .collect(),
                    sessions_per_minute: t.sessions_per_minute.map(part),
                    max_streams: t.max_streams,
                };
                (name.clone(), t)
            })
            .collect();
        let global = GlobalLimits {
            requests_per_second: global.requests_per_second.map(part),
            per_ip_requests_per_second: global.per_ip_requests_per_second.map(part),
            ..global.clone()
        };
        Self::new(&tiers, &global)
    }
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

    /// The tools the pool's servers listed, in these tests.
    fn listed(tool: &str) -> bool {
        ["get_agent", "list_agents", "delete_agent"].contains(&tool)
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
        let l = Limiters::new(&tier(5), &GlobalLimits::default());
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
            l.check_tool(&a, &ka, "get_agent", listed).unwrap();
        }
        assert!(l.check_tool(&a, &ka, "get_agent", listed).is_err());
        assert!(
            l.check_tool(&a, &ka, "list_agents", listed).is_ok(),
            "per tool"
        );
        l.check_tool(&a, &ka, "delete_agent", listed).unwrap();
        assert!(
            l.check_tool(&a, &ka, "delete_agent", listed).is_err(),
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
        let l = Limiters::new(
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

    #[test]
    fn tools_no_server_listed_share_one_key() {
        let l = Limiters::new(&tier(100), &GlobalLimits::default());
        let (a, ka) = (who("a"), Arc::<str>::from("key:a"));
        l.check_tool(&a, &ka, "get_agent", listed).unwrap();
        let before = l.keys();
        // Three calls a minute for all unlisted names together, however many.
        for i in 0..3 {
            l.check_tool(&a, &ka, &format!("invented-{i}"), listed)
                .unwrap();
        }
        assert_eq!(l.keys(), before + 1, "one shared key, not one per name");
        assert!(
            l.check_tool(&a, &ka, "invented-99", listed).is_err(),
            "the shared key's budget is spent"
        );
        assert!(
            l.check_tool(&a, &ka, "list_agents", listed).is_ok(),
            "a listed tool keeps its own budget"
        );
    }

    #[test]
    fn a_flood_of_new_principals_does_not_reset_a_busy_ones_limit() {
        let l = Limiters::new(
            &tier(5),
            &GlobalLimits {
                max_keys: 16,
                ..GlobalLimits::default()
            },
        );
        let (busy, kb) = (who("busy"), Arc::<str>::from("key:busy"));
        while l.check_request(&busy, &kb).is_ok() {}
        for i in 0..1000u32 {
            let k: Arc<str> = Arc::from(format!("key:new-{i}"));
            let _ = l.check_request(&who("new"), &k);
            assert!(
                l.check_request(&busy, &kb).is_err(),
                "the busy principal's budget came back after {i} new principals"
            );
        }
    }

    #[test]
    fn long_principal_names_are_bounded_by_bytes() {
        let max = 256 * 1024;
        let l = Limiters::new(
            &tier(5),
            &GlobalLimits {
                max_key_bytes: max,
                ..GlobalLimits::default()
            },
        );
        for i in 0..5_000u32 {
            let k: Arc<str> = Arc::from(format!("jwt::{i}-{}", "s".repeat(4096)));
            let _ = l.check_request(&who("x"), &k);
            assert!(
                l.key_bytes() <= max + 8192,
                "{} bytes at {i}",
                l.key_bytes()
            );
        }
    }
}
