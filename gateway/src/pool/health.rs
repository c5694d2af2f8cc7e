//! Active health checks for servers we did not write. Besides pingora's HTTP
//! GET of a health path (the registry's `/readyz`), a pool may check that a
//! backend speaks MCP — `initialize` answered with a result, the probe
//! session then ended with DELETE — or only that it accepts TCP connections.
//! Whichever it is runs inside [`Observed`], which tells the pool's member
//! state every verdict (a pass ends an ejection for a failed connection).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::health_check::HealthCheck;
use pingora::{Error, ErrorType, Result};

use super::revision;
use super::{MemberTable, now_ms};
use crate::upstream::{Forwarded, Upstream};

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
                        tracing::debug!(backend = %member.id, %why, "backend revision not learned");
                        member.set_revision(Some(revision::Revision::unknown(now)));
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

/// `initialize` on `/mcp`, as a client would (the probe session then
/// ended), else `server/discover` for a server of the stateless revision
/// alone; healthy when either is answered with a JSON-RPC result (a
/// draining or broken server answers otherwise).
pub struct McpHealthCheck {
    upstream: Upstream,
}

/// The revision the check's `initialize` offers.
const CHECKED: &str = "2025-06-18";

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

#[async_trait]
impl HealthCheck for McpHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        let addr = *target
            .addr
            .as_inet()
            .ok_or_else(|| failed("not an IP backend".into()))?;
        let (up, fwd) = (&self.upstream, Forwarded::default());
        let init = revision::initialize_body("health", CHECKED);
        let (result, session) = revision::probe(up, addr, &fwd, init, None, None)
            .await
            .map_err(failed)?;
        if let Some(session) = session {
            revision::end_probe(up, addr, &fwd, &session, Some(CHECKED)).await;
        }
        if result.is_some() {
            return Ok(());
        }
        let discover = revision::discover_body("health");
        let mcp = Some(("server/discover", None));
        let (result, _) = revision::probe(up, addr, &fwd, discover, Some(revision::STATELESS), mcp)
            .await
            .map_err(failed)?;
        result.map(|_| ()).ok_or_else(|| {
            failed("neither initialize nor server/discover was answered with a result".into())
        })
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}
