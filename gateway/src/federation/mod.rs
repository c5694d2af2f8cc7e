//! Virtual servers: one route whose client sessions see the tools,
//! prompts and resources of several pools (its members) at once. A
//! federated session is one backend session per member behind one sealed
//! client id (`token.rs`, kind "federated"); every message to a member is
//! the session layer's exchange (`session::exchange`), so each member's
//! session moves on its own when its backend is lost while the others are
//! untouched. `serve.rs` answers what the gateway answers itself
//! (`initialize`, `ping`, the merged lists) and routes the rest by name or
//! URI; `names.rs` maps names; `catalog.rs` keeps the members' lists.

pub mod catalog;
pub mod names;
pub mod serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::config::Config;
use crate::metrics::ToolLatencies;
use crate::policy::edge::{self, Endpoint};
use crate::pool::Pool;
use crate::reject::Reject;
use crate::session::{Binding, Sessions};
use catalog::{Catalog, Kind};
use names::Names;

/// How often members' availability is looked at.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Changes of membership queued for a slow stream before it skips some.
const CHANGES: usize = 16;

/// The virtual servers of the configuration.
#[derive(Default)]
pub struct Federation {
    pub servers: Vec<Arc<Virtual>>,
}

impl Federation {
    /// Builds the virtual servers over `pools` (indexed as configured);
    /// their route indices follow the pools'.
    pub fn new(config: &Config, pools: &[Arc<Pool>]) -> Self {
        let servers = config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let members: Vec<Member> = s
                    .members
                    .iter()
                    .filter_map(|m| {
                        let pool = pools.iter().find(|p| p.name == m.pool)?;
                        Some(Member {
                            pool: Arc::clone(pool),
                            names: Names::new(m),
                            up: AtomicBool::new(true),
                        })
                    })
                    .collect();
                let mut order: Vec<usize> = (0..members.len()).collect();
                // Longest prefix first; the member without one last.
                order.sort_by_key(|&i| std::cmp::Reverse(members[i].names.prefix.len()));
                let (changes, _) = broadcast::channel(CHANGES);
                Arc::new(Virtual {
                    index: (pools.len() + i) as u16,
                    name: s.name.clone(),
                    prefix: s.route.trim_end_matches('/').to_owned(),
                    catalog: Catalog::new(members.len(), s.list_ttl),
                    tool_seconds: (0..members.len())
                        .map(|_| ToolLatencies::default())
                        .collect(),
                    members,
                    order,
                    changes,
                })
            })
            .collect();
        Self { servers }
    }

    /// The virtual server and endpoint a path names, if any.
    pub fn route(&self, path: &str) -> Option<(Arc<Virtual>, Endpoint)> {
        self.servers.iter().find_map(|vs| {
            let rest = path.strip_prefix(vs.prefix.as_str())?;
            let rest = (rest.is_empty() || rest.starts_with('/')).then_some(rest)?;
            edge::endpoint(rest).map(|e| (Arc::clone(vs), e))
        })
    }
}

/// One virtual server.
pub struct Virtual {
    /// Its route index (after the pools'): sealed into its session ids,
    /// and the index of its credentials mode.
    pub index: u16,
    pub name: String,
    /// Route prefix without a trailing slash.
    pub prefix: String,
    pub members: Vec<Member>,
    /// Member indices in name precedence: longest prefix first, the member
    /// without a prefix last.
    pub order: Vec<usize>,
    pub catalog: Catalog,
    /// Tool call latencies per member, by the names clients see.
    pub tool_seconds: Vec<ToolLatencies>,
    /// A member left or came back (its index, whether it is up).
    changes: broadcast::Sender<(usize, bool)>,
}

/// One member of a virtual server.
pub struct Member {
    pub pool: Arc<Pool>,
    pub names: Names,
    /// Some backend of its pool took new work when last looked at (every
    /// [`WATCH_EVERY`]): a change is announced to open streams.
    up: AtomicBool,
}

impl Member {
    /// Whether any backend of the pool takes new work now (the watcher's
    /// flag may be a second behind).
    pub fn available(&self) -> bool {
        let members = self.pool.members.load();
        members.list.iter().any(|b| self.pool.accepts_new(b))
    }

