//! Per-replica memory of sessions, keyed by the nonce of the client's id
//! (unique per id): where a session this replica moved lives now (the
//! client's id never changes, so after a failover it still names the old
//! backend), and which sessions the client ended. Bounded: entries older
//! than the id lifetime are dropped, and past `cap` the older half goes. A
//! forgotten move only means the session moves again on its next request.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::token::now_secs;

/// Where a moved session lives now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebound {
    pub backend: String,
    pub backend_session: String,
}

pub struct NonceTable<V> {
    map: DashMap<[u8; 12], (V, u64)>,
    cap: usize,
    max_age_secs: u64,
    evictions: AtomicUsize,
}

pub type Rebinds = NonceTable<Rebound>;

impl<V: Clone> NonceTable<V> {
    pub fn new(cap: usize, max_age_secs: u64) -> Self {
        Self {
            map: DashMap::new(),
            cap: cap.max(1),
            max_age_secs,
            evictions: AtomicUsize::new(0),
        }
    }

    pub fn get(&self, key: &[u8; 12]) -> Option<V> {
        self.map.get(key).map(|r| r.0.clone())
    }

    pub fn contains(&self, key: &[u8; 12]) -> bool {
        self.map.contains_key(key)
    }

    pub fn insert(&self, key: [u8; 12], value: V) {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.evict();
        }
        self.map.insert(key, (value, now_secs()));
    }

    pub fn remove(&self, key: &[u8; 12]) {
        self.map.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    fn evictions(&self) -> usize {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Drops expired entries; if that is not enough, the older half.
    fn evict(&self) {
        let now = now_secs();
        self.map
            .retain(|_, (_, at)| now.saturating_sub(*at) <= self.max_age_secs);
        if self.map.len() >= self.cap {
            let mut ages: Vec<u64> = self.map.iter().map(|r| r.1).collect();
            ages.sort_unstable();
            let median = ages[ages.len() / 2];
            self.map.retain(|_, (_, at)| *at > median);
            if self.map.len() >= self.cap {
                self.map.clear();
            }
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(b: &str, s: &str) -> Rebound {
        Rebound {
            backend: b.into(),
            backend_session: s.into(),
        }
    }

    #[test]
    fn remembers_moves_and_stays_bounded() {
        let t = Rebinds::new(100, 3600);
        t.insert([1; 12], moved("registry-1", "s1"));
        assert_eq!(t.get(&[1; 12]).unwrap().backend, "registry-1");
        t.insert([1; 12], moved("registry-2", "s2"));
        assert_eq!(t.get(&[1; 12]).unwrap().backend_session, "s2");
        for i in 0..1000u32 {
            let mut k = [0u8; 12];
            k[..4].copy_from_slice(&i.to_be_bytes());
            t.insert(k, moved("b", "s"));
            assert!(t.len() <= 100);
        }
        assert!(t.evictions() > 0);
        t.remove(&[1; 12]);
        assert!(t.get(&[1; 12]).is_none());
    }
}
