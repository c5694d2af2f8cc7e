//! `mcp-client load`: load-test any MCP server (through the gateway or not).
//!
//! A scenario (a TOML/YAML/JSON file, or the registry's mix built from
//! `--mix`/`--seed-agents`) says what sessions call: tools, prompts,
//! resources, lists, with templated arguments and values captured from
//! earlier results. Stages shape the run: an open loop whose rate ramps
//! (latency measured from each call's intended send time, so queueing is
//! not hidden) or a closed loop whose session count ramps; churn, idle GET
//! streams and sessions that answer sampling/elicitation add the load
//! shapes a gateway meets. Results: per-step throughput and HDR
//! percentiles, errors by kind, a live progress line, `-o json` (with the
//! histograms, so `load merge` combines shards exactly), an HTML report,
//! k6-style thresholds and a baseline comparison that exit 99 when crossed.
//!
//! Files: `scenario` (the file format), `template` and `data` (arguments),
//! `stages` (load shapes), `runner` (the run), `answer` (server requests),
//! `results` (counts, histograms, merge), `threshold`, `compare`, `html`.

mod answer;
mod compare;
mod data;
mod html;
mod results;
mod runner;
mod scenario;
mod stages;
mod template;
mod threshold;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Output;
use crate::connect::{ConnectArgs, TransportChoice};
pub use results::{Results, merge};
use runner::Plan;
pub use scenario::{DEFAULT_MIX, Mix, Mode, Scenario};
use stages::{Profile, Stage, parse_stage, split};
use threshold::Threshold;

/// What the run did not live up to: crossed thresholds, regressions against
/// the baseline. `mcp-client` exits with [`GatesCrossed::EXIT_CODE`] on it.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct GatesCrossed(pub Vec<String>);

