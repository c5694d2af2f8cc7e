//! What the gateway learns about a backend from the exchanges clients make
//! through it and from active health checks: failures in a row, ejection
//! (why, since and until when, how many in a row), and when it last came
//! back (for slow start). Everything is an atomic: written on the failure
//! path and by the health checker, read on every pick.
//!
//! The rules, after Envoy's outlier detection:
//! - a connection that was never made (refused, connect timeout) ejects at
//!   once; `eject_after` 5xx answers (503 aside) or lost exchanges (reset,
//!   timeout, a stream cut short) in a row eject; a 503 (draining,
//!   overloaded) takes the backend out of new work for [`DRAINING_MS`];
//! - the n-th ejection in a row lasts `eject_base × 2^(n-1)`, never longer
//!   than `eject_for`; a backend that has not been ejected for
//!   `eject_reset` starts again at `eject_base`;
//! - an ejection for a failed connection ends at the first sign of life: a
//!   passing health check or any answer (whatever its status); a draining
//!   one at a passing health check; one for 5xx or lost exchanges runs its
//!   time (a health check does not see what clients see);
//! - the pool (not this module) keeps the share of members ejected at once
//!   under `max_ejected`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64};
use std::time::Duration;

use crate::upstream::UpstreamError;

/// How long a backend that answered 503 gets no new work (unless a passing
/// health check says it is back sooner).
pub const DRAINING_MS: u64 = 2000;

/// A pool's rules for failing and returning backends (`[[pools]]` settings).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// 5xx answers or lost exchanges in a row that eject a backend.
    pub eject_after: u32,
    /// The first ejection's length; each further one in a row doubles it …
    pub eject_base: Duration,
    /// … up to this (`eject_for`).
    pub eject_max: Duration,
    /// A backend not ejected for this long starts again at `eject_base`.
    pub eject_reset: Duration,
    /// The largest share of a pool's members ejected at once (one at least).
    pub max_ejected: f64,
    /// A backend that joins or comes back gets a share of new sessions that
    /// grows over this window (zero: none).
    pub slow_start: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            eject_after: 5,
            eject_base: Duration::from_secs(2),
            eject_max: Duration::from_secs(30),
            eject_reset: Duration::from_secs(60),
            max_ejected: 0.5,
            slow_start: Duration::from_secs(10),
        }
    }
}

impl Policy {
    /// How many of `members` backends may be ejected at once.
    pub fn max_out(&self, members: usize) -> usize {
        ((members as f64 * self.max_ejected).floor() as usize).max(1)
    }

    /// How long the `n`-th ejection in a row lasts (`n` ≥ 1).
    pub fn ejection_ms(&self, n: u32) -> u64 {
        let base = self.eject_base.as_millis() as u64;
        let max = self.eject_max.as_millis() as u64;
        let doublings = n.saturating_sub(1).min(32);
        base.saturating_mul(1u64 << doublings).min(max)
    }
}

/// What became of one exchange with a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered, with this status.
    Answered(u16),
    /// The connection was never made: the request did not reach it.
    Refused,
    /// The exchange broke after the request may have reached it (reset,
    /// timeout, an answer cut short).
    Lost,
}

impl From<&UpstreamError> for Outcome {
    fn from(e: &UpstreamError) -> Self {
        if e.never_reached() {
            Outcome::Refused
        } else {
            Outcome::Lost
        }
    }
}

/// Why a backend was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// A connection to it failed.
    Connect = 1,
    /// `eject_after` 5xx answers in a row.
    Status = 2,
    /// `eject_after` lost exchanges in a row.
    Lost = 3,
    /// It answered 503.
    Draining = 4,
}

impl Reason {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Reason::Connect,
            2 => Reason::Status,
            3 => Reason::Lost,
            4 => Reason::Draining,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Reason::Connect => "connect_failed",
            Reason::Status => "5xx",
            Reason::Lost => "lost",
            Reason::Draining => "draining",
        }
    }
}

/// One ejection as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub reason: Reason,
    pub since_ms: u64,
    pub until_ms: u64,
    /// Ejections in a row, this one included (what its length grew from).
    pub in_a_row: u32,
}

/// A backend's record (see the module).
pub struct Vitals {
    failures_in_a_row: AtomicU32,
    /// Unix ms of the last failure not followed by a success (0: none).
    last_failure_ms: AtomicU64,
    /// Unix ms of the last failed connection not followed by a success (0: none).
    refused_ms: AtomicU64,
    ejected_at_ms: AtomicU64,
    /// Unix ms the current or last ejection ends (0: never ejected).
    ejected_until_ms: AtomicU64,
    reason: AtomicU8,
    in_a_row: AtomicU32,
    ejections: AtomicU64,
    /// Unix ms it joined the pool or passed a health check after failing
    /// one (0: there from the start).
    returned_ms: AtomicU64,
    /// The last health check's verdict.
    check_ok: AtomicBool,
}

