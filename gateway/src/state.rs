//! What every request shares: the limits (swapped whole on reload), the
//! counters, and two budgets — requests in flight (open streams included)
//! and bytes of request bodies held in memory. Both are atomics with drop
//! guards: taking or returning a unit never waits.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::reject::Reject;

pub struct State {
    limits: ArcSwap<Limits>,
    /// Client connections open on the MCP listeners, by address.
    pub connections: Arc<Connections>,
    pub metrics: Metrics,
    inflight: AtomicUsize,
    buffered: AtomicUsize,
    /// Requests in flight by client address (an entry lives while its
    /// address has one in flight): no address holds more than its share.
    inflight_by: DashMap<IpAddr, usize>,
    /// Body bytes held by client (principal, or address when anonymous),
    /// kept the same way.
    buffered_by: DashMap<Arc<str>, usize>,
    /// Serving → draining (SIGTERM or SIGQUIT arrived: answers say
    /// `Connection: close`, so clients move their next requests to new
    /// connections — another replica, or the new process of an upgrade) →
    /// closing (the listeners are closed: server streams end cleanly, so
    /// clients reopen them elsewhere).
    phase: tokio::sync::watch::Sender<Phase>,
    /// The phase as a number, read by every request without a lock (the
    /// watch, which streams wait on, takes a read lock to look).
    draining: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    Draining,
    Closing,
}

/// One unit of the in-flight budget (and of its address's share), returned on drop.
pub struct Slot {
    state: Arc<State>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            release(&self.state.inflight_by, &ip, 1);
        }
    }
}

/// Takes `n` from a client's count in `table`, dropping the entry at zero.
fn release<K: std::hash::Hash + Eq>(table: &DashMap<K, usize>, key: &K, n: usize) {
    table.remove_if_mut(key, |_, held| {
        *held = held.saturating_sub(n);
        *held == 0
    });
}

/// Adds `n` to a client's count in `table` unless that passes `cap` (a
/// refusal leaves no entry behind).
fn take<K: std::hash::Hash + Eq>(table: &DashMap<K, usize>, key: K, n: usize, cap: usize) -> bool {
    if n > cap {
        return false;
    }
    let mut held = table.entry(key).or_insert(0);
    if *held + n > cap {
        return false;
    }
    *held += n;
    true
}

/// Bytes of the body budget (and of the client's share of it), returned on drop.
pub struct BodyBudget {
    state: Arc<State>,
    bytes: usize,
    /// The client the bytes are counted against.
    client: Option<Arc<str>>,
}

