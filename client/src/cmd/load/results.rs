//! What a run measured: per-step counts and HDR histograms of latency, a
//! per-second timeline, session, stream and server-request counters.
//!
//! The JSON report carries every histogram (HdrHistogram's compressed V2
//! encoding, base64, the form HdrHistogram's own log tools read), so
//! `mcp-client load merge` adds shards' histograms exactly instead of
//! averaging their percentiles.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The report's format; `merge` and `--baseline` read only this one.
pub const FORMAT: &str = "mcp-client-load/2";

/// What each counter of the report counts (printed into the JSON report as `legend`).
pub const LEGEND: &[(&str, &str)] = &[
    (
        "ok",
        "calls that completed with a result (tools/call: a result without isError); each is one latency sample",
    ),
    (
        "errors",
        "calls that completed with an error (see errors_by_kind), timed out, failed a check or capture, or were never sent (client_saturated, template)",
    ),
    ("error_rate", "errors / (ok + errors)"),
    (
        "error_examples",
        "per step, the first error of each kind, in words",
    ),
    ("calls_per_sec", "ok calls per measured second"),
    (
        "latency",
        "ok calls only, in ms: from the call's intended send time (open loop) or its send time (closed loop) to its result",
    ),
    (
        "measured_seconds",
        "the measured window: the run after its warm-up, up to its end or its --calls limit",
    ),
    (
        "timeline",
        "per second since the start of the run: ok and errors completed in that second (warm-up calls not counted), latency of its ok calls",
    ),
    (
        "sessions.opened",
        "sessions of the run whose initialize (or server/discover) completed (not the setup session nor the idle streams' sessions)",
    ),
    (
        "sessions.failed_to_open",
        "attempts to open a session that failed",
    ),
    (
        "sessions.closed",
        "sessions this client ended (ramp-down, churn, end of run)",
    ),
    (
        "sessions.churned",
        "sessions ended and replaced to keep the churn rate",
    ),
    ("sessions.peak_open", "most sessions open at once"),
    ("sessions.connect_latency", "time to open a session, in ms"),
    ("idle_streams.requested", "idle GET streams asked for"),
    (
        "idle_streams.opened",
        "idle GET streams the server answered with an event stream",
    ),
    (
        "idle_streams.failed_to_open",
        "idle GET streams refused or unreachable",
    ),
    (
        "idle_streams.ended_early",
        "idle GET streams that ended before the run did",
    ),
    (
        "server_requests.sampling_answered",
        "sampling/createMessage requests from the server answered with the configured reply",
    ),
    (
        "server_requests.elicitation_answered",
        "elicitation/create requests from the server answered with the configured reply",
    ),
    (
        "server_requests.refused",
        "server requests refused because the scenario configures no reply for them",
    ),
    (
        "setup.ok",
        "setup calls that completed with a result (not measured)",
    ),
    ("setup.errors", "setup calls that failed (not measured)"),
];

/// Latencies in µs, 1 µs to 10 min, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as base64 of HdrHistogram's compressed V2 encoding.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .expect("serializing into memory cannot fail");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

