//! `mcp-client load`: a load generator for MCP through the gateway.
//!
//! N sessions (one transport, or a mix), a weighted tool mix with generated
//! arguments, a fixed duration or call count, and either a closed loop
//! (each session sends its next call when the last one returns) or an open
//! loop at a target rate, where latency is measured from the *intended*
//! send time so a slow server cannot hide its queueing (no coordinated
//! omission). Results: per-tool throughput and HDR-histogram percentiles,
//! errors by kind, a live progress line, `--output json`, and an optional
//! self-contained HTML report with a latency-over-time chart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Output;
use crate::connect::{ConnectArgs, Connection, TransportChoice, connect, rate_limited};

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Concurrent MCP sessions.
    #[arg(long, default_value_t = 8)]
    pub sessions: usize,
    /// How long to run (after warm-up), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many measured calls instead (whichever comes first).
    #[arg(long)]
    pub calls: Option<u64>,
    /// Open loop: target calls per second across all sessions (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Weighted tool mix, e.g. get_agent=70,search_agents=20,register_agent=10.
    #[arg(
        long,
        default_value = "get_agent=70,search_agents=20,register_agent=10"
    )]
    pub mix: String,
    /// Calls before this much time are not measured.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Transports for the sessions, round-robin, e.g. streamable,sse,stateless (default: --transport).
    #[arg(long, value_delimiter = ',')]
    pub transports: Vec<TransportChoice>,
    /// Agents registered up front for get_agent/search_agents to find.
    #[arg(long, default_value_t = 100)]
    pub seed_agents: usize,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
    /// Per-call timeout.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Most calls outstanding at once in open loop (beyond: counted as "client_saturated").
    #[arg(long, default_value_t = 10_000)]
    pub max_outstanding: u64,
    /// Closed loop: after a rate-limited call (HTTP 429 / JSON-RPC -32023),
    /// the session waits out the gateway's Retry-After before calling again.
    #[arg(long)]
    pub honour_retry_after: bool,
    /// Processes whose CPU time (user + system, from /proc) over the
    /// measured window is reported per 1,000 calls, e.g. a proxy's pids.
    #[arg(long, value_delimiter = ',')]
    pub cpu_pid: Vec<u32>,
}

/// CPU time (user + system) the given processes have used so far, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // fields after the command name (which may hold spaces) in parentheses
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// A weighted choice of tools.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(Vec<(String, u32)>);

