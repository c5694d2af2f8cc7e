//! Where a pool's members come from: a static list, a DNS name re-resolved
//! on a timer (a Kubernetes headless Service), or the processes this gateway
//! supervises. Each source feeds pingora's load balancer through
//! `ServiceDiscovery` and publishes the same membership to the pool's table.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::discovery::ServiceDiscovery;

use super::MemberTable;
use super::supervisor::Supervisor;

pub enum Source {
    Static(Vec<(SocketAddr, u32)>),
    Dns { name: String, port: u16 },
    Managed(Arc<Supervisor>),
}

pub struct PoolDiscovery {
    pub source: Source,
    pub members: Arc<MemberTable>,
}

impl PoolDiscovery {
    async fn addrs(&self) -> pingora::Result<Vec<(SocketAddr, u32)>> {
        Ok(match &self.source {
            Source::Static(list) => list.clone(),
            Source::Dns { name, port } => {
                match tokio::net::lookup_host((name.as_str(), *port)).await {
                    Ok(found) => found.map(|a| (a, 1)).collect(),
                    Err(e) => {
                        tracing::warn!(%name, error = %e, "DNS discovery failed; keeping the last members");
                        return pingora::Error::e_explain(
                            pingora::ErrorType::InternalError,
                            "dns discovery failed",
                        );
                    }
                }
            }
            Source::Managed(supervisor) => supervisor.addrs().into_iter().map(|a| (a, 1)).collect(),
        })
    }
}

#[async_trait]
impl ServiceDiscovery for PoolDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let addrs = self.addrs().await?;
        let members = self.members.sync(&addrs);
        let set = members.list.iter().map(|m| m.backend.clone()).collect();
        Ok((set, HashMap::new()))
    }
}

/// Parses `host:port` entries, resolving names once (static lists).
pub fn resolve_static(entries: &[String]) -> anyhow::Result<Vec<(SocketAddr, u32)>> {
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
            out.push((a, weight));
        }
    }
    Ok(out)
}