impl GatesCrossed {
    /// As k6 does: apart from 1 (the run itself failed).
    pub const EXIT_CODE: i32 = 99;
}

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LoadCommand {
    #[command(subcommand)]
    pub action: Option<LoadAction>,
    #[command(flatten)]
    pub run: LoadArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LoadAction {
    /// Combine shards' JSON reports (`--shard i/n` runs) into one: counts
    /// summed, HDR histograms added exactly.
    Merge(MergeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// The shards' JSON reports (`-o json` or `--save` output).
    #[arg(required = true, num_args = 1..)]
    pub reports: Vec<PathBuf>,
    #[command(flatten)]
    pub gates: Gates,
}

/// What is done with the results: thresholds, a baseline, files.
#[derive(Debug, Clone, Args)]
pub struct Gates {
    /// A pass/fail criterion, as in k6: 'p99 < 50ms', 'errors < 0.1%',
    /// 'echo: p95 <= 20ms' (a step or tool), 'throughput >= 100/s'.
    /// Repeatable; adds to the scenario's. Crossed: exit code 99.
    #[arg(long = "threshold")]
    pub thresholds: Vec<String>,
    /// An earlier run's JSON report: prints the change per step and flags
    /// regressions beyond --margin (exit code 99 when there are any).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Worse than the baseline by more than this is a regression: p50/p99
    /// up, or throughput down, by more than this share.
    #[arg(long, default_value = "10%", value_parser = parse_percent)]
    pub margin: f64,
    /// An error rate more than this many percentage points above the
    /// baseline's is a regression.
    #[arg(long, default_value = "0.1", value_parser = parse_points)]
    pub error_margin: f64,
    /// Write a self-contained HTML report (charts of this run and the baseline).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Also write the JSON report (what `-o json` prints) to this file.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// A scenario file (.toml, .yaml or .json; see client/scenarios/).
    /// Without one: the registry's mix (--mix, --seed-agents).
    #[arg(long, short = 's')]
    pub scenario: Option<PathBuf>,
    /// Closed loop: concurrent sessions [default: 8]. Open loop: the
    /// sessions the calls are spread over.
    #[arg(long)]
    pub sessions: Option<usize>,
    /// How long to run after the warm-up, without stages [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many measured calls (whichever comes first).
    #[arg(long)]
    pub calls: Option<u64>,
    /// Open loop: calls per second across all sessions (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// What stages count: calls per second (rate) or sessions.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// A stage, DURATION:TARGET (repeatable, in order; replaces the
    /// scenario's stages): the target — calls/s, or sessions — is reached
    /// at the stage's end, e.g. --stage 60s:2000 --stage 5m:2000 --stage 30s:0.
    #[arg(long = "stage", value_parser = parse_stage)]
    pub stages: Vec<Stage>,
    /// Sessions ended and replaced per second (new sessions per second).
    #[arg(long)]
    pub churn: Option<f64>,
    /// GET event streams held open, idle, on sessions of their own while the calls run.
    #[arg(long)]
    pub idle_streams: Option<usize>,
    /// Registry shortcut: the weighted tool mix [default: get_agent=70,search_agents=20,register_agent=10].
    #[arg(long, conflicts_with = "scenario")]
    pub mix: Option<String>,
    /// Registry shortcut: agents registered up front for get_agent/search_agents to find [default: 100].
    #[arg(long, conflicts_with = "scenario")]
    pub seed_agents: Option<usize>,
    /// Calls intended before this much time are not measured [default: 2s; 0s with stages].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub warmup: Option<Duration>,
    /// Transports for the sessions, round-robin, e.g. streamable,sse,stateless (default: --transport).
    #[arg(long, value_delimiter = ',')]
    pub transports: Vec<TransportChoice>,
    /// Per-call timeout [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
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
    /// Run shard I of N (1-based, e.g. 2/4): every N-th call of the open
    /// loop's schedule, an N-th of the sessions, churn, idle streams and
    /// --calls; combine the shards' reports with `load merge`.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    #[command(flatten)]
    pub gates: Gates,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix('%').unwrap_or(s.trim());
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v / 100.0)
        .ok_or_else(|| format!("`{s}`: a percentage, e.g. 10%"))
}

fn parse_points(s: &str) -> Result<f64, String> {
    parse_percent(s).map_err(|_| format!("`{s}`: percentage points, e.g. 0.1"))
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}`: a shard is I/N with 1 <= I <= N, e.g. 2/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if i == 0 || i > n {
        return Err(bad());
    }
    Ok((i - 1, n))
}

pub async fn command(conn: &ConnectArgs, cmd: &LoadCommand, output: Output) -> Result<()> {
    match &cmd.action {
        Some(LoadAction::Merge(m)) => merge_reports(m, output),
        None => run(conn, &cmd.run, output).await,
    }
}

fn duration_of(
    cli: Option<Duration>,
    file: &Option<String>,
    what: &str,
) -> Result<Option<Duration>> {
    match (cli, file) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(text)) => humantime::parse_duration(text)
            .map(Some)
            .with_context(|| format!("load.{what} `{text}`")),
        (None, None) => Ok(None),
    }
}

/// The scenario's `[load]` table and the flags, as this process's plan and
/// the configuration the report echoes.
fn plan(args: &LoadArgs, scenario: &Scenario, run_id: &str) -> Result<(Plan, Value)> {
    let file = &scenario.load;
    let file_stages = match &file.stages {
        Some(stages) => stages
            .iter()
            .map(|s| {
                let d = humantime::parse_duration(&s.duration)
                    .with_context(|| format!("load.stages: `{}`", s.duration))?;
                if !(s.target.is_finite() && s.target >= 0.0) {
                    bail!("load.stages: the target must be 0 or more");
                }
                Ok(Stage {
                    duration: d,
                    target: s.target,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let stages = if args.stages.is_empty() {
        file_stages
    } else {
        args.stages.clone()
    };
    if args.rate.is_some() && !args.stages.is_empty() {
        bail!("--rate holds one rate; --stage ramps it: give one or the other");
    }
    let rate = args.rate.or(file.rate);
    let mode = if args.rate.is_some() {
        Mode::Rate
    } else {
        args.mode.or(file.mode).unwrap_or(if rate.is_some() {
            Mode::Rate
        } else {
            Mode::Sessions
        })
    };
    let sessions = args.sessions.or(file.sessions).unwrap_or(8);
    if sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let duration = duration_of(args.duration, &file.duration, "duration")?;
    let warmup =
        duration_of(args.warmup, &file.warmup, "warmup")?.unwrap_or(if stages.is_empty() {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        });
    let profile = if stages.is_empty() {
        let total = warmup + duration.unwrap_or(Duration::from_secs(10));
        match mode {
            Mode::Rate => {
                let r = rate.context("an open loop needs a rate: --rate, load.rate or stages")?;
                if !(r.is_finite() && r > 0.0) {
                    bail!("the rate must be above 0");
                }
                Profile::hold(r, total)
            }
            Mode::Sessions => Profile::hold(sessions as f64, total),
        }
    } else {
        if duration.is_some() {
            bail!("with stages the stages set the run's length: drop --duration / load.duration");
        }
        Profile {
            start: file.start.unwrap_or(0.0),
            stages,
        }
    };
    if warmup >= profile.total() {
        bail!(
            "the warm-up ({}) is as long as the whole run ({})",
            humantime::format_duration(warmup),
            humantime::format_duration(profile.total())
        );
    }
    let (shard, shards) = args.shard.unwrap_or((0, 1));
    let churn = args.churn.or(file.churn).unwrap_or(0.0);
    if !(churn.is_finite() && churn >= 0.0) {
        bail!("churn is 0 or more sessions per second");
    }
    let idle = args.idle_streams.or(file.idle_streams).unwrap_or(0);
    let timeout =
        duration_of(args.timeout, &file.timeout, "timeout")?.unwrap_or(Duration::from_secs(30));
    let plan = Plan {
        mode,
        profile: profile.clone(),
        pool: split(sessions, shard, shards).max(1),
        warmup,
        timeout,
        calls: args.calls.map(|c| split(c as usize, shard, shards) as u64),
        churn: churn / shards as f64,
        idle_streams: split(idle, shard, shards),
        max_outstanding: args.max_outstanding,
        honour_retry_after: args.honour_retry_after,
        transports: args.transports.clone(),
        shard: (shard, shards),
        run_id: run_id.to_owned(),
        cpu_pids: args.cpu_pid.clone(),
    };
    let config = json!({
        "scenario": scenario.name,
        "run_id": run_id,
        "mode": match mode { Mode::Rate => "open-loop", Mode::Sessions => "closed-loop" },
        "sessions": sessions,
        "rate": if stages_given(args, scenario) { Value::Null } else { json!(rate) },
        "start": profile.start,
        "stages": profile.stages.iter().map(|s| json!({"duration_s": s.duration.as_secs_f64(), "target": s.target})).collect::<Vec<_>>(),
        "duration_s": (profile.total() - warmup).as_secs_f64(),
        // open loop: calls the schedule sends, all shards, warm-up included
        "scheduled_calls": (mode == Mode::Rate).then(|| profile.calls().ceil() as u64),
        "warmup_s": warmup.as_secs_f64(),
        "churn_per_s": churn,
        "idle_streams": idle,
        "timeout_s": timeout.as_secs_f64(),
        "calls": args.calls,
        "mix": args.mix.clone().or_else(|| args.scenario.is_none().then(|| DEFAULT_MIX.to_owned())),
        "transports": args.transports.iter().map(|t| format!("{t:?}").to_lowercase()).collect::<Vec<_>>(),
        "shard": format!("{}/{shards}", shard + 1),
    });
    Ok((plan, config))
}

fn stages_given(args: &LoadArgs, scenario: &Scenario) -> bool {
    !args.stages.is_empty() || scenario.load.stages.is_some()
}

/// The thresholds of the scenario and the flags, each scope checked
/// against the scenario's steps and tools (so a typo fails before the run).
fn thresholds(scenario: Option<&Scenario>, gates: &Gates) -> Result<Vec<Threshold>> {
    let mut out: Vec<Threshold> = scenario.map(|s| s.thresholds.clone()).unwrap_or_default();
    for t in &gates.thresholds {
        out.push(t.parse().map_err(anyhow::Error::msg)?);
    }
    if let Some(s) = scenario {
        let scopes = s.scopes();
        for t in &out {
            if let Some(scope) = &t.scope
                && !scopes.contains(scope)
            {
                bail!(
                    "threshold `{}`: no step or tool is named `{scope}` (there are: {})",
                    t.text,
                    scopes.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    Ok(out)
}

fn read_baseline(gates: &Gates) -> Result<Option<(PathBuf, Results)>> {
    gates
        .baseline
        .as_ref()
        .map(|p| Ok((p.clone(), Results::read(p).context("the baseline")?)))
        .transpose()
}

async fn run(conn: &ConnectArgs, args: &LoadArgs, output: Output) -> Result<()> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::read(path)?,
        None => {
            let mix = Mix::parse(args.mix.as_deref().unwrap_or(DEFAULT_MIX))?;
            scenario::registry(&mix, args.seed_agents.unwrap_or(100))?
        }
    };
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let (plan, config) = plan(args, &scenario, &run_id)?;
    scenario
        .data
        .set_shard(plan.shard.0 as u64, plan.shard.1 as u64);
    let thresholds = thresholds(Some(&scenario), &args.gates)?;
    let baseline = read_baseline(&args.gates)?;
    let results = runner::execute(conn, Arc::new(scenario), Arc::new(plan), config, output).await?;
    finish(&results, &args.gates, &thresholds, baseline, output)
}

fn merge_reports(args: &MergeArgs, output: Output) -> Result<()> {
    let parts = args
        .reports
        .iter()
        .map(|p| Results::read(p))
        .collect::<Result<Vec<_>>>()?;
    let merged = merge(parts)?;
    let thresholds = thresholds(None, &args.gates)?;
    let baseline = read_baseline(&args.gates)?;
    finish(&merged, &args.gates, &thresholds, baseline, output)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Prints and writes the report, then checks the gates.
fn finish(
    results: &Results,
    gates: &Gates,
    thresholds: &[Threshold],
    baseline: Option<(PathBuf, Results)>,
    output: Output,
) -> Result<()> {
    let verdicts = thresholds
        .iter()
        .map(|t| t.check(results))
        .collect::<Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
    let margins = compare::Margins {
        relative: gates.margin,
        error_rate: gates.error_margin,
    };
    let mut report = results.to_json();
    report["thresholds"] = json!(
        verdicts
            .iter()
            .map(|v| json!({
                "threshold": v.threshold, "passed": v.passed, "observed": v.observed,
            }))
            .collect::<Vec<_>>()
    );
    let mut crossed: Vec<String> = verdicts
        .iter()
        .filter(|v| !v.passed)
        .map(|v| format!("threshold crossed: `{}` ({})", v.threshold, v.observed))
        .collect();
    let mut comparison_text = String::new();
    if let Some((path, base)) = &baseline {
        let shown = path.display().to_string();
        let changes = compare::compare(base, results, margins);
        report["comparison"] = compare::to_json(&shown, base, results, margins, &changes);
        comparison_text = compare::render(&shown, base, results, &changes);
        crossed.extend(
            changes
                .iter()
                .filter(|c| c.regression)
                .map(|c| format!("regression against {shown}: {}", c.describe())),
        );
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Pretty => {
            print!("{}", results::render_table(results));
            if !verdicts.is_empty() {
                println!("\nthresholds:");
                for v in &verdicts {
                    println!("  {v}");
                }
            }
            print!("{comparison_text}");
        }
    }
    if let Some(path) = &gates.save {
        write(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &gates.html {
        let lines: Vec<String> = verdicts.iter().map(ToString::to_string).collect();
        let base = baseline
            .as_ref()
            .map(|(p, b)| (p.to_str().unwrap_or("baseline"), b));
        write(
            path,
            &html::render_html(results, base, &lines, &comparison_text),
        )?;
        if output == Output::Pretty {
            println!("HTML report: {}", path.display());
        }
    }
    if crossed.is_empty() {
        Ok(())
    } else {
        Err(GatesCrossed(crossed).into())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rmcp::model::ProtocolVersion;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        conn: ConnectArgs,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Load(LoadCommand),
    }

    fn load(args: &[&str]) -> std::result::Result<LoadCommand, clap::Error> {
        let mut all = vec!["mcp-client", "load"];
        all.extend(args);
        Cli::try_parse_from(all).map(|c| match c.cmd {
            Cmd::Load(l) => l,
        })
    }

    fn registry_plan(args: &[&str]) -> Result<(Plan, Value)> {
        let cmd = load(args).map_err(|e| anyhow::anyhow!("{e}"))?;
        let s = scenario::registry(&Mix::parse(DEFAULT_MIX)?, 1)?;
        plan(&cmd.run, &s, "r")
    }

    fn conn(args: &[&str]) -> std::result::Result<ConnectArgs, clap::Error> {
        let mut all = vec!["mcp-client"];
        all.extend(args);
        all.push("load");
        Cli::try_parse_from(all).map(|c| c.conn)
    }

    #[test]
    fn initialize_version_sets_the_version_sessions_offer_in_initialize() {
        let c = conn(&["--initialize-version", "2025-11-25"]).unwrap();
        assert_eq!(
            c.client_info().protocol_version,
            ProtocolVersion::V_2025_11_25
        );
        let c = conn(&[]).unwrap();
        assert_eq!(
            c.client_info().protocol_version,
            crate::connect::client_info().protocol_version
        );
    }

    #[test]
    fn initialize_version_refuses_a_version_without_initialize_or_unknown() {
        for bad in ["2026-07-28", "2025-13-01", "latest"] {
            let text = conn(&["--initialize-version", bad])
                .expect_err(bad)
                .to_string();
            assert!(
                text.contains(bad) && text.contains("2025-11-25"),
                "{bad}: {text}"
            );
        }
    }

    #[test]
    fn merge_is_a_subcommand_and_runs_take_flags() {
        let m = load(&["merge", "a.json", "b.json", "--threshold", "p99 < 5ms"]).unwrap();
        assert!(matches!(m.action, Some(LoadAction::Merge(ref a)) if a.reports.len() == 2));
        let r = load(&[
            "--rate",
            "100",
            "--shard",
            "2/3",
            "--threshold",
            "errors < 1%",
        ])
        .unwrap();
        assert!(r.action.is_none());
        assert_eq!(r.run.shard, Some((1, 3)));
        for bad in [
            &["--shard", "0/2"][..],
            &["--shard", "3/2"],
            &["--margin", "x"],
            &["--stage", "10s"],
        ] {
            assert!(load(bad).is_err(), "{bad:?}");
        }
        assert!(load(&["--scenario", "x.toml", "--mix", "a=1"]).is_err());
    }

    #[test]
    fn flags_make_the_plan_and_shards_split_it() {
        let (p, c) = registry_plan(&[
            "--rate",
            "300",
            "--duration",
            "4s",
            "--warmup",
            "1s",
            "--sessions",
            "5",
            "--shard",
            "1/2",
        ])
        .unwrap();
        assert_eq!(p.mode, Mode::Rate);
        assert_eq!(
            p.scheduled().count(),
            750,
            "every second call of 300/s over 5 s"
        );
        assert_eq!(p.pool, 3);
        assert_eq!(c["mode"], "open-loop");
        assert_eq!(c["duration_s"], 4.0);
        let (p, _) = registry_plan(&[
            "--stage",
            "2s:10",
            "--stage",
            "2s:0",
            "--churn",
            "4",
            "--idle-streams",
            "3",
            "--shard",
            "2/2",
        ])
        .unwrap();
        assert_eq!(p.mode, Mode::Sessions);
        assert_eq!(p.warmup, Duration::ZERO, "a ramp is its own warm-up");
        assert_eq!((p.sessions_at(2.0), p.churn, p.idle_streams), (5, 2.0, 1));
        for (bad, why) in [
            (&["--rate", "5", "--stage", "1s:5"][..], "one or the other"),
            (
                &["--stage", "1s:5", "--duration", "3s"],
                "stages set the run's length",
            ),
            (
                &["--stage", "1s:5", "--warmup", "2s"],
                "as long as the whole run",
            ),
            (&["--mode", "rate"], "needs a rate"),
            (&["--sessions", "0"], "at least 1"),
        ] {
            let err = format!("{:#}", registry_plan(bad).unwrap_err());
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_threshold_on_an_unknown_step_is_refused_before_the_run() {
        let s = scenario::registry(&Mix::parse(DEFAULT_MIX).unwrap(), 1).unwrap();
        let gates = |t: &str| load(&["--threshold", t]).unwrap().run.gates;
        assert_eq!(
            thresholds(Some(&s), &gates("get_agent: p99 < 5ms"))
                .unwrap()
                .len(),
            1
        );
        let err = thresholds(Some(&s), &gates("get_agnet: p99 < 5ms"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no step or tool is named `get_agnet`"),
            "{err}"
        );
    }
}
