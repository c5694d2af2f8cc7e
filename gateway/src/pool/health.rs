//! Active health checks for servers we did not write. Besides pingora's HTTP
//! GET of a health path (the registry's `/readyz`), a pool may check that a
//! backend speaks MCP — `initialize` answered with a result, the probe
//! session then ended with DELETE — or only that it accepts TCP connections.
//! Whichever it is runs inside [`Observed`], which tells the pool's member
//! state every verdict (a pass ends an ejection for a failed connection).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::lb::Backend;
use pingora::lb::health_check::HealthCheck;
use pingora::{Error, ErrorType, Result};

use super::revision;
use super::{MemberTable, now_ms};
use crate::upstream::{self, Forwarded, Outgoing, SESSION_HEADER, Upstream};

/// A pool's health check (any kind), reporting each verdict to the member
/// it is about: a pass ends an ejection for a failed connection (or for
/// draining) at once, and a pass after a failure starts slow start.
/// pingora's own health state, which the check flips as before, is
/// unchanged.
pub struct Observed {
    check: Box<dyn HealthCheck + Send + Sync>,
    members: Arc<MemberTable>,
    /// Asks a healthy backend what it speaks when that is unknown or stale
    /// ([`revision`]); `None` for a stdio pool (a probe would start a process).
    revisions: Option<Upstream>,
}

impl Observed {
    pub fn new(
        check: Box<dyn HealthCheck + Send + Sync>,
        members: Arc<MemberTable>,
        revisions: Option<Duration>,
    ) -> Self {
        Self {
            check,
            members,
            revisions: revisions.map(|t| Upstream::new(t, t)),
        }
    }
}

#[async_trait]
impl HealthCheck for Observed {
    async fn check(&self, target: &Backend) -> Result<()> {
        let verdict = self.check.check(target).await;
        if let Some(addr) = target.addr.as_inet()
            && let Some(member) = self.members.load().by_addr.get(addr)
        {
            let now = now_ms();
            member.vitals.health_checked(now, verdict.is_ok());
            if let Some(upstream) = &self.revisions
                && verdict.is_ok()
                && member.revision_stale(now)
            {
                match revision::learn(upstream, member.addr, now).await {
                    Ok(rev) => {
                        let before = member.revision();
                        if before.is_none_or(|b| b.versions != rev.versions) {
                            tracing::info!(backend = %member.id, versions = ?rev.versions, stateless = rev.stateless, "backend revision learned");
                        }
                        member.set_revision(Some(rev));
                    }
                    Err(why) => {
                        tracing::debug!(backend = %member.id, %why, "backend revision not learned")
                    }
                }
            }
        }
        verdict
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if !healthy
            && let Some(addr) = target.addr.as_inet()
            && let Some(member) = self.members.load().by_addr.get(addr)
        {
            // What comes back may be another build: ask it again then.
            member.set_revision(None);
        }
        self.check.health_status_change(target, healthy).await
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.check.backend_summary(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.check.health_threshold(success)
    }
}

/// `initialize` on `/mcp`, as a client would; healthy when the answer is a
/// JSON-RPC result (a draining or broken server answers otherwise).
pub struct McpHealthCheck {
    upstream: Upstream,
}

const PROBE: &str = r#"{"jsonrpc":"2.0","id":"health","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"mcp-gateway-health","version":"1"}}}"#;

impl McpHealthCheck {
    pub fn new(timeout: Duration) -> Self {
        Self {
            upstream: Upstream::new(timeout, timeout),
        }
    }
}

fn failed(why: String) -> Box<Error> {
    Error::explain(ErrorType::CustomCode("mcp health check", 0), why)
}

/// Largest `initialize` answer a check reads.
const MAX_ANSWER: usize = 256 * 1024;

/// Whether an answer (a JSON body, or an event stream) holds a JSON-RPC
/// result among its messages.
fn has_result(headers: &http::HeaderMap, body: &[u8]) -> bool {
    upstream::messages_of(headers, body, MAX_ANSWER)
        .iter()
        .any(|m| {
            serde_json::from_str::<serde_json::Value>(m)
                .is_ok_and(|v| v.get("result").is_some_and(|r| r.is_object()))
        })
}

#[async_trait]
impl HealthCheck for McpHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let addr = *target
            .addr
            .as_inet()
            .ok_or_else(|| failed("not an IP backend".into()))?;
        let fwd = Forwarded::default();
        let (parts, mut frames) = self
            .upstream
            .send(
                addr,
                Outgoing {
                    accept: Some("application/json, text/event-stream"),
                    content_type: Some("application/json"),
                    body: Bytes::from_static(PROBE.as_bytes()),
                    ..Outgoing::own(http::Method::POST, "/mcp", &fwd)
                },
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        let body = frames
            .read_all(MAX_ANSWER)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(session) = session {
            // End the probe's session so checks do not pile sessions up.
            if let Ok((_, mut rest)) = self
                .upstream
                .send(
                    addr,
                    Outgoing {
                        session: Some(&session),
                        protocol_version: Some("2025-06-18"),
                        ..Outgoing::own(http::Method::DELETE, "/mcp", &fwd)
                    },
                )
                .await
            {
                let _ = rest.read_all(64 * 1024).await;
            }
        }
        if parts.status != http::StatusCode::OK || !has_result(&parts.headers, &body) {
            return Err(failed(format!(
                "initialize answered {} without a result",
                parts.status
            )));
        }
        Ok(())
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::has_result;

    #[test]
    fn results_are_found_in_json_and_in_sse() {
        let json = http::HeaderMap::new();
        let mut sse = http::HeaderMap::new();
        sse.insert("content-type", "text/event-stream".parse().unwrap());
        assert!(has_result(
            &json,
            br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"x"}}"#
        ));
        assert!(has_result(
            &sse,
            b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"
        ));
        assert!(!has_result(
            &json,
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"draining"}}"#
        ));
        assert!(!has_result(&json, b"<html>Bad Request</html>"));
        assert!(!has_result(&sse, b"data: {\"result\": 3}\n\n"));
    }
}
