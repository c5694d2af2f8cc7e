//! Backend pools: who can take a session, and which one should.
//!
//! pingora's `LoadBalancer` owns discovery and active health checks (a GET
//! of each backend's `/health`; a draining backend answers 503 and so stops
//! being ready). On top of it each pool keeps a small table of per-backend
//! state, swapped whole by discovery (an `ArcSwap`, so the request path never
//! takes a lock): outstanding requests for least-loaded choice, a passive
//! ejection deadline after a refused connection, and an operator's "disabled"
//! switch. The table holds exactly the current members: bounded by the pool.

pub mod discovery;
pub mod health;
pub mod supervisor;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};

use crate::metrics::{Histogram, ToolLatencies};

/// One member as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable identity: the managed slot ("registry-0"), else the address.
    /// Sessions are pinned to it, so a slot restarted on a new port keeps
    /// its name.
    pub id: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

impl Member {
    /// A member known only by its address (static lists, DNS).
    pub fn at(addr: SocketAddr, weight: u32) -> Self {
        Self {
            id: addr.to_string(),
            addr,
            weight,
        }
    }
}

/// Departed members kept routable for the sessions they hold (at most this many …
const MAX_DEPARTED: usize = 64;
/// … for at most this long).
const DEPARTED_FOR_MS: u64 = 3600 * 1000;

/// What the gateway knows about one backend beyond pingora's health.
pub struct BackendState {
    /// Stable identity (see [`Member::id`]).
    pub id: String,
    pub addr: SocketAddr,
    pub backend: Backend,
    pub weight: u32,
    inflight: AtomicI64,
    /// SSE streams from this backend being relayed now.
    streams: AtomicI64,
    sessions: AtomicU64,
    requests: AtomicU64,
    ejected_until_ms: AtomicU64,
    disabled: AtomicBool,
    /// The name the backend gives itself (for operators; never sent to clients).
    instance: ArcSwapOption<String>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl BackendState {
    pub fn new(member: &Member) -> Self {
        let (addr, weight) = (member.addr, member.weight);
        let backend = Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
            weight: weight.max(1) as usize,
            ext: Default::default(),
        };
        Self {
            id: member.id.clone(),
            addr,
            backend,
            weight: weight.max(1),
            inflight: AtomicI64::new(0),
            streams: AtomicI64::new(0),
            sessions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
            instance: ArcSwapOption::empty(),
        }
    }

    pub fn inflight(&self) -> i64 {
        self.inflight.load(Ordering::Relaxed)
    }
    pub fn sessions_opened(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    pub fn session_opened(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }
    /// Records the backend's own name when it differs from the last one seen.
    pub fn note_instance(&self, name: &str) {
        if self.instance.load().as_deref().map(String::as_str) != Some(name) {
            self.instance.store(Some(Arc::new(name.to_owned())));
        }
    }

    pub fn instance(&self) -> Option<Arc<String>> {
        self.instance.load_full()
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }
    pub fn set_disabled(&self, disabled: bool) {
        self.disabled.store(disabled, Ordering::Relaxed);
    }
    pub fn eject(&self, for_: Duration) {
        self.ejected_until_ms
            .store(now_ms() + for_.as_millis() as u64, Ordering::Relaxed);
    }
    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    /// Counts a request as outstanding until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> LoadGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        LoadGuard(Arc::clone(self))
    }

    /// Counts an SSE stream from this backend as open until the guard drops.
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(Arc::clone(self))
    }

    pub fn open_streams(&self) -> i64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Load per unit of weight, scaled to stay an integer.
    fn load(&self) -> i64 {
        self.inflight() * 1000 / self.weight as i64
    }
}

