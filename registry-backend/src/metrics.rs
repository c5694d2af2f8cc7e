//! The backend's own `/metrics` (Prometheus text): tool call latency and
//! failures by tool, MCP sessions open, requests in flight, draining. A
//! fixed table per tool (the eight tools are known), relaxed atomics only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use telemetry::histogram::{Histogram, type_line};

/// The tools, in the order of their series.
pub const TOOLS: [&str; 8] = [
    "register_agent",
    "list_agents",
    "search_agents",
    "get_agent",
    "update_agent",
    "delete_agent",
    "get_agent_facts",
    "health_check",
];

#[derive(Default)]
pub struct ToolMetrics {
    seconds: [Histogram; TOOLS.len()],
    errors: [AtomicU64; TOOLS.len()],
}

impl ToolMetrics {
    /// Records one call of `tool` (one of [`TOOLS`]); `ok`: it succeeded.
    pub fn observe(&self, tool: &str, ok: bool, took: Duration) {
        if let Some(i) = TOOLS.iter().position(|t| *t == tool) {
            self.seconds[i].observe(took);
            if !ok {
                self.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        type_line("registry_tool_call_duration_seconds", out);
        for (i, tool) in TOOLS.iter().enumerate() {
            self.seconds[i].render_series(
                "registry_tool_call_duration_seconds",
                &format!("tool=\"{tool}\""),
                out,
            );
        }
        let _ = writeln!(out, "# TYPE registry_tool_errors_total counter");
        for (i, tool) in TOOLS.iter().enumerate() {
            let _ = writeln!(
                out,
                "registry_tool_errors_total{{tool=\"{tool}\"}} {}",
                self.errors[i].load(Ordering::Relaxed)
            );
        }
    }
}

/// One gauge in Prometheus text format.
pub fn gauge(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_errors_are_counted_per_tool_and_unknown_tools_ignored() {
        let m = ToolMetrics::default();
        m.observe("get_agent", true, Duration::from_millis(3));
        m.observe("get_agent", false, Duration::from_millis(3));
        m.observe("no_such_tool", false, Duration::from_millis(3));
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("registry_tool_call_duration_seconds_count{tool=\"get_agent\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("registry_tool_errors_total{tool=\"get_agent\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("registry_tool_errors_total{tool=\"list_agents\"} 0"),
            "{out}"
        );
        assert!(!out.contains("no_such_tool"));
    }
}
