//! The self-contained HTML report: two inline SVG charts (latency and
//! completed calls per second over the run, the baseline run drawn dashed
//! over this one), then the thresholds, the baseline comparison and the
//! per-step table. No scripts and no external assets: it opens anywhere,
//! offline.

use std::fmt::Write;

use super::results::{Results, render_table};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart: its points (second, value), colour and whether dashed.
struct Series {
    name: &'static str,
    run: &'static str,
    colour: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

fn latency_series(r: &Results, q: f64) -> Vec<(f64, f64)> {
    r.timeline
        .iter()
        .filter(|(_, s)| !s.hist.is_empty())
        .map(|(sec, s)| (*sec as f64, s.hist.value_at_quantile(q) as f64 / 1000.0))
        .collect()
}

fn count_series(r: &Results, errors: bool) -> Vec<(f64, f64)> {
    r.timeline
        .iter()
        .map(|(sec, s)| (*sec as f64, if errors { s.errors } else { s.ok } as f64))
        .collect()
}

const W: f64 = 860.0;
const H: f64 = 300.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// An SVG line chart with axes, ticks and a legend.
fn chart(id: &str, title: &str, unit: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = all.map(|p| p.1).fold(0.0_f64, f64::max).max(0.001) * 1.1;
    let x = |v: f64| LEFT + (W - LEFT - RIGHT) * v / x_max;
    let y = |v: f64| H - BOTTOM - (H - TOP - BOTTOM) * v / y_max;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg id="{id}" class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{t}">
<rect x="0" y="0" width="{W}" height="{H}" fill="white" stroke="#ccc"/>
"##,
        t = esc(title)
    );
    let decimals = if y_max >= 20.0 { 0 } else { 2 };
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{xr}" y2="{py:.1}" stroke="#eee"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{v:.decimals$}</text>"##,
            py = y(v),
            xr = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y(v) + 4.0
        );
    }
    let step = (x_max / 8.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= x_max {
        let _ = writeln!(
            svg,
            r##"<text x="{px:.1}" y="{ty}" font-size="11" text-anchor="middle">{t:.0}</text>"##,
            px = x(t),
            ty = H - BOTTOM + 16.0
        );
        t += step;
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{b}" x2="{xr}" y2="{b}" stroke="#999"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="#999"/>
<text x="{mx}" y="{lb}" font-size="12" text-anchor="middle">seconds into the run</text><text x="{ux}" y="16" font-size="12" text-anchor="end">{u}</text>
"##,
        b = H - BOTTOM,
        xr = W - RIGHT,
        mx = LEFT + (W - LEFT - RIGHT) / 2.0,
        lb = H - 6.0,
        ux = LEFT - 6.0,
        u = esc(unit)
    );
    let mut legend_x = LEFT + 10.0;
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r##"<polyline class="series" data-series="{n}" data-run="{r}" fill="none" stroke="{c}" stroke-width="2.5"{dash} points="{p}"/>
<line x1="{legend_x:.1}" y1="16" x2="{lx2:.1}" y2="16" stroke="{c}" stroke-width="2.5"{dash}/><text x="{lt:.1}" y="20" font-size="12">{label}</text>
"##,
            n = s.name,
            r = s.run,
            c = s.colour,
            p = points.join(" "),
            lx2 = legend_x + 18.0,
            lt = legend_x + 22.0,
            label = esc(&format!("{} ({})", s.name, s.run)),
        );
        legend_x += 150.0;
    }
    if series.iter().all(|s| s.points.is_empty()) {
        let _ = writeln!(
            svg,
            r##"<text x="{cx}" y="{cy}" font-size="14" text-anchor="middle">no completed calls to draw</text>"##,
            cx = W / 2.0,
            cy = H / 2.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The whole page. `baseline`: its file name and results; `verdicts` and
/// `comparison`: the thresholds' and the baseline comparison's lines.
pub fn render_html(
    r: &Results,
    baseline: Option<(&str, &Results)>,
    verdicts: &[String],
    comparison: &str,
) -> String {
    let mut latency = vec![
        Series {
            name: "p50",
            run: "this run",
            colour: "#1f77b4",
            dashed: false,
            points: latency_series(r, 0.5),
        },
        Series {
            name: "p99",
            run: "this run",
            colour: "#d62728",
            dashed: false,
            points: latency_series(r, 0.99),
        },
    ];
    let mut calls = vec![
        Series {
            name: "ok",
            run: "this run",
            colour: "#2ca02c",
            dashed: false,
            points: count_series(r, false),
        },
        Series {
            name: "errors",
            run: "this run",
            colour: "#ff7f0e",
            dashed: false,
            points: count_series(r, true),
        },
    ];
    if let Some((_, b)) = baseline {
        latency.push(Series {
            name: "p50",
            run: "baseline",
            colour: "#17becf",
            dashed: true,
            points: latency_series(b, 0.5),
        });
        latency.push(Series {
            name: "p99",
            run: "baseline",
            colour: "#9467bd",
            dashed: true,
            points: latency_series(b, 0.99),
        });
        calls.push(Series {
            name: "ok",
            run: "baseline",
            colour: "#7f7f7f",
            dashed: true,
            points: count_series(b, false),
        });
    }
    let mut page = String::from(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mcp-client load report</title>
<style>body{font-family:sans-serif;margin:2em;max-width:960px} pre{background:#f6f6f6;padding:1em;overflow-x:auto} .crossed{color:#b00020} .passed{color:#1b5e20}</style></head><body>
<h1>MCP load report</h1>
"#,
    );
    let name = r.config["scenario"].as_str().unwrap_or("");
    let _ = writeln!(
        page,
        "<p>scenario <b>{}</b>, {}, run {}{}</p>",
        esc(name),
        esc(r.config["mode"].as_str().unwrap_or("")),
        esc(r.config["run_id"].as_str().unwrap_or("")),
        baseline
            .map(|(p, _)| format!(", compared with <b>{}</b>", esc(p)))
            .unwrap_or_default()
    );
    let total = r.total();
    let _ = writeln!(
        page,
        "<p>{} calls completed ok, {} with errors, {:.1} ok calls/s over {:.1} s measured</p>",
        total.ok,
        total.errors,
        r.calls_per_sec(total.ok),
        r.measured_seconds
    );
    page.push_str("<h2>Latency over time (ok calls, per second of the run)</h2>\n");
    page.push_str(&chart("latency", "latency over time", "ms", &latency));
    page.push_str("<h2>Completed calls per second</h2>\n");
    page.push_str(&chart(
        "throughput",
        "completed calls per second",
        "calls",
        &calls,
    ));
    if !verdicts.is_empty() {
        page.push_str("<h2>Thresholds</h2><ul>\n");
        for v in verdicts {
            let class = if v.starts_with("passed") {
                "passed"
            } else {
                "crossed"
            };
            let _ = writeln!(page, r#"<li class="{class}">{}</li>"#, esc(v));
        }
        page.push_str("</ul>\n");
    }
    if !comparison.is_empty() {
        let _ = writeln!(
            page,
            "<h2>Against the baseline</h2><pre>{}</pre>",
            esc(comparison)
        );
    }
    let _ = writeln!(
        page,
        "<h2>Per step</h2><pre>{}</pre>",
        esc(&render_table(r))
    );
    let _ = writeln!(
        page,
        "<h2>Configuration</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&r.config).unwrap_or_default())
    );
    page
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::results::Second;
    use super::*;

    fn results(secs: u64) -> Results {
        let mut timeline = BTreeMap::new();
        for s in 0..secs {
            let mut sec = Second {
                ok: 10,
                ..Default::default()
            };
            for v in 1..=10 {
                sec.hist.record(v * 100 * (s + 1)).unwrap();
            }
            timeline.insert(s, sec);
        }
        Results {
            measured_seconds: secs as f64,
            timeline,
            ..Results::new(
                json!({"scenario": "<x>", "mode": "open-loop", "run_id": "r"}),
                vec![],
            )
        }
    }

    #[test]
    fn both_runs_are_drawn_and_text_is_escaped() {
        let page = render_html(
            &results(5),
            Some(("old<1>.json", &results(3))),
            &["CROSSED: `p99 < 1ms`".into()],
            "x",
        );
        assert_eq!(page.matches(r#"class="series""#).count(), 7);
        assert_eq!(page.matches(r#"data-run="baseline""#).count(), 3);
        assert!(page.contains("old&lt;1&gt;.json") && page.contains("&lt;x&gt;"));
        assert!(!page.contains("NaN") && !page.contains("inf"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn an_empty_run_draws_axes_and_says_so() {
        let page = render_html(&results(0), None, &[], "");
        assert_eq!(page.matches(r#"class="series""#).count(), 0);
        assert!(page.contains("no completed calls to draw"));
        assert!(!page.contains("NaN"));
    }
}
