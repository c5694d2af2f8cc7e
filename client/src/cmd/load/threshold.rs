//! Pass/fail criteria as in k6: `p99 < 50ms`, `errors < 0.1%`,
//! `echo: p95 <= 20ms`, `throughput >= 100/s`. A run that crosses one exits
//! non-zero and says which.
//!
//! Grammar: `[SCOPE:] METRIC OP VALUE`. SCOPE is a step name, else a tool
//! (prompt, resource) name and covers every step calling it; without one the
//! whole run. METRIC: `pNN` / `pNN.N` / `p(NN.N)` (`p999` is p99.9), `max`,
//! `mean` (latency of ok calls, VALUE with `us`, `ms` or `s`); `errors`
//! (VALUE with `%`: the error rate; without: the number of errors);
//! `throughput` (ok calls per second, VALUE optionally with `/s`).
//! OP: `<`, `<=`, `>`, `>=`.

use std::fmt;
use std::str::FromStr;

use super::results::{Agg, Results};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A latency quantile (0.99 for p99).
    Quantile(f64),
    Max,
    Mean,
    ErrorRate,
    Errors,
    Throughput,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// As written.
    pub text: String,
    pub scope: Option<String>,
    pub metric: Metric,
    pub op: Op,
    /// In ms for latencies, a fraction for the error rate, calls/s for throughput.
    pub limit: f64,
}

/// A threshold checked against results.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub threshold: String,
    pub passed: bool,
    /// What was measured, in words.
    pub observed: String,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.passed { "passed" } else { "CROSSED" };
        write!(f, "{word}: `{}` ({})", self.threshold, self.observed)
    }
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let fail = |why: &str| format!("threshold `{text}`: {why}");
        let (scope, rest) = match text.rsplit_once(':') {
            Some((s, r)) if !s.trim().is_empty() => (Some(s.trim().to_owned()), r),
            Some(_) => return Err(fail("empty scope before `:`")),
            None => (None, text),
        };
        let at = rest
            .find(['<', '>'])
            .ok_or_else(|| fail("no comparison (<, <=, >, >=)"))?;
        let (metric, cmp) = rest.split_at(at);
        let (op, value) = if let Some(v) = cmp.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = cmp.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = cmp.strip_prefix('<') {
            (Op::Lt, v)
        } else {
            (Op::Gt, &cmp[1..])
        };
        let metric = parse_metric(metric.trim()).map_err(|e| fail(&e))?;
        let value = value.trim();
        let number = |s: &str| -> Result<f64, String> {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| fail(&format!("`{value}` is not a number of 0 or more")))
        };
        let (metric, limit) = match metric {
            Metric::Quantile(_) | Metric::Max | Metric::Mean => {
                let (n, unit) = if let Some(n) = value.strip_suffix("ms") {
                    (n, 1.0)
                } else if let Some(n) = value.strip_suffix("us").or(value.strip_suffix("µs")) {
                    (n, 0.001)
                } else if let Some(n) = value.strip_suffix('s') {
                    (n, 1000.0)
                } else {
                    return Err(fail("a latency needs a unit: us, ms or s (e.g. 50ms)"));
                };
                (metric, number(n)? * unit)
            }
            Metric::Errors => match value.strip_suffix('%') {
                Some(n) => (Metric::ErrorRate, number(n)? / 100.0),
                None => (Metric::Errors, number(value)?),
            },
            Metric::Throughput => (metric, number(value.strip_suffix("/s").unwrap_or(value))?),
            Metric::ErrorRate => unreachable!("not parsed from a name"),
        };
        Ok(Threshold {
            text: text.trim().to_owned(),
            scope,
            metric,
            op,
            limit,
        })
    }
}

fn parse_metric(name: &str) -> Result<Metric, String> {
    match name {
        "max" => return Ok(Metric::Max),
        "mean" | "avg" => return Ok(Metric::Mean),
        "errors" => return Ok(Metric::Errors),
        "throughput" => return Ok(Metric::Throughput),
        _ => {}
    }
    let unknown =
        || format!("unknown metric `{name}` (pNN, p(NN.N), max, mean, errors or throughput)");
    let digits = name.strip_prefix('p').ok_or_else(unknown)?;
    let digits = digits
        .strip_prefix('(')
        .and_then(|d| d.strip_suffix(')'))
        .unwrap_or(digits);
    // p999 is p99.9, p9999 p99.99
    let spelled = if !digits.contains('.') && digits.len() > 2 && digits.starts_with("99") {
        format!("{}.{}", &digits[..2], &digits[2..])
    } else {
        digits.to_owned()
    };
    let pct: f64 = spelled.parse().map_err(|_| unknown())?;
    if !(pct > 0.0 && pct < 100.0) {
        return Err(format!(
            "`{name}`: a percentile is between 0 and 100 (use max for the largest)"
        ));
    }
    Ok(Metric::Quantile(pct / 100.0))
}