impl Default for Vitals {
    fn default() -> Self {
        Self {
            failures_in_a_row: AtomicU32::new(0),
            last_failure_ms: AtomicU64::new(0),
            refused_ms: AtomicU64::new(0),
            ejected_at_ms: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            reason: AtomicU8::new(0),
            in_a_row: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            returned_ms: AtomicU64::new(0),
            check_ok: AtomicBool::new(true),
        }
    }
}

impl Vitals {
    /// A backend that joins a pool already serving: slow start from `now`.
    pub fn joined(&self, now: u64) {
        self.returned_ms.store(now, Relaxed);
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until_ms.load(Relaxed) > now
    }

    pub fn ejection(&self, now: u64) -> Option<Ejection> {
        let until_ms = self.ejected_until_ms.load(Relaxed);
        if until_ms <= now {
            return None;
        }
        Some(Ejection {
            reason: Reason::from_u8(self.reason.load(Relaxed))?,
            since_ms: self.ejected_at_ms.load(Relaxed),
            until_ms,
            in_a_row: self.in_a_row.load(Relaxed),
        })
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row.load(Relaxed)
    }

    /// Unix ms of the last failure since the last success (0: none).
    pub fn last_failure_ms(&self) -> u64 {
        self.last_failure_ms.load(Relaxed)
    }

    /// Unix ms of the last failed connection since the last success (0: none).
    pub fn refused_ms(&self) -> u64 {
        self.refused_ms.load(Relaxed)
    }

    /// A connection that failed: counted, and remembered as such.
    pub fn count_refusal(&self, now: u64) -> u32 {
        self.refused_ms.store(now.max(1), Relaxed);
        self.count_failure(now)
    }

    /// A failure that does not count towards ejection (a 503): only remembered.
    pub fn note_failure(&self, now: u64) {
        self.last_failure_ms.store(now.max(1), Relaxed);
    }

    /// A failure that counts; returns the failures in a row.
    pub fn count_failure(&self, now: u64) -> u32 {
        self.note_failure(now);
        self.failures_in_a_row
            .fetch_add(1, Relaxed)
            .saturating_add(1)
    }

    /// It answered, whatever the status: it is listening, so an ejection
    /// for a failed connection is over.
    pub fn answered(&self, now: u64) {
        if self.refused_ms.load(Relaxed) != 0 {
            self.refused_ms.store(0, Relaxed);
        }
        self.end_ejection(now, &[Reason::Connect]);
    }

    /// It answered well: the count of failures in a row starts again.
    pub fn succeeded(&self, now: u64) {
        self.answered(now);
        if self.failures_in_a_row.load(Relaxed) != 0 {
            self.failures_in_a_row.store(0, Relaxed);
        }
        if self.last_failure_ms.load(Relaxed) != 0 {
            self.last_failure_ms.store(0, Relaxed);
        }
    }

    /// An active health check's verdict: a pass ends an ejection for a
    /// failed connection or for draining, and a pass after a failure starts
    /// slow start.
    pub fn health_checked(&self, now: u64, ok: bool) {
        let before = self.check_ok.swap(ok, Relaxed);
        if ok {
            if !before {
                self.returned_ms.store(now, Relaxed);
            }
            self.end_ejection(now, &[Reason::Connect, Reason::Draining]);
        }
    }

    /// Ends the current ejection now if it is for one of `reasons`.
    fn end_ejection(&self, now: u64, reasons: &[Reason]) {
        let until = self.ejected_until_ms.load(Relaxed);
        if until <= now {
            return;
        }
        let why = Reason::from_u8(self.reason.load(Relaxed));
        if !why.is_some_and(|r| reasons.contains(&r)) {
            return;
        }
        // Only this ejection: a newer one set meanwhile stands.
        if self
            .ejected_until_ms
            .compare_exchange(until, now, Relaxed, Relaxed)
            .is_ok()
        {
            self.returned_ms.store(now, Relaxed);
            tracing::info!(
                reason = why.map(Reason::name),
                "ejection ended: the backend is back"
            );
        }
    }

