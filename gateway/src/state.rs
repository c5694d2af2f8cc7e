//! What every request shares: the limits (swapped whole on reload), the
//! counters, and two budgets — requests in flight (open streams included)
//! and bytes of request bodies held in memory. Both are atomics with drop
//! guards: taking or returning a unit never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::reject::Reject;

pub struct State {
    limits: ArcSwap<Limits>,
    pub metrics: Metrics,
    inflight: AtomicUsize,
    buffered: AtomicUsize,
    /// Serving → draining (SIGTERM or SIGQUIT arrived: answers say
    /// `Connection: close`, so clients move their next requests to new
    /// connections — another replica, or the new process of an upgrade) →
    /// closing (the listeners are closed: server streams end cleanly, so
    /// clients reopen them elsewhere).
    phase: tokio::sync::watch::Sender<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    Draining,
    Closing,
}

/// One unit of the in-flight budget, returned on drop.
pub struct Slot(Arc<State>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes of the body budget, returned on drop.
pub struct BodyBudget {
    state: Arc<State>,
    bytes: usize,
}

impl BodyBudget {
    /// Grows the reservation to `bytes`; refuses past the gateway's budget.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), Reject> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = bytes - self.bytes;
        self.state.take_buffered(more)?;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for BodyBudget {
    fn drop(&mut self) {
        self.state.buffered.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl State {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits: ArcSwap::from_pointee(limits),
            metrics: Metrics::default(),
            inflight: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            phase: tokio::sync::watch::channel(Phase::Serving).0,
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
        self.phase.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    /// Follows the phase (server streams end when it reaches `Closing`).
    pub fn phases(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Takes a unit of the in-flight budget, or says the gateway is full.
    pub fn enter(self: &Arc<Self>) -> Result<Slot, Reject> {
        let before = self.inflight.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(self));
        if before < self.limits.load().max_inflight {
            Ok(slot)
        } else {
            Err(Reject::Capacity)
        }
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

    /// Reserves `bytes` of the body budget.
    pub fn reserve_body(self: &Arc<Self>, bytes: usize) -> Result<BodyBudget, Reject> {
        self.take_buffered(bytes)?;
        Ok(BodyBudget {
            state: Arc::clone(self),
            bytes,
        })
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

        let mut a = state.reserve_body(60).unwrap();
        assert!(state.reserve_body(50).is_err(), "over the budget");
        assert!(a.grow_to(100).is_ok());
        assert!(a.grow_to(101).is_err());
        drop(a);
        assert_eq!(state.buffered(), 0);
    }
}
