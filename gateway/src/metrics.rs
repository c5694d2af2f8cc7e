//! Counters the admin listener exposes. All relaxed atomics: the request
//! path never waits on a metric.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a request was refused; one counter each, exported as
/// `mcp_gateway_rejected_total{reason="…"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Capacity,
    Route,
    Origin,
    Method,
    Body,
    Malformed,
    Session,
    Busy,
    NoBackend,
    Upstream,
    Auth,
    Policy,
    Limit,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::Capacity,
        Reason::Route,
        Reason::Origin,
        Reason::Method,
        Reason::Body,
        Reason::Malformed,
        Reason::Session,
        Reason::Busy,
        Reason::NoBackend,
        Reason::Upstream,
        Reason::Auth,
        Reason::Policy,
        Reason::Limit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Capacity => "capacity",
            Reason::Route => "route",
            Reason::Origin => "origin",
            Reason::Method => "method",
            Reason::Body => "body",
            Reason::Malformed => "malformed",
            Reason::Session => "session",
            Reason::Busy => "busy",
            Reason::NoBackend => "no_backend",
            Reason::Upstream => "upstream",
            Reason::Auth => "auth",
            Reason::Policy => "policy",
            Reason::Limit => "limit",
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Requests that reached the MCP listener.
    pub requests: AtomicU64,
    /// Backend sessions opened through the gateway (both transports).
    pub sessions_issued: AtomicU64,
    /// `tools/call` requests whose backend answer was relayed to the end.
    pub tool_calls: AtomicU64,
    /// Backend exchanges that failed after the request was sent.
    pub upstream_errors: AtomicU64,
    /// Sessions moved to another backend because theirs was gone.
    pub failovers: AtomicU64,
    /// Requests answered "outcome unknown" (not safe to repeat after a backend loss).
    pub outcome_unknown: AtomicU64,
    /// Legacy messages relayed to the replica holding their stream.
    pub legacy_relayed: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reject(&self, reason: Reason) {
        Self::inc(&self.rejected[reason as usize]);
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }
}