/// Counts one open SSE stream on a backend until dropped.
pub struct StreamGuard(Arc<BackendState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one outstanding request on a backend until dropped.
pub struct LoadGuard(Arc<BackendState>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The current members of a pool, replaced whole on every membership change,
/// and the members that left recently: no new work goes to those, but the
/// sessions they hold still reach them until the sessions move or the
/// member stops answering (bounded: [`MAX_DEPARTED`], [`DEPARTED_FOR_MS`]).
#[derive(Default)]
pub struct Members {
    pub list: Vec<Arc<BackendState>>,
    by_id: HashMap<String, Arc<BackendState>>,
    by_addr: HashMap<SocketAddr, Arc<BackendState>>,
    departed: Vec<(Arc<BackendState>, u64)>,
}

impl Members {
    pub fn departed(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.departed.iter().map(|(b, _)| b)
    }
}

#[derive(Default)]
pub struct MemberTable(ArcSwap<Members>);

impl MemberTable {
    pub fn load(&self) -> arc_swap::Guard<Arc<Members>> {
        self.0.load()
    }

    /// Publishes `members` as the membership, keeping the state of those
    /// that stay (same identity, address and weight).
    pub fn sync(&self, members: &[Member]) -> Arc<Members> {
        let old = self.0.load_full();
        let now = now_ms();
        let mut next = Members::default();
        for m in members {
            if next.by_id.contains_key(&m.id) {
                continue;
            }
            let state = match old.by_id.get(&m.id) {
                Some(s) if s.addr == m.addr && s.weight == m.weight.max(1) => Arc::clone(s),
                _ => Arc::new(BackendState::new(m)),
            };
            next.by_id.insert(m.id.clone(), Arc::clone(&state));
            next.by_addr.insert(m.addr, Arc::clone(&state));
            next.list.push(state);
        }
        // Who left (and who had left before) stays reachable for its sessions, bounded.
        let left = old
            .list
            .iter()
            .filter(|s| !next.by_id.contains_key(&s.id))
            .map(|s| (Arc::clone(s), now));
        let earlier = old
            .departed
            .iter()
            .filter(|(s, at)| {
                now.saturating_sub(*at) < DEPARTED_FOR_MS && !next.by_id.contains_key(&s.id)
            })
            .map(|(s, at)| (Arc::clone(s), *at));
        let mut departed: Vec<_> = left.chain(earlier).collect();
        departed.truncate(MAX_DEPARTED);
        for (s, _) in &departed {
            next.by_id
                .entry(s.id.clone())
                .or_insert_with(|| Arc::clone(s));
        }
        next.departed = departed;
        let next = Arc::new(next);
        self.0.store(Arc::clone(&next));
        next
    }
}

pub struct Pool {
    pub index: u16,
    pub name: String,
    /// Route prefix without a trailing slash ("" for the root).
    pub prefix: String,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub members: Arc<MemberTable>,
    pub eject_for: Duration,
    /// The supervisor of a managed pool (for rollouts).
    pub supervisor: Option<Arc<supervisor::Supervisor>>,
    /// Time to a backend's response header (`mcp_gateway_upstream_duration_seconds`).
    pub upstream_seconds: Histogram,
    /// Whole tool calls, by tool (`mcp_gateway_tool_call_duration_seconds`).
    pub tool_seconds: ToolLatencies,
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = now_ms() ^ ((std::process::id() as u64) << 32);
    let local = &t as *const u64 as u64;
    (t ^ local.rotate_left(17)) | 1
}

/// xorshift64*: cheap per-thread randomness for picking two candidates.
fn random_below(n: usize) -> usize {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    })
}

impl Pool {
    /// Whether a backend may take new work: healthy per pingora, not
    /// draining, not ejected after a failure, not disabled by an operator.
    pub fn accepts_new(&self, state: &BackendState) -> bool {
        !state.is_disabled() && !state.is_ejected() && self.lb.backends().ready(&state.backend)
    }

    /// Least-loaded choice by the power of two random choices, weighted.
    pub fn pick(&self) -> Option<Arc<BackendState>> {
        self.pick_except(None)
    }