impl Mix {
    pub fn parse(text: &str) -> Result<Self> {
        let mut items = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tool, w) = part.split_once('=').unwrap_or((part, "1"));
            let w: u32 = w
                .parse()
                .with_context(|| format!("weight of {tool} is not a number"))?;
            if w > 0 {
                items.push((tool.to_owned(), w));
            }
        }
        if items.is_empty() {
            bail!("the tool mix is empty");
        }
        Ok(Self(items))
    }

    pub fn pick(&self, r: u64) -> &str {
        let total: u64 = self.0.iter().map(|(_, w)| *w as u64).sum();
        let mut x = r % total;
        for (tool, w) in &self.0 {
            if x < *w as u64 {
                return tool;
            }
            x -= *w as u64;
        }
        &self.0[0].0
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Arguments for one call of `tool` (ids are generated, unique per run).
pub fn arguments(tool: &str, run: &str, n: u64, r: u64, seed_agents: usize) -> Value {
    let seeded = format!("load-seed-{}", r % seed_agents.max(1) as u64);
    match tool {
        "get_agent" => json!({ "agent_id": seeded }),
        "get_agent_facts" => json!({ "username": seeded.replace('-', "_") }),
        "search_agents" => json!({ "query": format!("load-seed-{}", r % 10), "limit": 10 }),
        "list_agents" => json!({ "limit": 10 }),
        "register_agent" => {
            json!({ "agent_id": format!("load-{run}-{n}"), "agent_url": "http://127.0.0.1:9/a2a", "capabilities": ["load"] })
        }
        "update_agent" => json!({ "agent_id": seeded, "status": "active" }),
        _ => json!({}),
    }
}

struct Sample {
    tool: String,
    latency_us: u64,
    error: Option<String>,
    done_at: Duration,
    measured: bool,
}

#[derive(Default)]
struct ToolStats {
    ok: u64,
    errors: u64,
    hist: Option<Histogram<u64>>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn classify(e: &anyhow::Error) -> String {
    let text = format!("{e:#}").to_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        "timeout".into()
    } else if text.contains("connect") {
        "connect".into()
    } else if text.contains("session") {
        "session".into()
    } else {
        "transport".into()
    }
}

/// One call: its error kind (None: ok) and, when rate-limited, the wait asked for.
async fn call_once(
    conn: &Connection,
    tool: &str,
    args: Value,
    timeout: Duration,
) -> (Option<String>, Option<Duration>) {
    match tokio::time::timeout(timeout, conn.call(tool, args)).await {
        Err(_) => (Some("timeout".into()), None),
        Ok(Err(e)) => match rate_limited(&e) {
            Some(wait) => (Some("rate_limited".into()), Some(wait)),
            None => (Some(classify(&e)), None),
        },
        Ok(Ok(r)) if r.is_error.unwrap_or(false) => (Some("tool_error".into()), None),
        Ok(Ok(_)) => (None, None),
    }
}

pub async fn run(conn_args: &ConnectArgs, args: &LoadArgs, output: Output) -> Result<()> {
    let mix = Mix::parse(&args.mix)?;
    if args.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );

    // Connect every session up front.
    let mut conns = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let mut a = conn_args.clone();
        if !args.transports.is_empty() {
            a.transport = args.transports[i % args.transports.len()];
        }
        let mut attempts = 0;
        let conn = loop {
            match connect(&a).await {
                Ok(c) => break c,
                // A polite client waits out a rate limit here too (a few times).
                Err(e) if args.honour_retry_after && attempts < 10 => match rate_limited(&e) {
                    Some(wait) => {
                        attempts += 1;
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e.context(format!("session {i}"))),
                },
                Err(e) => return Err(e.context(format!("session {i}"))),
            }
        };
        conns.push(Arc::new(conn));
    }
    // Seed agents for reads to find (already-exists is fine).
    for i in 0..args.seed_agents {
        let _ = conns[0]
            .call("register_agent", json!({"agent_id": format!("load-seed-{i}"), "agent_url": "http://127.0.0.1:9/a2a", "capabilities": ["load"]}))
            .await;
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let start = Instant::now();
    let measure_from = args.warmup;
    let end_at = args.warmup + args.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let outstanding = Arc::new(AtomicU64::new(0));
    let limit = args.calls;

    let cpu_probe = (!args.cpu_pid.is_empty()).then(|| {
        let pids = args.cpu_pid.clone();
        let from = start + measure_from;
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            cpu_seconds(&pids)
        })
    });
    let driver = {
        let conns = conns.clone();
        let mix = mix.clone();
        let args = args.clone();
        let run_id = run_id.clone();
        let issued = Arc::clone(&issued);
        let outstanding = Arc::clone(&outstanding);
        let tx = tx.clone();
        tokio::spawn(async move {
            match args.rate {
                Some(rate) if rate > 0.0 => {
                    // Open loop: the schedule, not the server, decides when calls go out.
                    let interval = Duration::from_secs_f64(1.0 / rate);
                    let mut rng = 0x5EED_u64;
                    let mut n = 0u64;
                    loop {
                        let intended = interval.mul_f64(n as f64);
                        if intended >= end_at {
                            break;
                        }
                        if let Some(l) = limit
                            && issued.load(Ordering::Relaxed) >= l
                        {
                            break;
                        }
                        tokio::time::sleep_until((start + intended).into()).await;
                        let r = splitmix(&mut rng);
                        let tool = mix.pick(r).to_owned();
                        let measured = intended >= measure_from;
                        if measured {
                            issued.fetch_add(1, Ordering::Relaxed);
                        }
                        if outstanding.load(Ordering::Relaxed) >= args.max_outstanding {
                            let _ = tx.send(Sample {
                                tool,
                                latency_us: 0,
                                error: Some("client_saturated".into()),
                                done_at: start.elapsed(),
                                measured,
                            });
                            n += 1;
                            continue;
                        }
                        let conn = Arc::clone(&conns[(n as usize) % conns.len()]);
                        let call_args = arguments(&tool, &run_id, n, r >> 8, args.seed_agents);
                        let tx = tx.clone();
                        let outstanding = Arc::clone(&outstanding);
                        outstanding.fetch_add(1, Ordering::Relaxed);
                        let timeout = args.timeout;
                        tokio::spawn(async move {
                            let (error, _) = call_once(&conn, &tool, call_args, timeout).await;
                            outstanding.fetch_sub(1, Ordering::Relaxed);
                            let done = start.elapsed();
                            let latency_us = done.saturating_sub(intended).as_micros() as u64;
                            let _ = tx.send(Sample {
                                tool,
                                latency_us,
                                error,
                                done_at: done,
                                measured,
                            });
                        });
                        n += 1;
                    }
                }
                _ => {
                    // Closed loop: each session calls back to back.
                    let mut workers = Vec::new();
                    for (i, conn) in conns.iter().enumerate() {
                        let conn = Arc::clone(conn);
                        let mix = mix.clone();
                        let run_id = run_id.clone();
                        let tx = tx.clone();
                        let issued = Arc::clone(&issued);
                        let args = args.clone();
                        workers.push(tokio::spawn(async move {
                            let mut rng = 0x5EED_u64 ^ (i as u64) << 32;
                            let mut n = i as u64;
                            loop {
                                let sent = start.elapsed();
                                if sent >= end_at {
                                    break;
                                }
                                let measured = sent >= measure_from;
                                if measured {
                                    let k = issued.fetch_add(1, Ordering::Relaxed);
                                    if limit.is_some_and(|l| k >= l) {
                                        break;
                                    }
                                }
                                let r = splitmix(&mut rng);
                                let tool = mix.pick(r).to_owned();
                                let call_args =
                                    arguments(&tool, &run_id, n, r >> 8, args.seed_agents);
                                let (error, wait) =
                                    call_once(&conn, &tool, call_args, args.timeout).await;
                                let done = start.elapsed();
                                let latency_us = (done - sent).as_micros() as u64;
                                let _ = tx.send(Sample {
                                    tool,
                                    latency_us,
                                    error,
                                    done_at: done,
                                    measured,
                                });
                                if let Some(wait) = wait.filter(|_| args.honour_retry_after) {
                                    // Never past the end of the run.
                                    let until = (start + end_at).min(Instant::now() + wait);
                                    tokio::time::sleep_until(until.into()).await;
                                }
                                n += args.sessions as u64;
                            }
                        }));
                    }
                    for w in workers {
                        let _ = w.await;
                    }
                }
            }
        })
    };
    drop(tx);

    let bar = if output == Output::Pretty {
        let bar = indicatif::ProgressBar::new(end_at.as_millis() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };

    let mut tools: BTreeMap<String, ToolStats> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut all = new_hist();
    let mut timeline: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    let mut last_tick = Instant::now();
    while let Some(s) = rx.recv().await {
        if !s.measured {
            continue;
        }
        let entry = tools.entry(s.tool.clone()).or_default();
        match &s.error {
            Some(kind) => {
                entry.errors += 1;
                *errors.entry(kind.clone()).or_default() += 1;
            }
            None => {
                entry.ok += 1;
                let v = s.latency_us.max(1);
                entry.hist.get_or_insert_with(new_hist).saturating_record(v);
                all.saturating_record(v);
                timeline
                    .entry(s.done_at.as_secs())
                    .or_insert_with(new_hist)
                    .saturating_record(v);
            }
        }
        if let Some(bar) = &bar
            && last_tick.elapsed() > Duration::from_millis(200)
        {
            last_tick = Instant::now();
            let secs = start
                .elapsed()
                .saturating_sub(measure_from)
                .as_secs_f64()
                .max(0.001);
            let ok: u64 = tools.values().map(|t| t.ok).sum();
            let err: u64 = tools.values().map(|t| t.errors).sum();
            bar.set_position(start.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{:.0} calls/s  errors {}  p99 {:.2} ms",
                ok as f64 / secs,
                err,
                all.value_at_quantile(0.99) as f64 / 1000.0
            ));
        }
    }
    let _ = driver.await;
    // the measured window ends here, before the sessions are closed
    let cpu_used = match cpu_probe.filter(|p| p.is_finished()) {
        Some(probe) => Some(cpu_seconds(&args.cpu_pid) - probe.await.unwrap_or(0.0)),
        None => None,
    };
    let elapsed = start
        .elapsed()
        .saturating_sub(measure_from)
        .min(args.duration)
        .as_secs_f64()
        .max(0.001);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for c in conns {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }

    let mut report = build_report(&tools, &errors, &all, elapsed, args, &timeline);
    report["config"]["run_id"] = json!(run_id);
    if let Some(cpu) = cpu_used {
        let calls = report["total"]["ok"].as_u64().unwrap_or(0)
            + report["total"]["errors"].as_u64().unwrap_or(0);
        report["cpu"] = json!({
            "pids": args.cpu_pid,
            "seconds": cpu,
            "ms_per_1000_calls": if calls > 0 { cpu * 1_000_000.0 / calls as f64 } else { 0.0 },
        });
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Pretty => print!("{}", render_table(&report)),
    }
    if let Some(path) = &args.html {
        std::fs::write(path, render_html(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        if output == Output::Pretty {
            println!("HTML report: {}", path.display());
        }
    }
    Ok(())
}

fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64) / 1000.0;
    json!({
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

fn build_report(
    tools: &BTreeMap<String, ToolStats>,
    errors: &BTreeMap<String, u64>,
    all: &Histogram<u64>,
    secs: f64,
    args: &LoadArgs,
    timeline: &BTreeMap<u64, Histogram<u64>>,
) -> Value {
    let per_tool: Vec<Value> = tools
        .iter()
        .map(|(name, t)| {
            let mut v = json!({ "tool": name, "ok": t.ok, "errors": t.errors, "calls_per_sec": t.ok as f64 / secs });
            if let Some(h) = &t.hist
                && let (Some(o), Value::Object(p)) = (v.as_object_mut(), percentiles(h))
            {
                o.extend(p);
            }
            v
        })
        .collect();
    let ok: u64 = tools.values().map(|t| t.ok).sum();
    let err: u64 = tools.values().map(|t| t.errors).sum();
    let series: Vec<Value> = timeline
        .iter()
        .map(|(sec, h)| json!({"second": sec, "count": h.len(), "p50_ms": h.value_at_quantile(0.5) as f64 / 1000.0, "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0}))
        .collect();
    json!({
        "config": {
            "sessions": args.sessions,
            "duration_s": args.duration.as_secs_f64(),
            "warmup_s": args.warmup.as_secs_f64(),
            "rate": args.rate,
            "mode": if args.rate.is_some() { "open-loop" } else { "closed-loop" },
            "mix": args.mix,
            "transports": args.transports.iter().map(|t| format!("{t:?}").to_lowercase()).collect::<Vec<_>>(),
        },
        "measured_seconds": secs,
        "total": { "ok": ok, "errors": err, "calls_per_sec": ok as f64 / secs, "latency": if all.is_empty() { Value::Null } else { percentiles(all) } },
        "tools": per_tool,
        "errors_by_kind": errors,
        "timeline": series,
    })
}

fn render_table(r: &Value) -> String {
    let mut out = format!(
        "\n{} calls ok, {} errors in {:.1}s ({:.1} calls/s, {})\n\n",
        r["total"]["ok"],
        r["total"]["errors"],
        r["measured_seconds"].as_f64().unwrap_or(0.0),
        r["total"]["calls_per_sec"].as_f64().unwrap_or(0.0),
        r["config"]["mode"].as_str().unwrap_or("")
    );
    out.push_str(&format!(
        "{:<18} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "tool", "ok", "errors", "calls/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    ));
    let f = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    let rows = r["tools"].as_array().cloned().unwrap_or_default();
    for t in rows.iter().chain(std::iter::once(&json!({"tool": "ALL", "ok": r["total"]["ok"], "errors": r["total"]["errors"], "calls_per_sec": r["total"]["calls_per_sec"], "p50_ms": r["total"]["latency"]["p50_ms"], "p90_ms": r["total"]["latency"]["p90_ms"], "p99_ms": r["total"]["latency"]["p99_ms"], "p999_ms": r["total"]["latency"]["p999_ms"], "max_ms": r["total"]["latency"]["max_ms"]}))) {
        out.push_str(&format!(
            "{:<18} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            t["tool"].as_str().unwrap_or(""), t["ok"].as_u64().unwrap_or(0), t["errors"].as_u64().unwrap_or(0), f(&t["calls_per_sec"]), f(&t["p50_ms"]), f(&t["p90_ms"]), f(&t["p99_ms"]), f(&t["p999_ms"]), f(&t["max_ms"])
        ));
    }
    if let Some(errs) = r["errors_by_kind"].as_object().filter(|e| !e.is_empty()) {
        out.push_str("\nerrors by kind:\n");
        for (k, v) in errs {
            out.push_str(&format!("  {k:<18} {v}\n"));
        }
    }
    out
}

/// A self-contained HTML page: the table and an inline SVG chart of p50/p99
/// latency per second. No scripts, no external assets.
pub fn render_html(r: &Value) -> String {
    let points = r["timeline"].as_array().cloned().unwrap_or_default();
    let (w, h, pad) = (800.0, 300.0, 40.0);
    let max_ms = points
        .iter()
        .filter_map(|p| p["p99_ms"].as_f64())
        .fold(0.0_f64, f64::max)
        .max(0.001);
    let n = points.len().max(2) as f64 - 1.0;
    let line = |key: &str| -> String {
        points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let x = pad + (w - 2.0 * pad) * (i as f64) / n;
                let y = h - pad - (h - 2.0 * pad) * p[key].as_f64().unwrap_or(0.0) / max_ms;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let table = render_table(r).replace('&', "&amp;").replace('<', "&lt;");
    format!(
        r##"<!doctype html><html><head><meta charset="utf-8"><title>mcp-client load report</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>MCP load report</h1>
<pre>{table}</pre>
<h2>Latency over time (ms, per second of the run)</h2>
<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="latency over time">
<rect x="0" y="0" width="{w}" height="{h}" fill="white" stroke="#ccc"/>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#999"/>
<text x="4" y="{pad}" font-size="12">{max_ms:.2}</text><text x="4" y="{b}" font-size="12">0</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{p50}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{p99}"/>
<text x="{lx}" y="20" font-size="12" fill="#1f77b4">p50</text><text x="{lx2}" y="20" font-size="12" fill="#d62728">p99</text>
</svg>
<h2>Raw</h2><pre>{raw}</pre></body></html>
"##,
        b = h - pad,
        r = w - pad,
        lx = w - 120.0,
        lx2 = w - 80.0,
        p50 = line("p50_ms"),
        p99 = line("p99_ms"),
        raw = serde_json::to_string_pretty(r)
            .unwrap_or_default()
            .replace('<', "&lt;"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let m = Mix::parse("a=70, b=20,c=10,d=0").unwrap();
        let mut counts = BTreeMap::new();
        for r in 0..100 {
            *counts.entry(m.pick(r).to_owned()).or_insert(0) += 1;
        }
        assert_eq!(counts["a"], 70);
        assert_eq!(counts["b"], 20);
        assert_eq!(counts["c"], 10);
        assert!(!counts.contains_key("d"));
        assert!(Mix::parse("").is_err());
        assert!(Mix::parse("a=x").is_err());
    }

    #[test]
    fn generated_ids_are_unique_per_call() {
        let a = arguments("register_agent", "run", 1, 5, 10);
        let b = arguments("register_agent", "run", 2, 5, 10);
        assert_ne!(a["agent_id"], b["agent_id"]);
        assert_eq!(
            arguments("get_agent", "run", 1, 13, 10)["agent_id"],
            "load-seed-3"
        );
    }
}