pub fn decode(text: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .context("a histogram is not base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("a histogram does not decode: {e:?}"))?;
    let mut out = new_hist();
    out.add(&h)
        .map_err(|e| anyhow::anyhow!("a histogram is out of range: {e:?}"))?;
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct StepResult {
    pub name: String,
    /// `tools/call`, `prompts/get`, `resources/read`, `tools/list`, …
    pub method: String,
    /// The tool or prompt name, the resource URI template, or the method.
    pub target: String,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first error of each kind, in words.
    pub error_examples: BTreeMap<String, String>,
    /// Latency of ok calls, µs.
    pub hist: Histogram<u64>,
}

impl StepResult {
    pub fn new(name: &str, method: &str, target: &str) -> Self {
        Self {
            name: name.to_owned(),
            method: method.to_owned(),
            target: target.to_owned(),
            ok: 0,
            errors: 0,
            errors_by_kind: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            hist: new_hist(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Second {
    pub ok: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

impl Default for Second {
    fn default() -> Self {
        Self {
            ok: 0,
            errors: 0,
            hist: new_hist(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SessionCounts {
    pub opened: u64,
    pub failed_to_open: u64,
    pub closed: u64,
    pub churned: u64,
    pub peak_open: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StreamCounts {
    pub requested: u64,
    pub opened: u64,
    pub failed_to_open: u64,
    pub ended_early: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerRequestCounts {
    pub sampling_answered: u64,
    pub elicitation_answered: u64,
    pub refused: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SetupCounts {
    pub ok: u64,
    pub errors: u64,
}

/// Counts, histograms and ok/error totals a scope (everything, one step, one tool) adds up to.
pub struct Agg {
    pub ok: u64,
    pub errors: u64,
    pub hist: Histogram<u64>,
}

impl Agg {
    pub fn error_rate(&self) -> f64 {
        error_rate(self.ok, self.errors)
    }
}

/// errors / (ok + errors); 0 without calls.
pub fn error_rate(ok: u64, errors: u64) -> f64 {
    if ok + errors == 0 {
        0.0
    } else {
        errors as f64 / (ok + errors) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Results {
    /// How the run was configured (scenario, stages, sessions, run id, …), as JSON.
    pub config: Value,
    pub started_unix_ms: u64,
    pub measured_seconds: f64,
    pub steps: Vec<StepResult>,
    /// By second since the start of the run.
    pub timeline: BTreeMap<u64, Second>,
    pub sessions: SessionCounts,
    /// Time to open a session, µs.
    pub connect_hist: Histogram<u64>,
    pub idle_streams: StreamCounts,
    pub server_requests: ServerRequestCounts,
    pub setup: SetupCounts,
    pub cpu: Option<Value>,
    /// The shards (`i/n`) these results cover.
    pub shards: Vec<String>,
}

fn ms(v: u64) -> f64 {
    v as f64 / 1000.0
}

/// p50 … max of a latency histogram, in ms (null when it holds nothing).
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p95_ms": ms(h.value_at_quantile(0.95)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "mean_ms": h.mean() / 1000.0,
    })
}

impl Results {
    /// Nothing counted yet.
    pub fn new(config: Value, shards: Vec<String>) -> Self {
        Self {
            config,
            started_unix_ms: 0,
            measured_seconds: 0.0,
            steps: Vec::new(),
            timeline: BTreeMap::new(),
            sessions: SessionCounts::default(),
            connect_hist: new_hist(),
            idle_streams: StreamCounts::default(),
            server_requests: ServerRequestCounts::default(),
            setup: SetupCounts::default(),
            cpu: None,
            shards,
        }
    }

    pub fn total(&self) -> Agg {
        let mut hist = new_hist();
        for s in &self.steps {
            let _ = hist.add(&s.hist);
        }
        Agg {
            ok: self.steps.iter().map(|s| s.ok).sum(),
            errors: self.steps.iter().map(|s| s.errors).sum(),
            hist,
        }
    }

    /// A step by name, else every step calling the tool (prompt, resource) of that name.
    pub fn scope(&self, name: &str) -> Option<Agg> {
        let by_name: Vec<&StepResult> = self.steps.iter().filter(|s| s.name == name).collect();
        let chosen = if by_name.is_empty() {
            self.steps.iter().filter(|s| s.target == name).collect()
        } else {
            by_name
        };
        if chosen.is_empty() {
            return None;
        }
        let mut hist = new_hist();
        for s in &chosen {
            let _ = hist.add(&s.hist);
        }
        Some(Agg {
            ok: chosen.iter().map(|s| s.ok).sum(),
            errors: chosen.iter().map(|s| s.errors).sum(),
            hist,
        })
    }

    pub fn errors_by_kind(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in &self.steps {
            for (k, v) in &s.errors_by_kind {
                *out.entry(k.clone()).or_default() += v;
            }
        }
        out
    }

    pub fn calls_per_sec(&self, ok: u64) -> f64 {
        ok as f64 / self.measured_seconds.max(0.001)
    }

    pub fn to_json(&self) -> Value {
        let total = self.total();
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                let mut v = json!({
                    "step": s.name, "method": s.method, "target": s.target,
                    "ok": s.ok, "errors": s.errors,
                    "error_rate": error_rate(s.ok, s.errors),
                    "calls_per_sec": self.calls_per_sec(s.ok),
                    "errors_by_kind": s.errors_by_kind,
                    "error_examples": s.error_examples,
                    "histogram": encode(&s.hist),
                });
                if let (Some(o), Value::Object(p)) = (v.as_object_mut(), percentiles(&s.hist)) {
                    o.extend(p);
                }
                v
            })
            .collect();
        let timeline: Vec<Value> = self
            .timeline
            .iter()
            .map(|(sec, s)| {
                let (p50, p99) = if s.hist.is_empty() {
                    (Value::Null, Value::Null)
                } else {
                    (
                        json!(ms(s.hist.value_at_quantile(0.5))),
                        json!(ms(s.hist.value_at_quantile(0.99))),
                    )
                };
                json!({"second": sec, "ok": s.ok, "errors": s.errors, "p50_ms": p50, "p99_ms": p99, "histogram": encode(&s.hist)})
            })
            .collect();
        let mut sessions = serde_json::to_value(&self.sessions).unwrap_or_default();
        sessions["connect_latency"] = percentiles(&self.connect_hist);
        sessions["connect_histogram"] = json!(encode(&self.connect_hist));
        let legend: serde_json::Map<String, Value> = LEGEND
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let mut out = json!({
            "format": FORMAT,
            "legend": legend,
            "config": self.config,
            "started_at_unix_ms": self.started_unix_ms,
            "measured_seconds": self.measured_seconds,
            "total": {
                "ok": total.ok, "errors": total.errors, "error_rate": total.error_rate(),
                "calls_per_sec": self.calls_per_sec(total.ok),
                "latency": percentiles(&total.hist),
                "histogram": encode(&total.hist),
            },
            "steps": steps,
            "errors_by_kind": self.errors_by_kind(),
            "sessions": sessions,
            "idle_streams": self.idle_streams,
            "server_requests": self.server_requests,
            "setup": self.setup,
            "timeline": timeline,
            "shards": self.shards,
        });
        if let Some(cpu) = &self.cpu {
            out["cpu"] = cpu.clone();
        }
        out
    }

    pub fn from_json(v: Value) -> Result<Self> {
        let format = v.get("format").and_then(Value::as_str).unwrap_or("");
        if format != FORMAT {
            bail!(
                "it is not a {FORMAT} report (format {format:?}): write it with this mcp-client's `load -o json` or `--save`"
            );
        }
        let w: Wire = serde_json::from_value(v).context("reading the report")?;
        let steps = w
            .steps
            .into_iter()
            .map(|s| {
                Ok(StepResult {
                    hist: decode(&s.histogram).with_context(|| format!("step {}", s.step))?,
                    name: s.step,
                    method: s.method,
                    target: s.target,
                    ok: s.ok,
                    errors: s.errors,
                    errors_by_kind: s.errors_by_kind,
                    error_examples: s.error_examples,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let timeline = w
            .timeline
            .into_iter()
            .map(|s| {
                Ok((
                    s.second,
                    Second {
                        ok: s.ok,
                        errors: s.errors,
                        hist: decode(&s.histogram)
                            .with_context(|| format!("timeline second {}", s.second))?,
                    },
                ))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        let connect_hist = match &w.sessions.connect_histogram {
            Some(h) => decode(h).context("sessions")?,
            None => new_hist(),
        };
        Ok(Self {
            config: w.config,
            started_unix_ms: w.started_at_unix_ms,
            measured_seconds: w.measured_seconds,
            steps,
            timeline,
            sessions: w.sessions.counts,
            connect_hist,
            idle_streams: w.idle_streams,
            server_requests: w.server_requests,
            setup: w.setup,
            cpu: w.cpu,
            shards: w.shards,
        })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Self::from_json(v).with_context(|| format!("{}", path.display()))
    }
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    config: Value,
    #[serde(default)]
    started_at_unix_ms: u64,
    measured_seconds: f64,
    steps: Vec<WireStep>,
    #[serde(default)]
    timeline: Vec<WireSecond>,
    #[serde(default)]
    sessions: WireSessions,
    #[serde(default)]
    idle_streams: StreamCounts,
    #[serde(default)]
    server_requests: ServerRequestCounts,
    #[serde(default)]
    setup: SetupCounts,
    #[serde(default)]
    cpu: Option<Value>,
    #[serde(default)]
    shards: Vec<String>,
}

#[derive(Deserialize)]
struct WireStep {
    step: String,
    method: String,
    target: String,
    ok: u64,
    errors: u64,
    #[serde(default)]
    errors_by_kind: BTreeMap<String, u64>,
    #[serde(default)]
    error_examples: BTreeMap<String, String>,
    histogram: String,
}

#[derive(Deserialize)]
struct WireSecond {
    second: u64,
    ok: u64,
    errors: u64,
    histogram: String,
}

#[derive(Deserialize, Default)]
struct WireSessions {
    #[serde(flatten)]
    counts: SessionCounts,
    connect_histogram: Option<String>,
}

/// Shards' results as one: counts summed, histograms added (exact), the
/// timelines aligned on their wall-clock start, the measured window the
/// longest shard's (shards run side by side).
pub fn merge(parts: Vec<Results>) -> Result<Results> {
    let Some(first) = parts.first() else {
        bail!("nothing to merge");
    };
    let scenario = first.config.get("scenario").cloned();
    let t0 = parts.iter().map(|p| p.started_unix_ms).min().unwrap_or(0);
    let mut out = Results {
        started_unix_ms: t0,
        ..Results::new(first.config.clone(), Vec::new())
    };
    for p in parts {
        if p.config.get("scenario").cloned() != scenario {
            bail!(
                "these reports come from different scenarios ({} and {})",
                scenario.unwrap_or_default(),
                p.config.get("scenario").cloned().unwrap_or_default()
            );
        }
        for shard in &p.shards {
            if out.shards.contains(shard) {
                bail!("shard {shard} appears twice");
            }
            out.shards.push(shard.clone());
        }
        out.measured_seconds = out.measured_seconds.max(p.measured_seconds);
        for s in p.steps {
            match out.steps.iter_mut().find(|o| o.name == s.name) {
                Some(o) => {
                    if (o.method.as_str(), o.target.as_str())
                        != (s.method.as_str(), s.target.as_str())
                    {
                        bail!(
                            "step {} calls {} {} in one report and {} {} in another",
                            s.name,
                            o.method,
                            o.target,
                            s.method,
                            s.target
                        );
                    }
                    o.ok += s.ok;
                    o.errors += s.errors;
                    for (k, v) in s.errors_by_kind {
                        *o.errors_by_kind.entry(k).or_default() += v;
                    }
                    for (k, v) in s.error_examples {
                        o.error_examples.entry(k).or_insert(v);
                    }
                    add(&mut o.hist, &s.hist)?;
                }
                None => out.steps.push(s),
            }
        }
        let offset = ((p.started_unix_ms - t0) as f64 / 1000.0).round() as u64;
        for (sec, s) in p.timeline {
            let o = out.timeline.entry(sec + offset).or_default();
            o.ok += s.ok;
            o.errors += s.errors;
            add(&mut o.hist, &s.hist)?;
        }
        add(&mut out.connect_hist, &p.connect_hist)?;
        let (a, b) = (&mut out.sessions, &p.sessions);
        a.opened += b.opened;
        a.failed_to_open += b.failed_to_open;
        a.closed += b.closed;
        a.churned += b.churned;
        a.peak_open += b.peak_open;
        let (a, b) = (&mut out.idle_streams, &p.idle_streams);
        a.requested += b.requested;
        a.opened += b.opened;
        a.failed_to_open += b.failed_to_open;
        a.ended_early += b.ended_early;
        let (a, b) = (&mut out.server_requests, &p.server_requests);
        a.sampling_answered += b.sampling_answered;
        a.elicitation_answered += b.elicitation_answered;
        a.refused += b.refused;
        out.setup.ok += p.setup.ok;
        out.setup.errors += p.setup.errors;
    }
    out.shards.sort();
    out.config["shards"] = json!(out.shards);
    Ok(out)
}

fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<()> {
    into.add(from)
        .map_err(|e| anyhow::anyhow!("histograms do not add up: {e:?}"))
}

/// The report for people: what was counted, per step and in total.
pub fn render_table(r: &Results) -> String {
    let total = r.total();
    let mode = r.config["mode"].as_str().unwrap_or("");
    let mut out = format!(
        "\ncompleted calls: {} ok, {} errors in {:.1} s measured ({:.1} ok calls/s, {mode})\n\n",
        total.ok,
        total.errors,
        r.measured_seconds,
        r.calls_per_sec(total.ok),
    );
    out.push_str(&format!(
        "{:<22} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "step", "ok", "errors", "ok/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    ));
    let row = |name: &str, ok: u64, errors: u64, h: &Histogram<u64>| {
        let q = |x: f64| {
            if h.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", ms(h.value_at_quantile(x)))
            }
        };
        let max = if h.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", ms(h.max()))
        };
        format!(
            "{:<22} {:>8} {:>7} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            name,
            ok,
            errors,
            r.calls_per_sec(ok),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            max
        )
    };
    for s in &r.steps {
        out.push_str(&row(&s.name, s.ok, s.errors, &s.hist));
    }
    out.push_str(&row("ALL", total.ok, total.errors, &total.hist));
    out.push_str("(ok: calls that returned a result; errors: failed, timed out or not sent; latency: ok calls)\n");
    let errors = r.errors_by_kind();
    if !errors.is_empty() {
        out.push_str("\nerrors by kind:\n");
        for (k, v) in errors {
            out.push_str(&format!("  {k:<18} {v}\n"));
        }
        out.push_str("first of each kind, per step:\n");
        for s in &r.steps {
            for (k, e) in &s.error_examples {
                out.push_str(&format!("  {} {k}: {e}\n", s.name));
            }
        }
    }
    let s = &r.sessions;
    out.push_str(&format!(
        "\nsessions: {} opened, {} failed to open, {} closed by us, {} churned, {} open at most",
        s.opened, s.failed_to_open, s.closed, s.churned, s.peak_open
    ));
    if !r.connect_hist.is_empty() {
        out.push_str(&format!(
            "; opening one took p50 {:.2} ms, p99 {:.2} ms",
            ms(r.connect_hist.value_at_quantile(0.5)),
            ms(r.connect_hist.value_at_quantile(0.99))
        ));
    }
    out.push('\n');
    let i = &r.idle_streams;
    if i.requested > 0 {
        out.push_str(&format!(
            "idle GET streams: {} asked for, {} opened, {} failed to open, {} ended before the run did\n",
            i.requested, i.opened, i.failed_to_open, i.ended_early
        ));
    }
    let q = &r.server_requests;
    if q.sampling_answered + q.elicitation_answered + q.refused > 0 {
        out.push_str(&format!(
            "server requests: {} sampling and {} elicitation answered with the configured reply, {} refused\n",
            q.sampling_answered, q.elicitation_answered, q.refused
        ));
    }
    if r.setup.ok + r.setup.errors > 0 {
        out.push_str(&format!(
            "setup (not measured): {} calls ok, {} failed\n",
            r.setup.ok, r.setup.errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str, latencies: &[u64], started: u64) -> Results {
        let mut step = StepResult::new("echo", "tools/call", "echo");
        let mut timeline = BTreeMap::new();
        for (i, v) in latencies.iter().enumerate() {
            step.ok += 1;
            step.hist.record(*v).unwrap();
            let s: &mut Second = timeline.entry(i as u64 % 3).or_default();
            s.ok += 1;
            s.hist.record(*v).unwrap();
        }
        Results {
            started_unix_ms: started,
            measured_seconds: 3.0,
            steps: vec![step],
            timeline,
            sessions: SessionCounts {
                opened: 2,
                ..Default::default()
            },
            ..Results::new(
                json!({"scenario": "t", "mode": "open-loop"}),
                vec![name.to_owned()],
            )
        }
    }

    /// Latencies spread over six orders of magnitude, from a fixed seed.
    fn latencies(seed: u64, n: usize) -> Vec<u64> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..n)
            .map(|_| {
                let exp = rng.f64() * 6.0;
                (10f64.powf(exp) as u64).max(1) + rng.u64(0..7)
            })
            .collect()
    }

    #[test]
    fn merging_two_shards_equals_one_histogram_of_both() {
        let (a, b) = (latencies(1, 20_000), latencies(2, 7_000));
        // through the JSON report and back, as `load merge` reads them
        let ra = Results::from_json(shard("1/2", &a, 1_000).to_json()).unwrap();
        let rb = Results::from_json(shard("2/2", &b, 1_000).to_json()).unwrap();
        let merged = merge(vec![ra, rb]).unwrap();
        let mut both = new_hist();
        for v in a.iter().chain(&b) {
            both.record(*v).unwrap();
        }
        let m = &merged.steps[0].hist;
        assert_eq!(m.len(), both.len());
        for i in 0..=1000 {
            let q = i as f64 / 1000.0;
            assert_eq!(
                m.value_at_quantile(q),
                both.value_at_quantile(q),
                "quantile {q}"
            );
        }
        for p in [99.9, 99.99, 99.999] {
            assert_eq!(
                m.value_at_percentile(p),
                both.value_at_percentile(p),
                "p{p}"
            );
        }
        assert_eq!(
            (m.min(), m.max(), m.mean()),
            (both.min(), both.max(), both.mean())
        );
        assert_eq!(
            merged.total().hist.value_at_quantile(0.99),
            both.value_at_quantile(0.99)
        );
        assert_eq!(merged.steps[0].ok, 27_000);
        assert_eq!(merged.sessions.opened, 4);
        assert_eq!(merged.shards, ["1/2", "2/2"]);
        // the timelines add second by second
        let per_second: u64 = merged.timeline.values().map(|s| s.hist.len()).sum();
        assert_eq!(per_second, 27_000);
    }

    #[test]
    fn merge_aligns_timelines_on_wall_clock_and_refuses_mixtures() {
        let ra = shard("1/2", &[100, 200, 300], 10_000);
        let rb = shard("2/2", &[400], 12_000);
        let merged = merge(vec![ra.clone(), rb]).unwrap();
        assert_eq!(
            merged.timeline[&2].ok,
            1 + 1,
            "b's second 0 is a's second 2"
        );
        assert!(
            merge(vec![ra.clone(), ra.clone()])
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        let mut other = shard("2/2", &[1], 10_000);
        other.config["scenario"] = json!("x");
        assert!(
            merge(vec![ra, other])
                .unwrap_err()
                .to_string()
                .contains("different scenarios")
        );
        assert!(
            Results::from_json(json!({"total": {}}))
                .unwrap_err()
                .to_string()
                .contains("not a mcp-client-load/2 report")
        );
    }
}
