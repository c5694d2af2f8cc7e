//! This run against an earlier one (`--baseline previous.json`): per step
//! and in total, throughput, p50, p99 and the error rate, and which of them
//! got worse by more than the margin.

use serde_json::{Value, json};

use super::results::{Agg, Results};

/// How much worse counts as a regression.
#[derive(Debug, Clone, Copy)]
pub struct Margins {
    /// Relative, for throughput (lower) and latency (higher): 0.10 = 10 %.
    pub relative: f64,
    /// Absolute, for the error rate (higher): 0.001 = 0.1 percentage point.
    pub error_rate: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub scope: String,
    pub what: &'static str,
    pub baseline: f64,
    pub current: f64,
    pub regression: bool,
}

impl Change {
    /// e.g. `echo p99: 12.10 → 16.38 ms (+35.4%)`.
    pub fn describe(&self) -> String {
        let (unit, scale) = match self.what {
            "throughput" => (" ok calls/s", 1.0),
            "error_rate" => ("%", 100.0),
            _ => (" ms", 1.0),
        };
        let rel = if self.what == "error_rate" {
            format!("{:+.2} points", (self.current - self.baseline) * 100.0)
        } else if self.baseline > 0.0 {
            format!("{:+.1}%", (self.current / self.baseline - 1.0) * 100.0)
        } else {
            "new".to_owned()
        };
        format!(
            "{} {}: {:.2} → {:.2}{unit} ({rel})",
            self.scope,
            self.what,
            self.baseline * scale,
            self.current * scale
        )
    }
}

fn changes(
    scope: &str,
    base: &Agg,
    base_rps: f64,
    cur: &Agg,
    cur_rps: f64,
    m: Margins,
) -> Vec<Change> {
    let mut out = vec![Change {
        scope: scope.to_owned(),
        what: "throughput",
        baseline: base_rps,
        current: cur_rps,
        regression: cur_rps < base_rps * (1.0 - m.relative),
    }];
    for (what, q) in [("p50", 0.5), ("p99", 0.99)] {
        if base.hist.is_empty() || cur.hist.is_empty() {
            continue;
        }
        let b = base.hist.value_at_quantile(q) as f64 / 1000.0;
        let c = cur.hist.value_at_quantile(q) as f64 / 1000.0;
        out.push(Change {
            scope: scope.to_owned(),
            what,
            baseline: b,
            current: c,
            regression: c > b * (1.0 + m.relative),
        });
    }
    let (b, c) = (base.error_rate(), cur.error_rate());
    out.push(Change {
        scope: scope.to_owned(),
        what: "error_rate",
        baseline: b,
        current: c,
        regression: c > b + m.error_rate,
    });
    out
}

/// Every change, steps first (those in both runs), then the whole run.
pub fn compare(base: &Results, cur: &Results, m: Margins) -> Vec<Change> {
    let mut out = Vec::new();
    for s in &cur.steps {
        if let (Some(b), Some(c)) = (base.scope(&s.name), cur.scope(&s.name)) {
            out.extend(changes(
                &s.name,
                &b,
                base.calls_per_sec(b.ok),
                &c,
                cur.calls_per_sec(c.ok),
                m,
            ));
        }
    }
    let (b, c) = (base.total(), cur.total());
    out.extend(changes(
        "ALL",
        &b,
        base.calls_per_sec(b.ok),
        &c,
        cur.calls_per_sec(c.ok),
        m,
    ));
    out
}

/// Steps only one of the two runs has.
pub fn unmatched(base: &Results, cur: &Results) -> (Vec<String>, Vec<String>) {
    let names = |r: &Results| r.steps.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let (b, c) = (names(base), names(cur));
    (
        b.iter().filter(|n| !c.contains(n)).cloned().collect(),
        c.iter().filter(|n| !b.contains(n)).cloned().collect(),
    )
}

pub fn to_json(base_path: &str, base: &Results, cur: &Results, m: Margins, ch: &[Change]) -> Value {
    let (only_base, only_cur) = unmatched(base, cur);
    json!({
        "baseline": base_path,
        "baseline_run_id": base.config.get("run_id"),
        "margin": m.relative,
        "error_margin": m.error_rate,
        "changes": ch.iter().map(|c| json!({
            "scope": c.scope, "metric": c.what, "baseline": c.baseline, "current": c.current,
            "regression": c.regression,
        })).collect::<Vec<_>>(),
        "regressions": ch.iter().filter(|c| c.regression).map(Change::describe).collect::<Vec<_>>(),
        "only_in_baseline": only_base,
        "only_in_this_run": only_cur,
    })
}

pub fn render(base_path: &str, base: &Results, cur: &Results, ch: &[Change]) -> String {
    let mut out = format!("\ncompared with {base_path}:\n");
    for c in ch {
        let flag = if c.regression { "  REGRESSION" } else { "" };
        out.push_str(&format!("  {}{flag}\n", c.describe()));
    }
    let (only_base, only_cur) = unmatched(base, cur);
    if !only_base.is_empty() {
        out.push_str(&format!(
            "  only in the baseline: {}\n",
            only_base.join(", ")
        ));
    }
    if !only_cur.is_empty() {
        out.push_str(&format!("  only in this run: {}\n", only_cur.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::results::{Results, StepResult};
    use super::*;

    fn run(latency_ms: u64, ok: u64, errors: u64) -> Results {
        let mut s = StepResult::new("echo", "tools/call", "echo");
        for _ in 0..ok {
            s.hist.record(latency_ms * 1000).unwrap();
        }
        s.ok = ok;
        s.errors = errors;
        Results {
            measured_seconds: 10.0,
            steps: vec![s],
            ..Results::new(json!({}), vec![])
        }
    }

    #[test]
    fn regressions_beyond_the_margin_are_flagged_and_others_not() {
        let m = Margins {
            relative: 0.10,
            error_rate: 0.001,
        };
        let same = compare(&run(10, 1000, 0), &run(10, 1000, 0), m);
        assert!(same.iter().all(|c| !c.regression), "{same:?}");
        // 5% slower, 5% fewer calls: within the margin
        let near = compare(&run(10, 1000, 0), &run(10, 950, 0), m);
        assert!(near.iter().all(|c| !c.regression), "{near:?}");
        let worse = compare(&run(10, 1000, 0), &run(20, 500, 10), m);
        let flagged: Vec<(&str, &str)> = worse
            .iter()
            .filter(|c| c.regression)
            .map(|c| (c.scope.as_str(), c.what))
            .collect();
        for what in ["throughput", "p50", "p99", "error_rate"] {
            assert!(
                flagged.contains(&("echo", what)) && flagged.contains(&("ALL", what)),
                "{what}: {flagged:?}"
            );
        }
        let p99 = worse.iter().find(|c| c.what == "p99").unwrap().describe();
        assert!(
            p99.starts_with("echo p99: 10.01 → 20.02 ms (+100."),
            "{p99}"
        );
        // a faster run is no regression
        assert!(
            compare(&run(20, 500, 10), &run(10, 1000, 0), m)
                .iter()
                .all(|c| !c.regression)
        );
    }
}
