//! The legacy sessions this process holds: a concurrent map (sharded, so no
//! lock is shared by all requests) capped at `max_legacy_sessions` per pool,
//! and within a pool at its `client_share` per client (principal, or
//! address when anonymous), so clients of one pool cannot lock out another's
//! and one client cannot lock out the rest. An entry lives exactly as long
//! as its client's SSE stream; it leaves the table when the stream ends,
//! whoever ends it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::policy::jsonrpc::Rpc;

/// A client message for the session's worker, as `accept_message` read it.
pub struct Inbound {
    pub body: Bytes,
    pub rpc: Rpc,
    /// Set when the gateway refused the message (a limit, a denied tool):
    /// the worker tells the client on its stream instead of calling a backend.
    pub refused: Option<crate::reject::Reject>,
    /// The trace of the POST that brought it (OTLP on), for its backend call.
    pub trace: Option<telemetry::Parent>,
    /// Returns the message's bytes to the inbox budget once the worker took it.
    pub _queued: Queued,
}

/// Bytes counted against a session's inbox budget until dropped.
pub struct Queued {
    counter: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// One open legacy session: where its messages go.
#[derive(Clone)]
pub struct Entry {
    inbox: mpsc::Sender<Inbound>,
    /// Bytes waiting in the inbox (bounded by the table's `inbox_bytes`).
    queued: Arc<AtomicUsize>,
    /// Who opened it; only they may post to it.
    principal: Arc<str>,
    /// The pool whose route it was opened on; messages come by that route only.
    pool: u16,
    /// The client it counts against (principal, or address when anonymous).
    client: Arc<str>,
}

/// Why a message could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The inbox is full (messages or bytes): the client should retry.
    Full,
    /// The session's worker is gone.
    Closed,
}

impl Entry {
    pub fn new(inbox: mpsc::Sender<Inbound>, principal: &str, pool: u16, client: Arc<str>) -> Self {
        Self {
            inbox,
            queued: Arc::new(AtomicUsize::new(0)),
            principal: Arc::from(principal),
            pool,
            client,
        }
    }

    pub fn principal(&self) -> &str {
        &self.principal
    }

    pub fn pool(&self) -> u16 {
        self.pool
    }

