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
    /// Downstream TCP connections accepted (before TLS).
    pub connections_accepted: AtomicU64,
    /// Connections closed at accept (per-IP connection rate).
    pub connections_refused: AtomicU64,
    /// Times the HTTPS certificate was loaded again from changed files.
    pub tls_reloads: AtomicU64,
    /// How long POST requests took, first byte in to last byte out.
    pub post_seconds: Histogram,
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

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A Prometheus histogram over fixed buckets: one relaxed atomic add per
/// bucket the value falls in, no lock.
#[derive(Default)]
pub struct Histogram {
    /// Count per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes the histogram in Prometheus text format.
    pub fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render("t", &mut out);
        assert!(out.contains("t_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.025\"} 1\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("t_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_count 3"), "{out}");
    }
}