impl BodyBudget {
    /// Grows the reservation to `bytes`: refuses past the gateway's budget
    /// (503) or past the client's share of it (429).
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), Reject> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = bytes - self.bytes;
        self.state.take_buffered(more)?;
        if let Some(client) = &self.client {
            let cap = self.state.share_of_buffered();
            if !take(&self.state.buffered_by, Arc::clone(client), more, cap) {
                self.state.buffered.fetch_sub(more, Ordering::AcqRel);
                return Err(Reject::RateLimited {
                    retry_after: 1,
                    what: "request body bytes held per client",
                });
            }
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for BodyBudget {
    fn drop(&mut self) {
        self.state.buffered.fetch_sub(self.bytes, Ordering::AcqRel);
        if let Some(client) = &self.client
            && self.bytes > 0
        {
            release(&self.state.buffered_by, client, self.bytes);
        }
    }
}

impl State {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits: ArcSwap::from_pointee(limits),
            connections: Arc::default(),
            metrics: Metrics::default(),
            inflight: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            inflight_by: DashMap::new(),
            buffered_by: DashMap::new(),
            phase: tokio::sync::watch::channel(Phase::Serving).0,
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The limits in force now (a reload may swap them; a request keeps
    /// the ones it started with where it holds this).
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
    }

    pub fn set_phase(&self, phase: Phase) {
        if phase >= Phase::Draining {
            self.draining.store(true, Ordering::Relaxed);
        }
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Follows the phase (server streams end when it reaches `Closing`).
    pub fn phases(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Takes a unit of the in-flight budget, or says the gateway is full.
    pub fn enter(self: &Arc<Self>) -> Result<Slot, Reject> {
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot {
            state: Arc::clone(self),
            ip: None,
        };
        if before < self.limits.load().max_inflight {
            Ok(slot)
        } else {
            Err(Reject::Capacity)
        }
    }

    /// [`State::enter`] for a request from `ip`, which may hold at most its
    /// share (`client_share`) of the budget (429 beyond).
    pub fn enter_from(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, Reject> {
        let mut slot = self.enter()?;
        if let Some(ip) = ip {
            let limits = self.limits.load();
            let cap = ((limits.max_inflight as f64 * limits.client_share) as usize).max(1);
            if !take(&self.inflight_by, ip, 1, cap) {
                return Err(Reject::RateLimited {
                    retry_after: 1,
                    what: "requests in flight per client address",
                });
            }
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    /// The most body bytes one client may hold: its share of the budget,
    /// never less than one body of the largest size.
    fn share_of_buffered(&self) -> usize {
        let limits = self.limits.load();
        let share = (limits.max_buffered_bytes as f64 * limits.client_share) as usize;
        share.max(limits.max_body_bytes)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    fn take_buffered(&self, n: usize) -> Result<(), Reject> {
        let before = self.buffered.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limits.load().max_buffered_bytes {
            self.buffered.fetch_sub(n, Ordering::AcqRel);
            return Err(Reject::Capacity);
        }
        Ok(())
    }

    /// An empty reservation of the body budget for `client`'s body, grown
    /// as its bytes arrive ([`BodyBudget::grow_to`]).
    pub fn reserve_body(self: &Arc<Self>, client: Option<Arc<str>>) -> BodyBudget {
        BodyBudget {
            state: Arc::clone(self),
            bytes: 0,
            client,
        }
    }
}

/// Client connections open now, by address. An entry lives while its
/// address holds a connection (removed at zero), so the table is bounded by
/// the connections open.
#[derive(Default)]
pub struct Connections {
    by_ip: DashMap<IpAddr, usize>,
    open: AtomicUsize,
}

/// One open connection, counted until dropped.
pub struct OpenConnection {
    table: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.table.open.fetch_sub(1, Ordering::Relaxed);
        self.table.by_ip.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

impl Connections {
    /// Counts a connection from `ip`, unless the address holds `cap` already.
    pub fn enter(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<OpenConnection> {
        if cap == 0 {
            return None;
        }
        let mut n = self.by_ip.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        drop(n);
        self.open.fetch_add(1, Ordering::Relaxed);
        Some(OpenConnection {
            table: Arc::clone(self),
            ip,
        })
    }

    /// Connections open now (all addresses).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Addresses holding a connection now.
    pub fn addresses(&self) -> usize {
        self.by_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_body_bytes_come_back_when_dropped() {
        let state = State::new(Limits {
            max_inflight: 1,
            max_buffered_bytes: 100,
            ..Limits::default()
        });
        let slot = state.enter().unwrap();
        assert_eq!(state.enter().err(), Some(Reject::Capacity));
        drop(slot);
        assert!(state.enter().is_ok());

        let mut a = state.reserve_body(None);
        a.grow_to(60).unwrap();
        assert!(
            state.reserve_body(None).grow_to(50).is_err(),
            "over the budget"
        );
        assert!(a.grow_to(100).is_ok());
        assert!(a.grow_to(101).is_err());
        drop(a);
        assert_eq!(state.buffered(), 0);
    }

    #[test]
    fn one_client_holds_at_most_its_share_of_the_budgets() {
        let state = State::new(Limits {
            max_inflight: 8,
            max_buffered_bytes: 1000,
            max_body_bytes: 100,
            client_share: 0.25,
            ..Limits::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..2)
            .map(|_| state.enter_from(Some(ip)).unwrap())
            .collect();
        assert!(matches!(
            state.enter_from(Some(ip)),
            Err(Reject::RateLimited { .. })
        ));
        assert!(state.enter_from(Some("10.0.0.2".parse().unwrap())).is_ok());
        drop(slots);
        assert!(state.inflight_by.is_empty(), "entries leave at zero");
        let alice: Arc<str> = Arc::from("alice");
        let mut a = state.reserve_body(Some(Arc::clone(&alice)));
        a.grow_to(250).unwrap();
        let mut b = state.reserve_body(Some(Arc::clone(&alice)));
        assert!(
            matches!(b.grow_to(10), Err(Reject::RateLimited { .. })),
            "alice's share is used"
        );
        let mut bob = state.reserve_body(Some(Arc::from("bob")));
        bob.grow_to(250).unwrap();
        drop((a, b, bob));
        assert!(state.buffered_by.is_empty());
        assert_eq!(state.buffered(), 0);
    }

    #[test]
    fn an_address_holds_at_most_its_cap_of_connections_and_leaves_no_entry() {
        let table = Arc::new(Connections::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = table.enter(ip, 2).unwrap();
        let b = table.enter(ip, 2).unwrap();
        assert!(table.enter(ip, 2).is_none(), "over the cap");
        assert!(
            table.enter("10.0.0.2".parse().unwrap(), 2).is_some(),
            "per address"
        );
        drop((a, b));
        assert_eq!(
            table.addresses(),
            0,
            "no entry is kept for an address with none open"
        );
        assert_eq!(table.open(), 0);
    }
}