impl Threshold {
    /// Checks it; an error when its scope names no step or tool of the run.
    pub fn check(&self, r: &Results) -> Result<Verdict, String> {
        let agg = match &self.scope {
            None => r.total(),
            Some(s) => r.scope(s).ok_or_else(|| {
                format!("threshold `{}`: no step or tool is named `{s}`", self.text)
            })?,
        };
        Ok(self.judge(&agg, r.calls_per_sec(agg.ok)))
    }

    fn judge(&self, agg: &Agg, throughput: f64) -> Verdict {
        let verdict = |passed: bool, observed: String| Verdict {
            threshold: self.text.clone(),
            passed,
            observed,
        };
        let latency = |v: u64| v as f64 / 1000.0;
        let measured = match self.metric {
            Metric::Quantile(_) | Metric::Max | Metric::Mean if agg.hist.is_empty() => {
                return verdict(false, "no ok call to measure".into());
            }
            Metric::Quantile(q) => latency(agg.hist.value_at_quantile(q)),
            Metric::Max => latency(agg.hist.max()),
            Metric::Mean => agg.hist.mean() / 1000.0,
            Metric::ErrorRate => agg.error_rate(),
            Metric::Errors => agg.errors as f64,
            Metric::Throughput => throughput,
        };
        let observed = match self.metric {
            Metric::ErrorRate => format!(
                "{:.3}% ({} of {} calls)",
                measured * 100.0,
                agg.errors,
                agg.ok + agg.errors
            ),
            Metric::Errors => format!("{} errors", agg.errors),
            Metric::Throughput => format!("{measured:.1} ok calls/s"),
            _ => format!("{measured:.3} ms"),
        };
        verdict(self.op.holds(measured, self.limit), observed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::results::new_hist;
    use super::*;

    fn t(s: &str) -> Threshold {
        s.parse().unwrap()
    }

    #[test]
    fn thresholds_parse_as_k6_writes_them() {
        let p = t("p99 < 50ms");
        assert_eq!(
            (p.scope, p.metric, p.op, p.limit),
            (None, Metric::Quantile(0.99), Op::Lt, 50.0)
        );
        let Metric::Quantile(q) = t("p(99.9)<=1s").metric else {
            panic!()
        };
        assert!((q - 0.999).abs() < 1e-12);
        assert_eq!(t("p999 < 1s").limit, 1000.0);
        assert_eq!(t("p95 < 500us").limit, 0.5);
        let e = t("echo: errors < 0.1%");
        assert_eq!(
            (e.scope.as_deref(), e.metric),
            (Some("echo"), Metric::ErrorRate)
        );
        assert!((e.limit - 0.001).abs() < 1e-12);
        assert_eq!(t("errors <= 3").metric, Metric::Errors);
        assert_eq!(t("a:b: throughput >= 100/s").scope.as_deref(), Some("a:b"));
        for (bad, why) in [
            ("p99 50ms", "no comparison"),
            ("p99 < 50", "needs a unit"),
            ("p100 < 5ms", "between 0 and 100"),
            ("latency < 5ms", "unknown metric"),
            ("errors < x%", "not a number"),
            (": p99 < 1ms", "empty scope"),
        ] {
            let err = bad.parse::<Threshold>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_threshold_passes_or_is_crossed_by_what_was_measured() {
        let mut hist = new_hist();
        for v in 1..=100u64 {
            hist.record(v * 1000).unwrap(); // 1 … 100 ms
        }
        let agg = Agg {
            ok: 100,
            errors: 1,
            hist,
        };
        assert!(t("p50 < 51ms").judge(&agg, 10.0).passed);
        assert!(!t("p99 < 50ms").judge(&agg, 10.0).passed);
        // 3 significant digits: 100 ms is recorded as 100.0x ms
        assert!(t("max <= 101ms").judge(&agg, 10.0).passed);
        assert!(!t("max < 99ms").judge(&agg, 10.0).passed);
        assert!(!t("errors < 0.5%").judge(&agg, 10.0).passed);
        assert!(t("errors < 1%").judge(&agg, 10.0).passed);
        assert!(t("throughput > 5").judge(&agg, 10.0).passed);
        let empty = Agg {
            ok: 0,
            errors: 0,
            hist: new_hist(),
        };
        let v = t("p99 < 1s").judge(&empty, 0.0);
        assert!(!v.passed && v.observed.contains("no ok call"));
    }
}
