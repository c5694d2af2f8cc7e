//! The admin listener (loopback by default): liveness, Prometheus metrics,
//! the backends of every pool, and an operator's switch to take a backend
//! out of rotation (it keeps its sessions, gets no new ones).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::app::Gateway;
use crate::metrics::{Cut, Reason, ToolLatencies, label_value, type_line};
use crate::policy::edge;
use crate::pool::{BackendState, Pool, now_ms};
use crate::stdio::{Exit, StdioHost};

pub struct Admin {
    pub gw: Arc<Gateway>,
    /// The bearer token every admin request must carry (`[admin] token_env`).
    pub token: Option<String>,
}

impl Admin {
    /// Who may use the admin API: the token holder when one is configured;
    /// without one (loopback only), anything but a browser — a state change
    /// carrying `Origin` or `Sec-Fetch-Site` is a cross-site request (CSRF).
    /// `GET /health`, `/readyz` and `/livez` (up or draining, nothing else)
    /// are open to all, so orchestrator probes need no secret. Returns the refusal to send, if any.
    fn refusal(&self, req: &pingora::http::RequestHeader) -> Option<Response<Vec<u8>>> {
        if req.method == http::Method::GET
            && matches!(req.uri.path(), "/health" | "/livez" | "/readyz")
        {
            return None;
        }
        if let Some(token) = &self.token {
            let presented = req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let ok: bool =
                subtle::ConstantTimeEq::ct_eq(presented.as_bytes(), token.as_bytes()).into();
            if !ok {
                let mut r = json_reply(
                    401,
                    json!({"error": "the admin API needs its bearer token"}),
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"mcp-gateway admin\""),
                );
                return Some(r);
            }
            return None;
        }
        let from_browser = req.headers.contains_key(http::header::ORIGIN)
            || req.headers.contains_key("sec-fetch-site");
        if req.method != http::Method::GET && from_browser {
            return Some(json_reply(
                403,
                json!({"error": "state changes are not taken from web pages"}),
            ));
        }
        None
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// One unlabelled series with its `# TYPE` line.
fn single(out: &mut String, name: &str, kind: &str, value: u64) {
    let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
}

fn json_reply(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(
        status,
        "application/json",
        serde_json::to_vec_pretty(&value).unwrap_or_default(),
    )
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// One backend in `/backends`: its state in one word (disabled, ejected,
/// unhealthy, slow_start or healthy, the first that applies) and the details.
fn backend_json(pool: &Pool, b: &BackendState, now: u64) -> serde_json::Value {
    let healthy = pool.healthy(b);
    let ejection = b.vitals.ejection(now);
    let share = pool.slow_start_permille(b, now);
    let state = if b.is_disabled() {
        "disabled"
    } else if ejection.is_some() {
        "ejected"
    } else if !healthy {
        "unhealthy"
    } else if share < 1000 {
        "slow_start"
    } else {
        "healthy"
    };
    json!({
        "addr": b.addr.to_string(),
        "id": b.id,
        "instance": b.instance().map(|i| i.to_string()),
        "revision": b.revision().map(|r| r.shown()),
        "state": state,
        "healthy": healthy,
        "accepts_new_sessions": pool.accepts_new(b),
        "disabled": b.is_disabled(),
        "ejected": ejection.is_some(),
        "ejection": ejection.map(|e| json!({
            "reason": e.reason.name(),
            "since": rfc3339(e.since_ms),
            "until": rfc3339(e.until_ms),
            "remaining_ms": e.until_ms.saturating_sub(now),
            "duration_ms": e.until_ms.saturating_sub(e.since_ms),
            "in_a_row": e.in_a_row,
        })),
        "ejections": b.vitals.ejections(),
        "failures_in_a_row": b.vitals.failures_in_a_row(),
        "slow_start": (share < 1000).then(|| {
            let since = b.vitals.back_since(now);
            let window = pool.policy.slow_start.as_millis() as u64;
            json!({
                "share": share as f64 / 1000.0,
                "since": rfc3339(since),
                "remaining_ms": (since + window).saturating_sub(now),
            })
        }),
        "inflight": b.inflight(),
        "requests": b.requests(),
        "sessions_opened": b.sessions_opened(),
        "weight": b.weight,
    })
}

/// A stdio pool's processes in `/backends`.
fn stdio_json(host: &StdioHost) -> serde_json::Value {
    let processes: Vec<_> = host
        .view()
        .into_iter()
        .map(|p| json!({"slot": p.slot, "pid": p.pid, "state": p.state, "idle_ms": p.idle_ms}))
        .collect();
    json!({
        "max_processes": host.max_processes,
        "processes": processes,
    })
}

impl Admin {
    fn backends(&self) -> serde_json::Value {
        let now = now_ms();
        let pools: Vec<_> = self
            .gw
            .sessions
            .pools()
            .iter()
            .map(|pool| {
                let members = pool.members.load();
                let backends: Vec<_> = members
                    .list
                    .iter()
                    .map(|b| backend_json(pool, b, now))
                    .collect();
                let ejected = members
                    .list
                    .iter()
                    .filter(|b| b.vitals.is_ejected(now))
                    .count();
                let panic = pool.in_panic();
                json!({
                    "name": pool.name,
                    "route": if pool.prefix.is_empty() { "/" } else { pool.prefix.as_str() },
                    "state": if panic { "panic" } else { "serving" },
                    "panic": panic,
                    "ejected": ejected,
                    "max_ejected": pool.policy.max_out(members.list.len()),
                    "backends": backends,
                    "stdio": self.gw.stdio_host(&pool.name).map(|h| stdio_json(h)),
                })
            })
            .collect();
        json!({ "pools": pools })
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        self.counter_metrics(&mut out);
        self.gauge_metrics(&mut out);
        self.latency_metrics(&mut out);
        self.rollout_metrics(&mut out);
        self.pool_metrics(&mut out);
        self.stdio_metrics(&mut out);
        self.store_metrics(&mut out);
        out
    }

    /// Stdio pools: processes by state, starts, exits by cause, refusals.
    fn stdio_metrics(&self, out: &mut String) {
        let hosts: Vec<_> = self
            .gw
            .stdio
            .iter()
            .map(|h| (label_value(h.pool()), h))
            .collect();
        let _ = writeln!(out, "# TYPE mcp_gateway_stdio_processes gauge");
        for (pool, host) in &hosts {
            let view = host.view();
            for state in ["starting", "warm", "running"] {
                let n = view.iter().filter(|p| p.state == state).count();
                let _ = writeln!(
                    out,
                    "mcp_gateway_stdio_processes{{pool=\"{pool}\",state=\"{state}\"}} {n}"
                );
            }
        }
        type PerHost = fn(&StdioHost) -> u64;
        let per_host: [(&str, &str, PerHost); 5] = [
            ("mcp_gateway_stdio_max_processes", "gauge", |h| {
                h.max_processes as u64
            }),
            ("mcp_gateway_stdio_starts_total", "counter", |h| {
                h.shared.counters.starts.load(Ordering::Relaxed)
            }),
            ("mcp_gateway_stdio_refused_total", "counter", |h| {
                h.shared.counters.refused.load(Ordering::Relaxed)
            }),
            ("mcp_gateway_stdio_backlog_dropped_total", "counter", |h| {
                h.shared.counters.dropped_from_backlog()
            }),
            ("mcp_gateway_stdio_stderr_dropped_total", "counter", |h| {
                h.shared.counters.stderr_dropped.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, value) in per_host {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (pool, host) in &hosts {
                let _ = writeln!(out, "{name}{{pool=\"{pool}\"}} {}", value(host));
            }
        }
        let _ = writeln!(out, "# TYPE mcp_gateway_stdio_exits_total counter");
        for (pool, host) in &hosts {
            for cause in Exit::ALL {
                let _ = writeln!(
                    out,
                    "mcp_gateway_stdio_exits_total{{pool=\"{pool}\",cause=\"{}\"}} {}",
                    cause.name(),
                    host.shared.counters.exits(cause)
                );
            }
        }
    }

    /// The shared store (only with `[cluster] store`): up or down, calls,
    /// failures, requests decided without it, its latency.
    fn store_metrics(&self, out: &mut String) {
        let Some(store) = &self.gw.store else { return };
        let s = &store.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        single(
            out,
            "mcp_gateway_store_up",
            "gauge",
            u64::from(store.is_up()),
        );
        let counters = [
            ("mcp_gateway_store_state_changes_total", &s.changes),
            ("mcp_gateway_store_calls_total", &s.calls),
            ("mcp_gateway_store_refused_total", &s.refused),
        ];
        for (name, c) in counters {
            single(out, name, "counter", load(c));
        }
        let _ = writeln!(
            out,
            "# TYPE mcp_gateway_store_failures_total counter\nmcp_gateway_store_failures_total{{kind=\"timeout\"}} {}\nmcp_gateway_store_failures_total{{kind=\"error\"}} {}",
            load(&s.timeouts),
            load(&s.errors)
        );
        let _ = writeln!(
            out,
            "# TYPE mcp_gateway_store_fallbacks_total counter\nmcp_gateway_store_fallbacks_total{{mode=\"fail_open\"}} {}\nmcp_gateway_store_fallbacks_total{{mode=\"fail_closed\"}} {}",
            load(&s.fail_open),
            load(&s.fail_closed)
        );
        let ping = "mcp_gateway_store_ping_microseconds";
        single(out, ping, "gauge", load(&s.ping_us));
        s.seconds.render("mcp_gateway_store_duration_seconds", out);
    }

    /// The process-wide counters, and those by reason.
    fn counter_metrics(&self, out: &mut String) {
        let m = &self.gw.state.metrics;
        let counters = [
            ("mcp_gateway_requests_total", &m.requests),
            ("mcp_gateway_sessions_issued_total", &m.sessions_issued),
            ("mcp_gateway_tool_calls_total", &m.tool_calls),
            ("mcp_gateway_upstream_errors_total", &m.upstream_errors),
            ("mcp_gateway_failovers_total", &m.failovers),
            ("mcp_gateway_outcome_unknown_total", &m.outcome_unknown),
            ("mcp_gateway_legacy_relayed_total", &m.legacy_relayed),
            ("mcp_gateway_stdio_relayed_total", &m.stdio_relayed),
            (
                "mcp_gateway_connections_accepted_total",
                &m.connections_accepted,
            ),
            (
                "mcp_gateway_connections_refused_total",
                &m.connections_refused,
            ),
            ("mcp_gateway_tls_reloads_total", &m.tls_reloads),
        ];
        for (name, c) in counters {
            single(out, name, "counter", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# TYPE mcp_gateway_rejected_total counter");
        for reason in Reason::ALL {
            let _ = writeln!(
                out,
                "mcp_gateway_rejected_total{{reason=\"{}\"}} {}",
                reason.name(),
                m.rejected(reason)
            );
        }
        let _ = writeln!(out, "# TYPE mcp_gateway_connections_cut_total counter");
        for why in Cut::ALL {
            let _ = writeln!(
                out,
                "mcp_gateway_connections_cut_total{{reason=\"{}\"}} {}",
                why.name(),
                m.cuts(why)
            );
        }
        // Ids the previous session key opened: when this stops rising after
        // a rotation, the previous key can go (deploy/RUNBOOK.md).
        let name = "mcp_gateway_session_ids_opened_with_previous_key_total";
        single(
            out,
            name,
            "counter",
            self.gw.sessions.sealer().opened_with_previous(),
        );
    }

    /// What is held now: connections, requests, body bytes, legacy
    /// sessions, limiter keys.
    fn gauge_metrics(&self, out: &mut String) {
        let state = &self.gw.state;
        let limits = &self.gw.guard().limits;
        let gauges = [
            (
                "mcp_gateway_connections_open",
                state.connections.open() as u64,
            ),
            ("mcp_gateway_inflight", state.inflight() as u64),
            (
                "mcp_gateway_bridge_held_sessions",
                self.gw.streamable.revisions.held.count(),
            ),
            (
                "mcp_gateway_bridge_paused_calls",
                self.gw.streamable.revisions.rounds.count(),
            ),
            ("mcp_gateway_buffered_body_bytes", state.buffered() as u64),
            (
                "mcp_gateway_legacy_sessions",
                self.gw.legacy.table.len() as u64,
            ),
            ("mcp_gateway_rate_limit_keys", limits.keys() as u64),
            (
                "mcp_gateway_rate_limit_key_bytes",
                limits.key_bytes() as u64,
            ),
        ];
        for (name, value) in gauges {
            single(out, name, "gauge", value);
        }
    }

    /// The latency histograms.
    fn latency_metrics(&self, out: &mut String) {
        let m = &self.gw.state.metrics;
        m.post_seconds
            .render("mcp_gateway_post_duration_seconds", out);
        m.latencies.render(out);
        let pools = self.gw.sessions.pools();
        type_line(ToolLatencies::NAME, out);
        for pool in pools {
            let labels = format!("pool=\"{}\"", label_value(&pool.name));
            pool.tool_seconds.render(&labels, out);
        }
        // A virtual server's calls, by the names its clients see, per member.
        for vs in &self.gw.federation.servers {
            for (member, seconds) in vs.members.iter().zip(&vs.tool_seconds) {
                let labels = format!(
                    "pool=\"{}\",member=\"{}\"",
                    label_value(&vs.name),
                    label_value(member.label())
                );
                seconds.render(&labels, out);
            }
        }
        type_line("mcp_gateway_upstream_duration_seconds", out);
        for pool in pools {
            pool.upstream_seconds.render_series(
                "mcp_gateway_upstream_duration_seconds",
                &format!("pool=\"{}\"", label_value(&pool.name)),
                out,
            );
        }
    }

    /// Per pool (panic: every backend unhealthy or ejected, tried anyway)
    /// and per backend.
    fn pool_metrics(&self, out: &mut String) {
        type PerPool = fn(&crate::pool::Pool) -> u64;
        let per_pool: [(&str, &str, PerPool); 2] = [
            ("mcp_gateway_pool_panic", "gauge", |p| {
                u64::from(p.in_panic())
            }),
            ("mcp_gateway_pool_panic_picks_total", "counter", |p| {
                p.panic_picks()
            }),
        ];
        for (name, kind, value) in per_pool {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for pool in self.gw.sessions.pools() {
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\"}} {}",
                    label_value(&pool.name),
                    value(pool)
                );
            }
        }
        type PerBackend = fn(&crate::pool::BackendState) -> i64;
        let per_backend: [(&str, &str, PerBackend); 6] = [
            ("mcp_gateway_backend_ejected", "gauge", |b| {
                i64::from(b.is_ejected())
            }),
            ("mcp_gateway_backend_ejections_total", "counter", |b| {
                b.vitals.ejections() as i64
            }),
            ("mcp_gateway_backend_inflight", "gauge", |b| b.inflight()),
            ("mcp_gateway_backend_open_streams", "gauge", |b| {
                b.open_streams()
            }),
            (
                "mcp_gateway_backend_sessions_opened_total",
                "counter",
                |b| b.sessions_opened() as i64,
            ),
            ("mcp_gateway_backend_requests_total", "counter", |b| {
                b.requests() as i64
            }),
        ];
        for (name, kind, value) in per_backend {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for pool in self.gw.sessions.pools() {
                for b in &pool.members.load().list {
                    let _ = writeln!(
                        out,
                        "{name}{{pool=\"{}\",backend=\"{}\"}} {}",
                        pool.name,
                        b.addr,
                        value(b)
                    );
                }
            }
        }
    }

    /// Managed pools' rollouts: backends in the pool, backends replaced by
    /// the rollout under way (or the last one), whether one is under way,
    /// and whether the last one that ended succeeded.
    fn rollout_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# TYPE mcp_gateway_pool_backends gauge\n# TYPE mcp_gateway_rollout_replaced gauge\n# TYPE mcp_gateway_rollout_in_progress gauge\n# TYPE mcp_gateway_rollout_succeeded gauge"
        );
        for pool in self.gw.sessions.pools() {
            let Some(sup) = &pool.supervisor else {
                continue;
            };
            let name = label_value(&pool.name);
            let (replaced, done, ok) = sup
                .last_rollout()
                .map(|r| r.state())
                .unwrap_or((0, true, true));
            let _ = writeln!(
                out,
                "mcp_gateway_pool_backends{{pool=\"{name}\"}} {}\nmcp_gateway_rollout_replaced{{pool=\"{name}\"}} {replaced}\nmcp_gateway_rollout_in_progress{{pool=\"{name}\"}} {}\nmcp_gateway_rollout_succeeded{{pool=\"{name}\"}} {}",
                sup.slot_count(),
                u8::from(!done),
                u8::from(ok),
            );
        }
    }

    /// `POST /pools/NAME/rollout` starts a rolling restart of a managed pool
    /// (or returns the one under way); `GET …?from=N` reads its progress.
    fn rollout(&self, method: &str, name: &str, from: usize) -> Response<Vec<u8>> {
        let Some(pool) = self.gw.sessions.pools().iter().find(|p| p.name == name) else {
            return json_reply(404, json!({"error": format!("no pool {name}")}));
        };
        let Some(supervisor) = &pool.supervisor else {
            return json_reply(
                409,
                json!({"error": format!("pool {name} is not managed by this gateway: roll its backends out with their orchestrator; sessions move as members leave or drain")}),
            );
        };
        let rollout = match method {
            "POST" => supervisor.rollout(),
            "GET" => match supervisor.last_rollout() {
                Some(r) => r,
                None => return json_reply(404, json!({"error": "no rollout yet"})),
            },
            _ => return json_reply(405, json!({"error": "POST to start, GET to follow"})),
        };
        let (lines, done, ok) = rollout.progress(from);
        json_reply(
            if method == "POST" { 202 } else { 200 },
            json!({"pool": name, "lines": lines, "done": done, "ok": ok}),
        )
    }

    fn set_disabled(&self, query: Option<&str>, disabled: bool) -> Response<Vec<u8>> {
        let Some(addr) = edge::query_param(query, &["addr"])
            .and_then(|a| edge::percent_decode(a).parse::<std::net::SocketAddr>().ok())
        else {
            return json_reply(
                400,
                json!({"error": "give ?addr=HOST:PORT (and ?pool=NAME when there are several)"}),
            );
        };
        let pool_name = edge::query_param(query, &["pool"]).map(edge::percent_decode);
        for pool in self.gw.sessions.pools() {
            if pool_name.as_ref().is_some_and(|n| *n != pool.name) {
                continue;
            }
            if let Some(b) = pool.member_at(&addr) {
                b.set_disabled(disabled);
                tracing::info!(pool = %pool.name, %addr, disabled, "backend switched by operator");
                return json_reply(
                    200,
                    json!({"pool": pool.name, "addr": addr.to_string(), "disabled": disabled}),
                );
            }
        }
        json_reply(404, json!({"error": format!("no backend {addr}")}))
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if let Some(refused) = self.refusal(req) {
            return refused;
        }
        let path = req.uri.path().to_owned();
        let query = req.uri.query().map(str::to_owned);
        match (req.method.as_str(), path.as_str()) {
            ("POST", "/reload") => match self.gw.reload() {
                Ok(summary) => json_reply(200, json!({"reloaded": true, "summary": summary})),
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; the configuration in force stays");
                    let status = match e {
                        crate::app::ReloadError::NeedsRestart(_) => 409,
                        crate::app::ReloadError::Invalid(_) => 400,
                    };
                    json_reply(status, json!({"reloaded": false, "error": e.to_string()}))
                }
            },
            // Readiness: 503 from the moment the gateway is told to stop, so
            // balancers move new connections away before its listeners close;
            // and while its shared store is down if it fails closed (failing
            // open, it serves: readiness is about serving, not about the store).
            ("GET", "/health" | "/readyz") => match self.gw.ready() {
                Ok(()) => json_reply(200, json!({"status": "ok"})),
                Err(why) => json_reply(503, json!({"status": why})),
            },
            // Liveness: the process answers; draining is not a reason to restart it.
            ("GET", "/livez") => json_reply(200, json!({"status": "alive"})),
            ("GET", "/metrics") => reply(
                200,
                "text/plain; version=0.0.4",
                self.metrics().into_bytes(),
            ),
            ("GET", "/backends") => json_reply(200, self.backends()),
            ("POST", "/backends/disable") => self.set_disabled(query.as_deref(), true),
            ("POST", "/backends/enable") => self.set_disabled(query.as_deref(), false),
            (method, p) if p.starts_with("/pools/") && p.ends_with("/rollout") => {
                let name = &p["/pools/".len()..p.len() - "/rollout".len()];
                let from = edge::query_param(query.as_deref(), &["from"])
                    .and_then(|f| f.parse().ok())
                    .unwrap_or(0);
                self.rollout(method, name, from)
            }
            _ => json_reply(
                404,
                json!({"error": "GET /health, /readyz, /livez, /metrics, /backends; POST /backends/disable?addr=…, /backends/enable?addr=…, /reload; POST/GET /pools/NAME/rollout"}),
            ),
        }
    }
}
