//! A keyed GCRA limiter (governor's algorithm and cells) over a table the
//! gateway bounds itself: at most `max_keys` keys and `max_bytes` bytes.
//!
//! Why not governor's own `DashMap` store: it can only forget keys whose
//! bucket has filled up again (`retain_recent`). A table full of keys seen
//! a moment ago could then only be cleared whole, which hands every
//! principal of the tier a fresh budget — a client creating principals
//! could reset everybody's limits. Here, past either bound, the least
//! recently seen keys are forgotten (down to 7/8 of the bound): a flood of
//! new keys evicts the flood's own older keys before a principal that keeps
//! coming. A forgotten key starts again from a full bucket, as a new one.
//!
//! Cost on the request path: one read of a sharded map (an insert for a new
//! key), a relaxed store of the time it was seen, governor's compare-and-swap;
//! no lock shared by all requests. Eviction runs on the thread whose insert
//! crossed a bound, one pass at a time (others go on meanwhile, so the
//! table may pass its bound by what they add during a pass): a scan and a
//! sort of the table, once per `max_keys / 8` new keys.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use dashmap::DashMap;
use governor::clock::{DefaultClock, QuantaInstant};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota, RateLimiter};

/// What a key holds on the heap beyond its own size (counted against a
/// table's byte bound).
pub trait Weigh {
    fn heap_bytes(&self) -> usize;
}

impl Weigh for IpAddr {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl Weigh for Arc<str> {
    fn heap_bytes(&self) -> usize {
        // the two reference counts and the text
        2 * size_of::<usize>() + self.len()
    }
}

impl<A: Weigh, B: Weigh> Weigh for (A, B) {
    fn heap_bytes(&self) -> usize {
        self.0.heap_bytes() + self.1.heap_bytes()
    }
}

/// One key's state: governor's GCRA cell and when the key was last seen.
struct Cell {
    gcra: InMemoryState,
    /// Nanoseconds since the table's epoch (fine enough that keys seen in
    /// a flood are still told apart by age).
    seen: AtomicU64,
}

impl Cell {
    fn touch(&self, now: u64) {
        self.seen.store(now, Relaxed);
    }

    /// The cell's theoretical arrival time (`None`: a fresh cell).
    fn tat(&self) -> Option<Nanos> {
        // A measurement that always declines hands back the state unchanged.
        match self
            .gcra
            .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), Option<Nanos>>)
        {
            Err(prev) => prev,
            Ok(()) => None,
        }
    }
}

struct Table<K> {
    map: DashMap<K, Cell>,
    /// Keys held, and their bytes (counted on insert and removal, so
    /// reading them costs nothing).
    keys: AtomicUsize,
    bytes: AtomicUsize,
    max_keys: usize,
    max_bytes: usize,
    /// Set while one thread evicts.
    evicting: AtomicBool,
    epoch: Instant,
}

impl<K: Hash + Eq + Clone + Weigh> Table<K> {
    /// A key's share of the byte bound: itself, its cell, the map's slot
    /// overhead, and what it points to.
    fn weight(key: &K) -> usize {
        size_of::<K>() + size_of::<Cell>() + 2 * size_of::<usize>() + key.heap_bytes()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn added(&self, key: &K) {
        let keys = self.keys.fetch_add(1, Relaxed) + 1;
        let w = Self::weight(key);
        let bytes = self.bytes.fetch_add(w, Relaxed) + w;
        if keys > self.max_keys || bytes > self.max_bytes {
            self.evict();
        }
    }

    fn removed(&self, key: &K) {
        self.keys.fetch_sub(1, Relaxed);
        self.bytes.fetch_sub(Self::weight(key), Relaxed);
    }

    /// Forgets the least recently seen keys until the table is at 7/8 of
    /// both bounds.
    fn evict(&self) {
        if self
            .evicting
            .swap(true, std::sync::atomic::Ordering::Acquire)
        {
            return; // another thread is at it
        }
        let keep_keys = self.max_keys - self.max_keys / 8;
        let keep_bytes = self.max_bytes - self.max_bytes / 8;
        let mut by_age: Vec<(u64, K)> = self
            .map
            .iter()
            .map(|e| (e.value().seen.load(Relaxed), e.key().clone()))
            .collect();
        by_age.sort_unstable_by_key(|(seen, _)| *seen);
        let mut evicted = 0usize;
        for (seen, key) in by_age {
            if self.keys.load(Relaxed) <= keep_keys && self.bytes.load(Relaxed) <= keep_bytes {
                break;
            }
            // Seen again since the scan: no longer among the oldest.
            if self
                .map
                .remove_if(&key, |_, c| c.seen.load(Relaxed) == seen)
                .is_some()
            {
                self.removed(&key);
                evicted += 1;
            }
        }
        self.evicting
            .store(false, std::sync::atomic::Ordering::Release);
        tracing::warn!(
            evicted,
            keys = self.keys.load(Relaxed),
            bytes = self.bytes.load(Relaxed),
            "a rate-limit table reached its bound; its least recently seen keys were forgotten"
        );
    }
}

/// The table as governor's state store.
struct Store<K>(Arc<Table<K>>);

impl<K: Hash + Eq + Clone + Weigh> StateStore for Store<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let t = &self.0;
        let now = t.now();
        if let Some(cell) = t.map.get(key) {
            cell.touch(now);
            return cell.gcra.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut added = false;
        let result = {
            let cell = t.map.entry(key.clone()).or_insert_with(|| {
                added = true;
                Cell {
                    gcra: InMemoryState::default(),
                    seen: AtomicU64::new(now),
                }
            });
            cell.touch(now);
            cell.gcra.measure_and_replace(&NotKeyed::NonKey, f)
        };
        // Outside the entry's shard lock: eviction takes shard locks.
        if added {
            t.added(key);
        }
        result
    }
}