    /// Ejects for `reason`; returns how long. The caller decided that it may
    /// (the pool's share) and that it is not ejected already.
    pub fn eject(&self, now: u64, reason: Reason, policy: &Policy) -> u64 {
        let last_until = self.ejected_until_ms.load(Relaxed);
        let quiet = policy.eject_reset.as_millis() as u64;
        let ms = if reason == Reason::Draining {
            DRAINING_MS.min(policy.eject_max.as_millis() as u64)
        } else {
            if last_until == 0 || now.saturating_sub(last_until) >= quiet {
                self.in_a_row.store(0, Relaxed);
            }
            let n = self.in_a_row.fetch_add(1, Relaxed).saturating_add(1);
            policy.ejection_ms(n)
        };
        self.reason.store(reason as u8, Relaxed);
        self.ejected_at_ms.store(now, Relaxed);
        self.ejected_until_ms.store(now + ms, Relaxed);
        self.failures_in_a_row.store(0, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        ms
    }

    /// Unix ms it last joined or came back (0: there from the start, never
    /// back from anything).
    pub fn back_since(&self, now: u64) -> u64 {
        let until = self.ejected_until_ms.load(Relaxed);
        self.returned_ms
            .load(Relaxed)
            .max(if until <= now { until } else { 0 })
    }

    /// Its share of new sessions, in thousandths of a full one: from 100
    /// when it joins or comes back (a passing check after a failing one, or
    /// the end of an ejection) to 1000 after the `window`.
    pub fn slow_start_permille(&self, now: u64, window: Duration) -> u64 {
        let window = window.as_millis() as u64;
        let back = self.back_since(now);
        let elapsed = now.saturating_sub(back);
        if window == 0 || back == 0 || elapsed >= window {
            return 1000;
        }
        (elapsed * 1000 / window).max(100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            eject_after: 3,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(5),
            eject_reset: Duration::from_secs(60),
            max_ejected: 0.5,
            slow_start: Duration::from_secs(10),
        }
    }

    #[test]
    fn ejections_grow_up_to_the_bound_and_start_again_after_a_quiet_period() {
        let p = policy();
        let v = Vitals::default();
        let mut now = 1_000_000;
        let mut lengths = Vec::new();
        for _ in 0..5 {
            lengths.push(v.eject(now, Reason::Status, &p));
            now += lengths.last().unwrap() + 10;
        }
        assert_eq!(lengths, [1000, 2000, 4000, 5000, 5000]);
        now += 60_000;
        assert_eq!(
            v.eject(now, Reason::Status, &p),
            1000,
            "quiet for eject_reset"
        );
        assert_eq!(v.ejections(), 6);
    }

    #[test]
    fn a_failed_connection_ejection_ends_at_the_first_sign_of_life_a_5xx_one_does_not() {
        let p = policy();
        let v = Vitals::default();
        v.eject(1000, Reason::Connect, &p);
        assert!(v.is_ejected(1500));
        v.succeeded(1500);
        assert!(!v.is_ejected(1500), "an answer ends it");

        v.eject(2000, Reason::Connect, &p);
        v.health_checked(2100, true);
        assert!(!v.is_ejected(2100), "a passing check ends it");

        v.eject(3000, Reason::Status, &p);
        v.succeeded(3100);
        v.health_checked(3100, true);
        assert!(v.is_ejected(3100), "5xx ejections run their time");
        assert_eq!(v.ejection(3100).unwrap().reason, Reason::Status);

        let d = Vitals::default();
        d.eject(1000, Reason::Draining, &p);
        d.succeeded(1100);
        assert!(
            d.is_ejected(1100),
            "an answer from a draining backend proves nothing"
        );
        d.health_checked(1200, true);
        assert!(!d.is_ejected(1200));
    }

    #[test]
    fn failures_in_a_row_are_counted_and_reset_by_a_success() {
        let v = Vitals::default();
        assert_eq!(v.count_failure(10), 1);
        assert_eq!(v.count_failure(20), 2);
        assert_eq!(v.last_failure_ms(), 20);
        v.succeeded(30);
        assert_eq!(v.failures_in_a_row(), 0);
        assert_eq!(v.last_failure_ms(), 0);
    }

    #[test]
    fn slow_start_grows_from_a_tenth_to_whole_over_the_window() {
        let w = Duration::from_secs(10);
        let v = Vitals::default();
        assert_eq!(v.slow_start_permille(5000, w), 1000, "there from the start");
        v.health_checked(5000, false);
        v.health_checked(10_000, true);
        assert_eq!(v.slow_start_permille(10_000, w), 100);
        assert_eq!(v.slow_start_permille(15_000, w), 500);
        assert_eq!(v.slow_start_permille(20_000, w), 1000);
        assert_eq!(v.slow_start_permille(15_000, Duration::ZERO), 1000);
        // the end of an ejection is a return too
        let p = policy();
        v.eject(30_000, Reason::Status, &p);
        assert_eq!(v.slow_start_permille(31_000, w), 100);
        assert_eq!(v.slow_start_permille(36_000, w), 500);
    }

    #[test]
    fn at_most_the_share_and_always_one() {
        let p = policy();
        assert_eq!(p.max_out(1), 1);
        assert_eq!(p.max_out(2), 1);
        assert_eq!(p.max_out(3), 1);
        assert_eq!(p.max_out(4), 2);
        let all = Policy {
            max_ejected: 1.0,
            ..p
        };
        assert_eq!(all.max_out(3), 3);
    }
}