    /// Queues a message unless that would pass `max_bytes` waiting or the
    /// inbox's message bound.
    pub fn queue(
        &self,
        body: Bytes,
        rpc: Rpc,
        trace: Option<telemetry::Parent>,
        max_bytes: usize,
    ) -> Result<(), QueueError> {
        let bytes = body.len();
        let before = self.queued.fetch_add(bytes, Ordering::AcqRel);
        let queued = Queued {
            counter: Arc::clone(&self.queued),
            bytes,
        };
        if before + bytes > max_bytes && before > 0 {
            return Err(QueueError::Full);
        }
        match self.inbox.try_send(Inbound {
            body,
            rpc,
            refused: None,
            trace,
            _queued: queued,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(QueueError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(QueueError::Closed),
        }
    }

    /// Queues the answer to a refused message, so the stream carries the
    /// JSON-RPC error for its id; best effort (a full inbox drops it: the
    /// POST's own status already said no).
    pub fn queue_refusal(&self, rpc: Rpc, reject: crate::reject::Reject) {
        let _ = self.inbox.try_send(Inbound {
            body: Bytes::new(),
            rpc,
            refused: Some(reject),
            trace: None,
            _queued: Queued {
                counter: Arc::clone(&self.queued),
                bytes: 0,
            },
        });
    }

    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

pub struct Table {
    map: DashMap<String, Entry>,
    /// Sessions open, all pools.
    count: AtomicUsize,
    /// Sessions open by pool, and by client within a pool (an entry lives
    /// while its count is above zero).
    by_pool: DashMap<u16, usize>,
    by_client: DashMap<(u16, Arc<str>), usize>,
    /// The cap per pool (`max_legacy_sessions`) and a client's share of it
    /// (`client_share`, in thousandths); both change on reload, and
    /// sessions over a lowered cap stay until they end.
    max: AtomicUsize,
    share_permille: AtomicUsize,
}

/// Why a session could not be added.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// The pool holds its cap of sessions.
    Pool,
    /// The client holds its share of the pool's.
    Client,
}

impl Table {
    pub fn new(max: usize, share: f64) -> Self {
        Self {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            by_pool: DashMap::new(),
            by_client: DashMap::new(),
            max: AtomicUsize::new(max),
            share_permille: AtomicUsize::new(permille(share)),
        }
    }

    pub fn set_caps(&self, max: usize, share: f64) {
        self.max.store(max, Ordering::Relaxed);
        self.share_permille
            .store(permille(share), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a session unless its pool, or its client's share of the pool,
    /// is full.
    pub fn insert(&self, id: &str, entry: Entry) -> Result<(), Full> {
        let max = self.max.load(Ordering::Relaxed);
        let share = self.share_permille.load(Ordering::Relaxed);
        let client_max = (max * share / 1000).max(1);
        let client = (entry.pool, Arc::clone(&entry.client));
        if !take(&self.by_pool, entry.pool, max) {
            return Err(Full::Pool);
        }
        if !take(&self.by_client, client, client_max) {
            give_back(&self.by_pool, &entry.pool);
            return Err(Full::Client);
        }
        self.count.fetch_add(1, Ordering::AcqRel);
        self.map.insert(id.to_owned(), entry);
        Ok(())
    }

    pub fn remove(&self, id: &str) {
        if let Some((_, entry)) = self.map.remove(id) {
            self.count.fetch_sub(1, Ordering::AcqRel);
            give_back(&self.by_pool, &entry.pool);
            give_back(&self.by_client, &(entry.pool, entry.client));
        }
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.map.get(id).map(|e| e.clone())
    }
}

fn permille(share: f64) -> usize {
    (share.clamp(0.0, 1.0) * 1000.0) as usize
}

/// One more in `key`'s count unless it holds `cap` already.
fn take<K: std::hash::Hash + Eq>(table: &DashMap<K, usize>, key: K, cap: usize) -> bool {
    if cap == 0 {
        return false; // and no entry is left behind
    }
    let mut n = table.entry(key).or_insert(0);
    if *n >= cap {
        return false;
    }
    *n += 1;
    true
}

/// One less in `key`'s count; the entry leaves at zero.
fn give_back<K: std::hash::Hash + Eq>(table: &DashMap<K, usize>, key: &K) {
    table.remove_if_mut(key, |_, n| {
        *n = n.saturating_sub(1);
        *n == 0
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::jsonrpc;

    fn rpc() -> Rpc {
        jsonrpc::parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap()
    }

    fn entry(tx: &mpsc::Sender<Inbound>, pool: u16, client: &str) -> Entry {
        Entry::new(tx.clone(), "", pool, Arc::from(client))
    }

    #[test]
    fn the_table_is_capped_per_pool_and_per_client_and_entries_leave() {
        let t = Table::new(4, 0.5);
        let (tx, _rx) = mpsc::channel(1);
        assert_eq!(t.insert("a", entry(&tx, 0, "anon")), Ok(()));
        assert_eq!(t.insert("b", entry(&tx, 0, "anon")), Ok(()));
        assert_eq!(
            t.insert("c", entry(&tx, 0, "anon")),
            Err(Full::Client),
            "half of 4"
        );
        assert_eq!(t.insert("c", entry(&tx, 0, "alice")), Ok(()));
        assert_eq!(t.insert("d", entry(&tx, 0, "bob")), Ok(()));
        assert_eq!(t.insert("e", entry(&tx, 0, "carol")), Err(Full::Pool));
        assert_eq!(
            t.insert("e", entry(&tx, 1, "anon")),
            Ok(()),
            "another pool has its own cap"
        );
        for id in ["a", "b", "c", "d", "e"] {
            t.remove(id);
        }
        assert!(t.is_empty());
        assert!(
            t.by_pool.is_empty() && t.by_client.is_empty(),
            "no count is kept at zero"
        );
    }

    #[test]
    fn the_inbox_is_bounded_in_bytes_and_frees_what_the_worker_took() {
        let (tx, mut rx) = mpsc::channel(16);
        let e = Entry::new(tx, "", 0, Arc::from(""));
        assert_eq!(
            e.queue(Bytes::from(vec![b'x'; 60]), rpc(), None, 100),
            Ok(())
        );
        assert_eq!(
            e.queue(Bytes::from(vec![b'x'; 60]), rpc(), None, 100),
            Err(QueueError::Full)
        );
        assert_eq!(e.queued_bytes(), 60, "the refused message is not counted");
        drop(rx.try_recv().unwrap());
        assert_eq!(e.queued_bytes(), 0);
        // one message larger than the budget still passes when nothing waits
        assert_eq!(
            e.queue(Bytes::from(vec![b'x'; 150]), rpc(), None, 100),
            Ok(())
        );
        drop(rx);
        assert_eq!(
            e.queue(Bytes::from_static(b"x"), rpc(), None, 1000),
            Err(QueueError::Closed)
        );
    }
}