impl<K: Hash + Eq + Clone + Weigh> ShrinkableKeyedStateStore<K> for Store<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let t = &self.0;
        t.map.retain(|key, cell| {
            let keep = cell.tat().is_some_and(|tat| tat > drop_below);
            if !keep {
                t.removed(key);
            }
            keep
        });
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.keys.load(Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A keyed rate limiter whose table is bounded by keys and bytes.
pub struct Keyed<K: Hash + Eq + Clone + Weigh> {
    limiter: RateLimiter<K, Store<K>, DefaultClock>,
    table: Arc<Table<K>>,
    quota: Quota,
}

impl<K: Hash + Eq + Clone + Weigh> Keyed<K> {
    pub fn new(quota: Quota, max_keys: usize, max_bytes: usize) -> Self {
        let table = Arc::new(Table {
            map: DashMap::new(),
            keys: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            max_bytes: max_bytes.max(1),
            evicting: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        Self {
            limiter: RateLimiter::new(quota, Store(Arc::clone(&table)), DefaultClock::default()),
            table,
            quota,
        }
    }

    /// The limit every key of this table has.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// One cell for `key`, or when it may be tried again.
    pub fn check_key(&self, key: &K) -> Result<(), NotUntil<QuantaInstant>> {
        self.limiter.check_key(key)
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.table.keys.load(Relaxed)
    }

    /// Bytes counted for the keys held now.
    pub fn bytes(&self) -> usize {
        self.table.bytes.load(Relaxed)
    }

    /// Forgets keys whose bucket is full again (nothing lost: such a key
    /// behaves as a new one).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn quota(burst: u32) -> Quota {
        Quota::per_hour(NonZeroU32::new(1).unwrap()).allow_burst(NonZeroU32::new(burst).unwrap())
    }

    #[test]
    fn a_busy_key_outlives_a_flood_of_new_ones() {
        let l = Keyed::<Arc<str>>::new(quota(1), 16, usize::MAX);
        let busy: Arc<str> = Arc::from("busy");
        l.check_key(&busy).unwrap();
        assert!(l.check_key(&busy).is_err(), "its one cell is spent");
        for i in 0..10_000 {
            let _ = l.check_key(&Arc::from(format!("flood-{i}")));
            assert!(l.keys() <= 16, "{} keys after {i}", l.keys());
            // the busy principal keeps coming, so it is never the oldest
            assert!(l.check_key(&busy).is_err(), "its budget came back at {i}");
        }
    }

    #[test]
    fn the_byte_bound_holds_for_long_keys() {
        let max = 64 * 1024;
        let l = Keyed::<Arc<str>>::new(quota(5), 1_000_000, max);
        for i in 0..2_000 {
            let long: Arc<str> = Arc::from(format!("{i}-{}", "x".repeat(1000)));
            l.check_key(&long).unwrap();
            assert!(l.bytes() <= max + 2048, "{} bytes after {i}", l.bytes());
        }
        assert!(l.keys() < 64, "{} keys of ~1 KB in 64 KiB", l.keys());
    }

    #[test]
    fn retain_recent_forgets_only_refilled_keys_and_keeps_count() {
        let l = Keyed::<IpAddr>::new(
            Quota::per_second(NonZeroU32::new(1000).unwrap()),
            100,
            usize::MAX,
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        l.check_key(&a).unwrap();
        assert_eq!(l.keys(), 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        l.retain_recent();
        assert_eq!(
            (l.keys(), l.bytes()),
            (0, 0),
            "a refilled key costs nothing"
        );
        let slow = Keyed::<IpAddr>::new(quota(3), 100, usize::MAX);
        slow.check_key(&a).unwrap();
        slow.retain_recent();
        assert_eq!(slow.keys(), 1, "a key with spent cells is kept");
    }
}