    /// As [`Pool::pick`], avoiding `except` (a backend that just failed) when
    /// there is any other choice.
    pub fn pick_except(&self, except: Option<&str>) -> Option<Arc<BackendState>> {
        let members = self.members.load();
        let avoid = |s: &BackendState| except.is_some_and(|id| id == s.id);
        if except.is_some() && members.list.len() > 1 {
            let others: Vec<_> = members.list.iter().filter(|s| !avoid(s)).cloned().collect();
            if others.iter().any(|s| self.accepts_new(s)) {
                return self.pick_from(&others);
            }
        }
        self.pick_from(&members.list)
    }

    fn pick_from(&self, list: &[Arc<BackendState>]) -> Option<Arc<BackendState>> {
        match list.len() {
            0 => return None,
            1 => return list.first().filter(|s| self.accepts_new(s)).cloned(),
            _ => {}
        }
        // Two distinct candidates (with two members that is both: plain least-loaded).
        let i = random_below(list.len());
        let j = (i + 1 + random_below(list.len() - 1)) % list.len();
        let (a, b) = (&list[i], &list[j]);
        let choice = match (self.accepts_new(a), self.accepts_new(b)) {
            (true, true) => Some(if b.load() < a.load() { b } else { a }),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => None,
        };
        if let Some(c) = choice {
            return Some(Arc::clone(c));
        }
        // Both samples were unusable: scan for the least loaded that is.
        list.iter()
            .filter(|s| self.accepts_new(s))
            .min_by_key(|s| s.load())
            .cloned()
    }

    /// The member with this identity: a current one, or one that left
    /// recently (it may still hold sessions).
    pub fn member(&self, id: &str) -> Option<Arc<BackendState>> {
        self.members.load().by_id.get(id).cloned()
    }

    /// The current member at `addr` (for the admin API).
    pub fn member_at(&self, addr: &SocketAddr) -> Option<Arc<BackendState>> {
        self.members.load().by_addr.get(addr).cloned()
    }

    /// Whether `path` is under this pool's prefix; returns the rest.
    pub fn strip<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_keeps_state_of_members_that_stay_and_remembers_who_left() {
        let table = MemberTable::default();
        let a = Member::at("127.0.0.1:1".parse().unwrap(), 1);
        let b = Member::at("127.0.0.1:2".parse().unwrap(), 1);
        let first = table.sync(&[a.clone(), b.clone()]);
        first.list[0].set_disabled(true);
        let second = table.sync(std::slice::from_ref(&a));
        assert_eq!(second.list.len(), 1);
        assert!(second.list[0].is_disabled(), "state survived the resync");
        assert!(
            !second.by_addr.contains_key(&b.addr),
            "no new work for who left"
        );
        assert!(
            second.by_id.contains_key(&b.id),
            "but its sessions still find it"
        );
        let third = table.sync(&[a.clone(), b.clone()]);
        assert_eq!(third.departed().count(), 0, "back as a member");
    }

    #[test]
    fn a_restarted_slot_keeps_its_identity_on_a_new_address() {
        let table = MemberTable::default();
        let old = Member {
            id: "registry-0".into(),
            addr: "127.0.0.1:1000".parse().unwrap(),
            weight: 1,
        };
        table.sync(std::slice::from_ref(&old));
        let new = Member {
            addr: "127.0.0.1:2000".parse().unwrap(),
            ..old
        };
        let now = table.sync(std::slice::from_ref(&new));
        assert_eq!(now.by_id["registry-0"].addr, new.addr);
        assert_eq!(now.list.len(), 1);
    }

    #[test]
    fn departed_members_are_bounded() {
        let table = MemberTable::default();
        for i in 0..(MAX_DEPARTED as u16 + 10) {
            table.sync(&[Member::at(SocketAddr::from(([127, 0, 0, 1], 1000 + i)), 1)]);
        }
        assert!(table.load().departed().count() <= MAX_DEPARTED);
    }

    #[test]
    fn random_below_stays_in_range() {
        for n in 1..20 {
            for _ in 0..100 {
                assert!(random_below(n) < n);
            }
        }
    }
}
