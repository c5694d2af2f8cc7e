//! Backend pools: who can take a session, and which one should.
//!
//! pingora's `LoadBalancer` owns discovery and active health checks (a GET
//! of each backend's health path, an MCP `initialize`, or a TCP connect; a
//! draining backend fails them). On top of it each pool keeps a small table
//! of per-backend state, swapped whole by discovery (an `ArcSwap`, so the
//! request path never takes a lock): outstanding requests for least-loaded
//! choice, what the exchanges of clients showed ([`outlier`]: failures in a
//! row, ejection, slow start), and an operator's "disabled" switch. The table
//! holds exactly the current members (and a bounded few that left).
//!
//! Choice ([`Pool::pick_except`]): the power of two random choices among the
//! backends that accept new work (healthy, not ejected, not disabled), a
//! returning backend in slow start taking its share; when none does, the
//! pool is in panic and the least recently failed backend is tried anyway
//! (one whose connection failed in the last [`PANIC_RETRY_GAP_MS`] is left
//! alone), so a pool whose every member looks down still reaches the first
//! that is back.

pub mod discovery;
pub mod health;
pub mod outlier;
pub mod revision;
pub mod supervisor;

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};

use crate::metrics::{Histogram, ToolLatencies};
use outlier::{Outcome, Policy, Reason, Vitals};

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
    /// Failures, ejection and returns ([`outlier`]).
    pub vitals: Vitals,
    disabled: AtomicBool,
    /// The name the backend gives itself (for operators; never sent to clients).
    instance: ArcSwapOption<String>,
    /// What it speaks, once a probe learned it ([`revision`]).
    revision: ArcSwapOption<revision::Revision>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
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
            vitals: Vitals::default(),
            disabled: AtomicBool::new(false),
            instance: ArcSwapOption::empty(),
            revision: ArcSwapOption::empty(),
        }
    }

    /// What it speaks, if learned.
    pub fn revision(&self) -> Option<Arc<revision::Revision>> {
        self.revision.load_full()
    }

    /// Whether its revision is unknown or older than [`revision::STALE_MS`].
    pub fn revision_stale(&self, now_ms: u64) -> bool {
        self.revision
            .load()
            .as_ref()
            .is_none_or(|r| now_ms.saturating_sub(r.learned_ms) >= revision::STALE_MS)
    }

    pub fn set_revision(&self, rev: Option<revision::Revision>) {
        self.revision.store(rev.map(Arc::new));
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
    pub fn is_ejected(&self) -> bool {
        self.vitals.is_ejected(now_ms())
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
        // Who joins a pool already serving starts slowly; the first members do not.
        let serving = !old.list.is_empty();
        let mut next = Members::default();
        for m in members {
            if next.by_id.contains_key(&m.id) {
                continue;
            }
            let state = match old.by_id.get(&m.id) {
                Some(s) if s.addr == m.addr && s.weight == m.weight.max(1) => Arc::clone(s),
                _ => {
                    let state = BackendState::new(m);
                    if serving {
                        state.vitals.joined(now);
                    }
                    Arc::new(state)
                }
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

/// Whether a connection to `s` failed in the last [`PANIC_RETRY_GAP_MS`].
fn failed_just_now(s: &BackendState, now: u64) -> bool {
    let at = s.vitals.refused_ms();
    at != 0 && now.saturating_sub(at) < PANIC_RETRY_GAP_MS
}

/// A backend whose connection failed this recently is not tried in panic: a
/// dead one is then tried a few times a second at most, not by every
/// request, and one request does not try it twice. (One that answered
/// badly or cut an answer is listening: it may be tried again.)
pub const PANIC_RETRY_GAP_MS: u64 = 250;

/// pingora's load balancer, used for what it does well — discovery and
/// active health checks — and never to pick: its selection (the type
/// parameter pingora requires) is never called; [`Pool::pick_except`]
/// picks (P2C, slow start, panic routing).
pub type Checked = LoadBalancer<RoundRobin>;

pub struct Pool {
    pub index: u16,
    pub name: String,
    /// Route prefix without a trailing slash ("" for the root).
    pub prefix: String,
    /// Discovery and health checks (see [`Checked`]).
    pub checks: Arc<Checked>,
    pub members: Arc<MemberTable>,
    /// Ejection and slow-start rules ([`outlier`]).
    pub policy: Policy,
    /// The supervisor of a managed pool (for rollouts).
    pub supervisor: Option<Arc<supervisor::Supervisor>>,
    /// A stdio pool: its one member is the gateway's in-process host
    /// (`stdio/`, held by the `Gateway`). It is never ejected: what fails
    /// there is one session's process, which the host answers for session
    /// by session.
    pub stdio: bool,
    /// Its backends speak h2c: sessions' `GET` streams share HTTP/2
    /// connections (`upstream::shared`).
    pub http2_streams: bool,
    /// Time to a backend's response header (`mcp_gateway_upstream_duration_seconds`).
    pub upstream_seconds: Histogram,
    /// Whole tool calls, by tool (`mcp_gateway_tool_call_duration_seconds`).
    pub tool_seconds: ToolLatencies,
    /// Backends chosen in panic (`mcp_gateway_pool_panic_picks_total`).
    panic_picks: AtomicU64,
    /// Held only while an ejection is decided (a backend crossing its
    /// failure threshold), so that the share of members out at once holds.
    ejecting: Mutex<()>,
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
    pub fn new(
        index: u16,
        name: String,
        prefix: String,
        checks: Arc<Checked>,
        members: Arc<MemberTable>,
        policy: Policy,
        supervisor: Option<Arc<supervisor::Supervisor>>,
    ) -> Self {
        Self {
            index,
            name,
            prefix,
            checks,
            members,
            policy,
            supervisor,
            stdio: false,
            http2_streams: false,
            upstream_seconds: Histogram::default(),
            tool_seconds: ToolLatencies::default(),
            panic_picks: AtomicU64::new(0),
            ejecting: Mutex::new(()),
        }
    }

    /// A stdio pool (served by the gateway's in-process host).
    pub fn with_stdio(mut self, stdio: bool) -> Self {
        self.stdio = stdio;
        self
    }

    /// Sessions' `GET` streams go over shared HTTP/2 connections (h2c backends).
    pub fn with_http2_streams(mut self, on: bool) -> Self {
        self.http2_streams = on;
        self
    }

    /// Whether the pool's active health check passes for this backend.
    pub fn healthy(&self, state: &BackendState) -> bool {
        self.checks.backends().ready(&state.backend)
    }

    /// Whether a backend may take new work: healthy per the health check
    /// (a draining backend fails it), not ejected, not disabled by an operator.
    pub fn accepts_new(&self, state: &BackendState) -> bool {
        self.accepts_new_at(state, now_ms())
    }

    fn accepts_new_at(&self, state: &BackendState, now: u64) -> bool {
        !state.is_disabled() && !state.vitals.is_ejected(now) && self.healthy(state)
    }

    /// Whether every member an operator has not disabled is unhealthy or
    /// ejected: new work then goes to them anyway, least recently failed first.
    pub fn in_panic(&self) -> bool {
        let now = now_ms();
        let members = self.members.load();
        let mut candidates = false;
        for s in members.list.iter().filter(|s| !s.is_disabled()) {
            if self.accepts_new_at(s, now) {
                return false;
            }
            candidates = true;
        }
        candidates
    }

    pub fn panic_picks(&self) -> u64 {
        self.panic_picks.load(Ordering::Relaxed)
    }

    /// A backend's share of new sessions in slow start, in thousandths.
    pub fn slow_start_permille(&self, state: &BackendState, now: u64) -> u64 {
        state
            .vitals
            .slow_start_permille(now, self.policy.slow_start)
    }

    /// What an exchange with `backend` came to, from the request path:
    /// answers end an ejection for a failed connection; failures count
    /// towards one ([`outlier`] has the rules).
    pub fn record(&self, backend: &BackendState, outcome: Outcome) {
        if self.stdio {
            return;
        }
        let now = now_ms();
        let v = &backend.vitals;
        if let Outcome::Answered(_) = outcome {
            v.answered(now);
        }
        match outcome {
            Outcome::Answered(503) => {
                v.note_failure(now);
                self.eject(backend, Reason::Draining, now);
            }
            Outcome::Answered(status) if status >= 500 => {
                if v.count_failure(now) >= self.policy.eject_after {
                    self.eject(backend, Reason::Status, now);
                }
            }
            Outcome::Answered(_) => v.succeeded(now),
            Outcome::Refused => {
                v.count_refusal(now);
                self.eject(backend, Reason::Connect, now);
            }
            Outcome::Lost => {
                if v.count_failure(now) >= self.policy.eject_after {
                    self.eject(backend, Reason::Lost, now);
                }
            }
        }
    }

    /// Ejects `backend` unless it is out already or the pool's share of
    /// ejected members is reached.
    fn eject(&self, backend: &BackendState, reason: Reason, now: u64) -> bool {
        if backend.vitals.is_ejected(now) {
            return false;
        }
        let _deciding = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        if backend.vitals.is_ejected(now) {
            return false;
        }
        let members = self.members.load();
        let out = members
            .list
            .iter()
            .filter(|s| s.vitals.is_ejected(now))
            .count();
        let max = self.policy.max_out(members.list.len());
        if out >= max {
            tracing::debug!(pool = %self.name, backend = %backend.id, reason = reason.name(), out, max,
                "backend not ejected: the pool has as many out as it may");
            return false;
        }
        let ms = backend.vitals.eject(now, reason, &self.policy);
        if reason == Reason::Draining {
            tracing::info!(pool = %self.name, backend = %backend.id, addr = %backend.addr, for_ms = ms, "backend answered 503; no new work for a moment");
        } else {
            tracing::warn!(pool = %self.name, backend = %backend.id, addr = %backend.addr, reason = reason.name(), for_ms = ms, "backend ejected");
        }
        true
    }

    /// Least-loaded choice by the power of two random choices, weighted.
    pub fn pick(&self) -> Option<Arc<BackendState>> {
        self.pick_except(None)
    }

    /// As [`Pool::pick`], avoiding `except` (a backend that just failed) when
    /// there is any other choice. When no backend accepts new work, the pool
    /// is in panic: the least recently failed member is tried anyway.
    pub fn pick_except(&self, except: Option<&str>) -> Option<Arc<BackendState>> {
        let members = self.members.load();
        let list = &members.list;
        let now = now_ms();
        let avoid = |s: &BackendState| except.is_some_and(|id| id == s.id);
        if let Some(b) = self.pick_from(list, now, &|s| !avoid(s) && self.accepts_new_at(s, now)) {
            return Some(b);
        }
        // Only the one to avoid takes new work: better it than nothing,
        // unless it has just failed (then the others are tried, as in panic).
        if let Some(b) = list
            .iter()
            .find(|s| avoid(s) && self.accepts_new_at(s, now) && !failed_just_now(s, now))
        {
            return Some(Arc::clone(b));
        }
        self.pick_in_panic(list, except, now)
    }

    fn pick_from(
        &self,
        list: &[Arc<BackendState>],
        now: u64,
        usable: &dyn Fn(&BackendState) -> bool,
    ) -> Option<Arc<BackendState>> {
        match list.len() {
            0 => return None,
            1 => return list.first().filter(|s| usable(s)).cloned(),
            _ => {}
        }
        // Two distinct candidates (with two members that is both: plain least-loaded).
        let i = random_below(list.len());
        let j = (i + 1 + random_below(list.len() - 1)) % list.len();
        let (a, b) = (&list[i], &list[j]);
        let choice = match (usable(a), usable(b)) {
            (true, true) => Some(self.between(a, b, now)),
            (true, false) => Some(a),
            (false, true) => Some(b),
            (false, false) => None,
        };
        if let Some(c) = choice {
            return Some(Arc::clone(c));
        }
        // Both samples were unusable: scan for the least loaded that is.
        list.iter()
            .filter(|s| usable(s))
            .min_by_key(|s| s.load())
            .cloned()
    }

    /// Of two usable backends, the less loaded; but one in slow start gives
    /// way to the other in proportion to how far it is from a full share.
    fn between<'a>(
        &self,
        a: &'a Arc<BackendState>,
        b: &'a Arc<BackendState>,
        now: u64,
    ) -> &'a Arc<BackendState> {
        let (first, other) = if b.load() < a.load() { (b, a) } else { (a, b) };
        let share = self.slow_start_permille(first, now);
        if share < 1000 {
            let other_share = self.slow_start_permille(other, now);
            if share < other_share && (random_below(other_share as usize) as u64) >= share {
                return other;
            }
        }
        first
    }

    /// Panic: no member but perhaps one that has just failed takes new
    /// work. The least recently failed one that is not disabled (and not
    /// `except`, if there is another) is tried, unless a connection to it
    /// failed in the last [`PANIC_RETRY_GAP_MS`].
    fn pick_in_panic(
        &self,
        list: &[Arc<BackendState>],
        except: Option<&str>,
        now: u64,
    ) -> Option<Arc<BackendState>> {
        let choice = list
            .iter()
            .filter(|s| !s.is_disabled() && !failed_just_now(s, now))
            .min_by_key(|s| {
                (
                    except.is_some_and(|id| id == s.id),
                    s.vitals.last_failure_ms(),
                    s.load(),
                )
            })
            .cloned()?;
        self.panic_picks.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pool = %self.name, backend = %choice.id, "no backend takes new work: trying one anyway (panic)");
        Some(choice)
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

    /// When a stateless (2026-07-28) request must be carried over a session
    /// the gateway holds: members are known to speak only sessions, and
    /// none is known to take stateless requests. Returns one of their
    /// revisions (what the gateway tells the client it is talking to).
    /// `None`: send it as it came — some member takes it (a pool mixing
    /// revisions is served as before: route the revisions to pools of their
    /// own), or nothing is known yet.
    pub fn session_only(&self) -> Option<Arc<revision::Revision>> {
        self.known_only(|r| r.sessions, |r| r.stateless)
    }

    /// When a session client's `initialize` is answered by the gateway and
    /// its messages go stateless: members are known to speak only
    /// 2026-07-28, and none is known to open sessions. Returns one of their
    /// revisions.
    pub fn stateless_only(&self) -> Option<Arc<revision::Revision>> {
        self.known_only(|r| r.stateless, |r| r.sessions)
    }

    /// The revision of a member known to speak `one`, when no member is
    /// known to speak `other`.
    fn known_only(
        &self,
        one: fn(&revision::Revision) -> bool,
        other: fn(&revision::Revision) -> bool,
    ) -> Option<Arc<revision::Revision>> {
        let members = self.members.load();
        let mut found = None;
        for member in &members.list {
            let rev = member.revision.load();
            let Some(rev) = rev.as_ref() else { continue };
            if other(rev) {
                return None;
            }
            if one(rev) && found.is_none() {
                found = Some(Arc::clone(rev));
            }
        }
        found
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
    fn a_member_that_joins_a_serving_pool_starts_slowly_the_first_ones_do_not() {
        let table = MemberTable::default();
        let w = std::time::Duration::from_secs(10);
        let a = Member::at("127.0.0.1:1".parse().unwrap(), 1);
        let b = Member::at("127.0.0.1:2".parse().unwrap(), 1);
        let first = table.sync(std::slice::from_ref(&a));
        assert_eq!(first.list[0].vitals.slow_start_permille(now_ms(), w), 1000);
        let second = table.sync(&[a, b]);
        assert_eq!(second.list[0].vitals.slow_start_permille(now_ms(), w), 1000);
        assert!(second.list[1].vitals.slow_start_permille(now_ms(), w) < 200);
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

    fn pool_of(ports: &[u16], policy: Policy) -> Pool {
        let addrs: Vec<SocketAddr> = ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        let lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.clone()).unwrap();
        let members = MemberTable::default();
        let list: Vec<_> = addrs.iter().map(|a| Member::at(*a, 1)).collect();
        members.sync(&list);
        Pool::new(
            0,
            "t".into(),
            String::new(),
            Arc::new(lb),
            Arc::new(members),
            policy,
            None,
        )
    }

    fn unhealthy(pool: &Pool, id: &str) {
        let b = pool.member(id).unwrap();
        pool.checks.backends().set_enable(&b.backend, false);
    }

    #[test]
    fn a_pool_whose_every_member_is_out_still_tries_them_least_recently_failed_first() {
        let pool = pool_of(&[1, 2], Policy::default());
        assert!(!pool.in_panic());
        unhealthy(&pool, "127.0.0.1:1");
        unhealthy(&pool, "127.0.0.1:2");
        assert!(pool.in_panic());
        let (a, b) = (
            pool.member("127.0.0.1:1").unwrap(),
            pool.member("127.0.0.1:2").unwrap(),
        );
        let now = now_ms();
        a.vitals.note_failure(now - 5000);
        b.vitals.note_failure(now - 1000);
        assert_eq!(pool.pick().unwrap().id, a.id, "a failed longer ago");
        assert_eq!(pool.pick_except(Some(&a.id)).unwrap().id, b.id);
        // one whose connection failed just now is left alone: not retried by every request
        b.vitals.count_refusal(now_ms());
        assert_eq!(
            pool.pick_except(Some(&a.id)).unwrap().id,
            a.id,
            "only a is left"
        );
        a.vitals.count_refusal(now_ms());
        assert!(pool.pick().is_none(), "both refused just now: 503");
        assert_eq!(pool.panic_picks(), 3);
        // one that answered comes first
        a.vitals.succeeded(now_ms());
        assert_eq!(pool.pick().unwrap().id, a.id);
    }

    #[test]
    fn an_answer_ends_an_ejection_for_a_refused_connection() {
        let pool = pool_of(&[1], Policy::default());
        let a = pool.member("127.0.0.1:1").unwrap();
        pool.record(&a, Outcome::Refused);
        assert!(a.is_ejected() && pool.in_panic());
        pool.record(&a, Outcome::Answered(500));
        assert!(!a.is_ejected() && !pool.in_panic(), "any answer ends it");
        pool.record(&a, Outcome::Refused);
        assert!(a.is_ejected());
        pool.record(&a, Outcome::Answered(404));
        assert!(!a.is_ejected() && !pool.in_panic());
        assert_eq!(pool.pick().unwrap().id, a.id);
    }

    #[test]
    fn failures_in_a_row_eject_but_never_more_than_the_share() {
        let policy = Policy {
            eject_after: 3,
            ..Policy::default()
        };
        let pool = pool_of(&[1, 2, 3, 4], policy);
        let m: Vec<_> = (1..=4)
            .map(|p| pool.member(&format!("127.0.0.1:{p}")).unwrap())
            .collect();
        pool.record(&m[0], Outcome::Answered(500));
        pool.record(&m[0], Outcome::Lost);
        assert!(!m[0].is_ejected());
        pool.record(&m[0], Outcome::Answered(502));
        assert!(m[0].is_ejected(), "the third failure in a row");
        pool.record(&m[1], Outcome::Answered(500));
        pool.record(&m[1], Outcome::Answered(200));
        pool.record(&m[1], Outcome::Answered(500));
        pool.record(&m[1], Outcome::Answered(500));
        assert!(!m[1].is_ejected(), "a success broke the row");
        pool.record(&m[1], Outcome::Answered(500));
        assert!(m[1].is_ejected());
        for _ in 0..5 {
            pool.record(&m[2], Outcome::Answered(500));
            pool.record(&m[3], Outcome::Refused);
        }
        let out = m.iter().filter(|b| b.is_ejected()).count();
        assert_eq!(out, 2, "half of four at most");
        assert!(!pool.in_panic());
    }

    #[test]
    fn a_returning_backend_gets_a_growing_share_of_new_sessions() {
        let pool = pool_of(&[1, 2], Policy::default());
        let b = pool.member("127.0.0.1:2").unwrap();
        let share = |pool: &Pool| {
            let n = 4000;
            let got = (0..n).filter(|_| pool.pick().unwrap().id == b.id).count();
            got as f64 / n as f64
        };
        let even = share(&pool);
        assert!((0.45..0.55).contains(&even), "{even}");
        // back one second into a ten-second window: a tenth of its share
        b.vitals.health_checked(now_ms() - 2000, false);
        b.vitals.health_checked(now_ms() - 1000, true);
        let early = share(&pool);
        assert!((0.02..0.09).contains(&early), "{early}");
        b.vitals.health_checked(now_ms(), false);
        b.vitals.health_checked(now_ms() - 8000, true);
        let late = share(&pool);
        assert!((0.35..0.45).contains(&late), "{late}");
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
