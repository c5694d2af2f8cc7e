//! Where a pool's members come from: a static list, a DNS name re-resolved
//! on a timer (a Kubernetes headless Service), or the processes this gateway
//! supervises. Each source feeds pingora's load balancer through
//! `ServiceDiscovery` and publishes the same membership to the pool's table.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::discovery::ServiceDiscovery;

use super::supervisor::Supervisor;
use super::{Member, MemberTable};

pub enum Source {
    Static(Vec<Member>),
    Dns { name: String, port: u16 },
    Managed(Arc<Supervisor>),
}

pub struct PoolDiscovery {
    pub source: Source,
    pub members: Arc<MemberTable>,
}

impl PoolDiscovery {
    async fn members(&self) -> pingora::Result<Vec<Member>> {
        Ok(match &self.source {
            Source::Static(list) => list.clone(),
            Source::Dns { name, port } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(found) => found.map(|a| Member::at(a, 1)).collect(),
                    Err(e) => {
                        tracing::warn!(%name, error = %e, "DNS discovery failed; keeping the last members");
                        return pingora::Error::e_explain(
                            pingora::ErrorType::InternalError,
                            "dns discovery failed",
                        );
                    }
                }
            }
            Source::Managed(supervisor) => supervisor.members(),
        })
    }
}

#[async_trait]
impl ServiceDiscovery for PoolDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let found = self.members().await?;
        let members = self.members.sync(&found);
        let set = members.list.iter().map(|m| m.backend.clone()).collect();
        Ok((set, HashMap::new()))
    }
}

/// Parses `host:port` entries, resolving names once (static lists).
pub fn resolve_static(entries: &[String]) -> anyhow::Result<Vec<Member>> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for entry in entries {
        let (addr, weight) = match entry.split_once('#') {
            Some((a, w)) => (a, w.parse::<u32>().unwrap_or(1)),
            None => (entry.as_str(), 1),
        };
        let resolved = addr
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("backend '{addr}': {e}"))?;
        for a in resolved {
            out.push(Member::at(a, weight));
        }
    }
    Ok(out)
}