    /// How the member is named in errors and logs.
    pub fn label(&self) -> &str {
        &self.pool.name
    }
}

/// What a route serves: a pool, or a virtual server over pools.
pub enum Service {
    Pool(Arc<Pool>),
    Virtual(Arc<Virtual>),
}

impl Service {
    /// Its route index (credentials mode, sealed ids, legacy sessions).
    pub fn index(&self) -> u16 {
        match self {
            Service::Pool(p) => p.index,
            Service::Virtual(v) => v.index,
        }
    }

    /// Its name, as rules name what a principal may reach.
    pub fn name(&self) -> &str {
        match self {
            Service::Pool(p) => &p.name,
            Service::Virtual(v) => &v.name,
        }
    }

    /// Its route prefix.
    pub fn prefix(&self) -> &str {
        match self {
            Service::Pool(p) => &p.prefix,
            Service::Virtual(v) => &v.prefix,
        }
    }
}

/// A client's federated session, opened: one binding per member.
pub struct Opened {
    pub nonce: [u8; 12],
    pub members: Vec<Binding>,
}

impl Virtual {
    /// Opens a client's id of this virtual server's session.
    pub fn open(
        &self,
        sessions: &Sessions,
        token: &str,
        principal: &str,
    ) -> Result<Opened, Reject> {
        let pools = self.members.iter().map(|m| &m.pool);
        let (nonce, members) = sessions.open_members(self.index, pools, token, principal)?;
        Ok(Opened { nonce, members })
    }

    /// The member and its own name for a tool or prompt name clients see,
    /// given the members' lists (`listed`, in precedence order): the first
    /// member that lists it; else a member that could not list (it is down)
    /// whose names take it, so that the error names it; else none.
    pub fn owner(
        &self,
        shown: &str,
        listed: &[(usize, Arc<catalog::List>)],
    ) -> Option<(usize, String)> {
        let i = match listed.iter().find(|(_, l)| l.has(shown)) {
            Some((i, _)) => *i,
            None => *self.order.iter().find(|&&i| {
                !listed.iter().any(|(j, _)| *j == i) && self.members[i].names.own(shown).is_some()
            })?,
        };
        let own = self.members[i].names.own(shown)?.into_owned();
        Some((i, own))
    }

    /// Whether a tool name clients send is one a member listed (the
    /// per-tool limits keep counters only for listed tools).
    pub fn lists_tool(&self, sessions: &Sessions, shown: &str) -> bool {
        self.order.iter().any(|&i| {
            let m = &self.members[i];
            m.names
                .own(shown)
                .is_some_and(|own| sessions.hints(&m.pool).lists(&own))
        })
    }

    /// A message a member sent: a `list_changed` drops its kept lists.
    pub fn noticed(&self, member: usize, message: &str) {
        if !message.contains("list_changed") {
            return;
        }
        #[derive(serde::Deserialize)]
        struct Note<'a> {
            #[serde(borrow)]
            method: &'a str,
        }
        if let Ok(note) = serde_json::from_str::<Note<'_>>(message) {
            for &kind in Kind::changed_by(note.method) {
                self.catalog.invalidate(member, kind);
            }
        }
    }

    /// Changes of membership, for open client streams.
    pub fn subscribe(&self) -> broadcast::Receiver<(usize, bool)> {
        self.changes.subscribe()
    }

    /// Looks at each member's availability; a change drops the member's
    /// kept lists and is told to open streams.
    fn watch(&self) {
        for (i, m) in self.members.iter().enumerate() {
            let now = m.available();
            if m.up.swap(now, Ordering::Relaxed) != now {
                tracing::info!(server = %self.name, member = %m.label(), up = now, "virtual server member availability changed");
                for kind in Kind::ALL {
                    self.catalog.invalidate(i, kind);
                }
                let _ = self.changes.send((i, now));
            }
        }
    }
}

/// The background service that watches members' availability.
pub struct Watcher(pub Arc<Federation>);

#[async_trait]
impl pingora::services::background::BackgroundService for Watcher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        if self.0.servers.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            for vs in &self.0.servers {
                vs.watch();
            }
        }
    }
}
