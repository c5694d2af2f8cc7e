//! Counters the admin listener exposes. All relaxed atomics: the request
//! path never waits on a metric.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

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
    /// The shared store was down and the gateway fails closed.
    Store,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
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
        Reason::Store,
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
            Reason::Store => "store_unavailable",
        }
    }
}

/// Why the front door cut a connection; one counter each, exported as
/// `mcp_gateway_connections_cut_total{reason="…"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its request header took longer than `header_timeout`.
    HeaderTimeout,
    /// Its request header grew past `max_header_bytes`.
    HeaderSize,
    /// It sent nothing for `idle_timeout` while the gateway waited for a request.
    Idle,
    /// Its address already held `max_connections_per_ip` connections.
    OverCap,
}

impl Cut {
    pub const ALL: [Cut; 4] = [Cut::HeaderTimeout, Cut::HeaderSize, Cut::Idle, Cut::OverCap];

    pub fn name(self) -> &'static str {
        match self {
            Cut::HeaderTimeout => "header_timeout",
            Cut::HeaderSize => "header_size",
            Cut::Idle => "idle",
            Cut::OverCap => "per_address_cap",
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
    /// Streamable HTTP requests relayed to the replica holding their
    /// session's stdio process.
    pub stdio_relayed: AtomicU64,
    /// Downstream TCP connections accepted (before TLS).
    pub connections_accepted: AtomicU64,
    /// Connections closed at accept (per-IP connection rate).
    pub connections_refused: AtomicU64,
    /// Times the HTTPS certificate was loaded again (its files changed, SIGHUP, `POST /reload`).
    pub tls_reloads: AtomicU64,
    /// How long POST requests took, first byte in to last byte out.
    pub post_seconds: Histogram,
    /// The same, by transport and JSON-RPC method (legacy: the bridge's call).
    pub latencies: Latencies,
    rejected: [AtomicU64; Reason::ALL.len()],
    cut: [AtomicU64; Cut::ALL.len()],
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

    pub fn cut(&self, why: Cut) {
        Self::inc(&self.cut[why as usize]);
    }

    pub fn cuts(&self, why: Cut) -> u64 {
        self.cut[why as usize].load(Ordering::Relaxed)
    }
}

pub use telemetry::histogram::{BUCKETS, Histogram, label_value, type_line};

/// How a client reached the gateway, for the latency histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP with a session (or opening one).
    Streamable,
    /// Streamable HTTP without a session (2026-07-28 stateless requests).
    Stateless,
    /// A legacy HTTP+SSE message, timed from the bridge's backend call.
    Legacy,
}

impl Transport {
    pub const ALL: [Transport; 3] = [
        Transport::Streamable,
        Transport::Stateless,
        Transport::Legacy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Streamable => "streamable_http",
            Transport::Stateless => "stateless",
            Transport::Legacy => "legacy_sse",
        }
    }
}

/// The JSON-RPC method labels: the protocol's own methods, then one label
/// each for any other request, notification and response (so a client
/// cannot add series).
pub const METHODS: [&str; 15] = [
    "initialize",
    "notifications/initialized",
    "notifications/cancelled",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "server/discover",
    "other_request",
    "other_notification",
    "response",
];

/// `mcp_gateway_request_duration_seconds{transport,method}`: a fixed table,
/// no map, so recording is an index and an atomic add.
#[derive(Default)]
pub struct Latencies {
    by: [[Histogram; METHODS.len()]; 3],
}

impl Latencies {
    pub const NAME: &'static str = "mcp_gateway_request_duration_seconds";

    /// `method`: an index into [`METHODS`] (`Method::metric_index`).
    pub fn observe(&self, transport: Transport, method: usize, d: Duration) {
        if let Some(h) = self.by[transport as usize].get(method) {
            h.observe(d);
        }
    }

    /// The series that saw a request (and the family's `# TYPE` line always).
    pub fn render(&self, out: &mut String) {
        type_line(Self::NAME, out);
        for t in Transport::ALL {
            for (i, h) in self.by[t as usize].iter().enumerate() {
                if h.count() > 0 {
                    let labels = format!("transport=\"{}\",method=\"{}\"", t.name(), METHODS[i]);
                    h.render_series(Self::NAME, &labels, out);
                }
            }
        }
    }
}

/// Most tools with a series of their own, per pool; the rest share "other".
pub const MAX_TOOL_SERIES: usize = 256;

/// `mcp_gateway_tool_call_duration_seconds{pool,tool}` for one pool. Only
/// tools the pool's servers listed get a series of their own (clients cannot
/// invent series); bounded by [`MAX_TOOL_SERIES`].
#[derive(Default)]
pub struct ToolLatencies {
    named: DashMap<String, Arc<Histogram>>,
    other: Histogram,
}

impl ToolLatencies {
    pub const NAME: &'static str = "mcp_gateway_tool_call_duration_seconds";

    /// `listed`: whether the pool's servers named this tool in
    /// `tools/list`, asked only for a tool without a series yet.
    pub fn observe(&self, tool: &str, listed: impl FnOnce() -> bool, d: Duration) {
        if let Some(h) = self.named.get(tool) {
            return h.observe(d);
        }
        if self.named.len() < MAX_TOOL_SERIES && listed() {
            self.named.entry(tool.to_owned()).or_default().observe(d);
        } else {
            self.other.observe(d);
        }
    }

    /// Renders every series with `labels` (already escaped) before `tool`.
    pub fn render(&self, labels: &str, out: &mut String) {
        let mut names: Vec<_> = self
            .named
            .iter()
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (tool, h) in names {
            let labels = format!("{labels},tool=\"{}\"", label_value(&tool));
            h.render_series(Self::NAME, &labels, out);
        }
        if self.other.count() > 0 {
            self.other
                .render_series(Self::NAME, &format!("{labels},tool=\"other\""), out);
        }
    }
}
