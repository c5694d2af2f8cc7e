//! The legacy sessions this process holds: a concurrent map (sharded, so no
//! lock is shared by all requests) capped at `max_legacy_sessions`. An entry
//! lives exactly as long as its client's SSE stream; it leaves the table
//! when the stream ends, whoever ends it.

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
    pub fn new(inbox: mpsc::Sender<Inbound>, principal: &str, pool: u16) -> Self {
        Self {
            inbox,
            queued: Arc::new(AtomicUsize::new(0)),
            principal: Arc::from(principal),
            pool,
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
    count: AtomicUsize,
    /// The cap (`max_legacy_sessions`; changes on reload, sessions over a
    /// lowered cap stay until they end).
    max: AtomicUsize,
}

impl Table {
    pub fn new(max: usize) -> Self {
        Self {
            map: DashMap::new(),
            count: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a session unless the table is full.
    pub fn insert(&self, id: &str, entry: Entry) -> bool {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max.load(Ordering::Relaxed) {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.map.insert(id.to_owned(), entry);
        true
    }

    pub fn remove(&self, id: &str) {
        if self.map.remove(id).is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.map.get(id).map(|e| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::jsonrpc;

    fn rpc() -> Rpc {
        jsonrpc::parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap()
    }

    #[test]
    fn the_table_is_capped_and_entries_leave() {
        let t = Table::new(1);
        let (tx, _rx) = mpsc::channel(1);
        assert!(t.insert("a", Entry::new(tx.clone(), "", 0)));
        assert!(
            !t.insert("b", Entry::new(tx.clone(), "", 0)),
            "over the cap"
        );
        t.remove("a");
        assert!(t.is_empty());
        assert!(t.insert("b", Entry::new(tx, "", 0)));
    }

    #[test]
    fn the_inbox_is_bounded_in_bytes_and_frees_what_the_worker_took() {
        let (tx, mut rx) = mpsc::channel(16);
        let e = Entry::new(tx, "", 0);
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
