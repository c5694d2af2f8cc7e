//! Where each line a stdio server writes goes. A stdio server has one
//! output; its clients (through the host) have several streams: the POST
//! of each request in flight, and the session's `GET` stream.
//!
//! - An answer (`id` with `result`/`error`) ends the POST that sent that id.
//! - A `notifications/progress` goes to the POST whose request carried its
//!   `progressToken`.
//! - Any other request or notification of the server (sampling,
//!   elicitation, roots, logging, list changes) rides the oldest POST still
//!   waiting for its answer — the spec's "related to the originating
//!   request" as well as a stdio server lets anyone tell — else the `GET`
//!   stream, else it waits in a bounded backlog ([`MAX_BACKLOG`],
//!   [`MAX_BACKLOG_BYTES`]; the oldest go first) for the next `GET`.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Server messages kept for a `GET` stream that is not open (at most this many …
pub const MAX_BACKLOG: usize = 256;
/// … and this many bytes).
pub const MAX_BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// One line of the server on its way to a client stream.
pub struct Routed {
    pub line: Bytes,
    /// The answer its stream waited for: the stream ends after it.
    pub last: bool,
}

/// A JSON-RPC message as far as routing needs to read it.
#[derive(Deserialize)]
pub struct Peek<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

/// What a message is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request, with its id as a key ([`id_key`]).
    Request {
        id: String,
        method: String,
    },
    Notification {
        method: String,
    },
    /// An answer to the request with this id key (`None`: a null id).
    Response {
        id: Option<String>,
    },
}

/// Reads one message; `None` when it is not a JSON-RPC message (not JSON,
/// not an object — batches included —, or neither a request, a
/// notification nor an answer).
pub fn peek(text: &[u8]) -> Option<(Kind, Peek<'_>)> {
    let p: Peek<'_> = serde_json::from_slice(text).ok()?;
    let kind = match (&p.method, p.id) {
        (Some(m), Some(id)) => Kind::Request {
            id: id_key(id)?,
            method: m.to_string(),
        },
        (Some(m), None) => Kind::Notification {
            method: m.to_string(),
        },
        (None, id) if p.result.is_some() || p.error.is_some() => Kind::Response {
            id: id.and_then(id_key),
        },
        (None, _) => return None,
    };
    Some((kind, p))
}

impl Peek<'_> {
    /// The `progressToken` a client's request asks progress under
    /// (`params._meta.progressToken`), as a key.
    pub fn asks_progress(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(rename = "_meta", borrow)]
            meta: Option<Meta<'a>>,
        }
        #[derive(Deserialize)]
        struct Meta<'a> {
            #[serde(rename = "progressToken", borrow)]
            token: Option<&'a RawValue>,
        }
        let params: Params<'_> = serde_json::from_str(self.params?.get()).ok()?;
        id_key(params.meta?.token?)
    }

    /// The `progressToken` a `notifications/progress` reports on, as a key.
    pub fn progress_of(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(rename = "progressToken", borrow)]
            token: Option<&'a RawValue>,
        }
        let params: Params<'_> = serde_json::from_str(self.params?.get()).ok()?;
        id_key(params.token?)
    }
}

/// Whether a server's answer is a result (not an error).
pub fn is_result(line: &[u8]) -> bool {
    peek(line).is_some_and(|(_, p)| p.result.is_some())
}

/// An id (or progress token) in one spelling: `1`, `"a"` (strings and
/// numbers only), whatever escapes or number form the writer used.
pub fn id_key(raw: &RawValue) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
        v @ (serde_json::Value::String(_) | serde_json::Value::Number(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// A POST waiting for its answer.
struct Waiter {
    /// `None`: the gateway's own request (the warm-up ping): its answer is dropped.
    tx: Option<mpsc::Sender<Routed>>,
    progress: Option<String>,
    seq: u64,
}

/// Where one line goes.
pub enum Dest {
    /// A client stream; `last`: the answer it waited for.
    Stream(mpsc::Sender<Routed>, bool),
    /// Kept for the next `GET` stream.
    Backlog,
    /// Nowhere (an answer nobody waits for, or the gateway's own).
    Drop,
}

/// Why a request could not be registered.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// A request with this id is in flight already.
    Duplicate,
    /// The process is gone.
    Dead,
}

/// The client streams of one process.
#[derive(Default)]
pub struct Routes {
    pending: HashMap<String, Waiter>,
    next_seq: u64,
    get: Option<mpsc::Sender<Routed>>,
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    dead: bool,
}

impl Routes {
    /// Registers a request in flight (`tx: None`: the gateway's own).
    pub fn register(
        &mut self,
        id: String,
        progress: Option<String>,
        tx: Option<mpsc::Sender<Routed>>,
    ) -> Result<(), Refused> {
        if self.dead {
            return Err(Refused::Dead);
        }
        if self.pending.contains_key(&id) {
            return Err(Refused::Duplicate);
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.pending.insert(id, Waiter { tx, progress, seq });
        Ok(())
    }

    /// Forgets a request (its POST went away before the answer).
    pub fn unregister(&mut self, id: &str) {
        self.pending.remove(id);
    }

    /// Clients' requests waiting for their answer (the gateway's own aside).
    pub fn in_flight(&self) -> usize {
        self.pending.values().filter(|w| w.tx.is_some()).count()
    }

    /// The destination of one server message.
    pub fn route(&mut self, kind: &Kind, peek: &Peek<'_>) -> Dest {
        match kind {
            Kind::Response { id: Some(id) } => match self.pending.remove(id) {
                Some(Waiter { tx: Some(tx), .. }) => Dest::Stream(tx, true),
                _ => Dest::Drop,
            },
            Kind::Response { id: None } => Dest::Drop,
            Kind::Notification { method } if method == "notifications/progress" => {
                let token = peek.progress_of();
                let asked = self.pending.values().find(|w| {
                    w.tx.is_some() && token.is_some() && w.progress.as_deref() == token.as_deref()
                });
                match asked.and_then(|w| w.tx.clone()) {
                    Some(tx) => Dest::Stream(tx, false),
                    None => self.unrelated(),
                }
            }
            _ => self.unrelated(),
        }
    }

    /// A server message tied to no request we can name: the oldest POST
    /// still waiting, else the `GET` stream, else the backlog.
    fn unrelated(&mut self) -> Dest {
        let oldest = self
            .pending
            .values()
            .filter(|w| w.tx.as_ref().is_some_and(|tx| !tx.is_closed()))
            .min_by_key(|w| w.seq);
        if let Some(tx) = oldest.and_then(|w| w.tx.clone()) {
            return Dest::Stream(tx, false);
        }
        match &self.get {
            Some(tx) if !tx.is_closed() => Dest::Stream(tx.clone(), false),
            _ => Dest::Backlog,
        }
    }

    /// Keeps a message for the next `GET`; returns how many old ones were
    /// dropped to make room.
    pub fn keep(&mut self, line: Bytes) -> usize {
        let mut dropped = 0;
        self.backlog_bytes += line.len();
        self.backlog.push_back(line);
        while self.backlog.len() > MAX_BACKLOG || self.backlog_bytes > MAX_BACKLOG_BYTES {
            match self.backlog.pop_front() {
                Some(old) => {
                    self.backlog_bytes -= old.len();
                    dropped += 1;
                }
                None => break,
            }
        }
        dropped
    }

    /// Makes `tx` the session's `GET` stream (ending the one before);
    /// returns what waited for it. `None`: the process is gone.
    pub fn attach_get(&mut self, tx: mpsc::Sender<Routed>) -> Option<Vec<Bytes>> {
        if self.dead {
            return None;
        }
        self.get = Some(tx);
        self.backlog_bytes = 0;
        Some(self.backlog.drain(..).collect())
    }

    /// The process is gone: no new request, and every stream is handed back
    /// (with its request's id key) so that the caller ends it. The `GET`
    /// stream ends here, unless `keep_get`: then it is handed back too, to
    /// stay open (silent) as long as its client holds it.
    pub fn close(&mut self, keep_get: bool) -> Vec<(String, mpsc::Sender<Routed>)> {
        self.dead = true;
        let get = self.get.take().filter(|_| keep_get);
        self.backlog.clear();
        let get = get.map(|tx| (String::new(), tx));
        self.pending
            .drain()
            .filter_map(|(id, w)| w.tx.map(|tx| (id, tx)))
            .chain(get)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> (Kind, Peek<'_>) {
        peek(text.as_bytes()).expect("a JSON-RPC message")
    }

    #[test]
    fn messages_are_told_apart_and_garbage_is_not_a_message() {
        let (k, _) = msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert_eq!(
            k,
            Kind::Response {
                id: Some("1".into())
            }
        );
        let (k, _) = msg(r#"{"jsonrpc":"2.0","id":"a","method":"sampling/createMessage"}"#);
        assert!(matches!(k, Kind::Request { ref id, .. } if id == "\"a\""));
        let (k, _) = msg(r#"{"jsonrpc":"2.0","method":"notifications/message"}"#);
        assert!(matches!(k, Kind::Notification { .. }));
        for bad in [
            "hello",
            "[]",
            r#"[{"jsonrpc":"2.0","id":1,"result":{}}]"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            "{\"id\":1,\"result\":{}",
            "",
        ] {
            assert!(peek(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn ids_match_whatever_spelling_the_server_used() {
        let a = RawValue::from_string("\"\\u0041b\"".into()).unwrap();
        let b = RawValue::from_string("\"Ab\"".into()).unwrap();
        assert_eq!(id_key(&a), id_key(&b));
        let obj = RawValue::from_string("{}".into()).unwrap();
        assert_eq!(id_key(&obj), None);
    }

    #[test]
    fn answers_end_their_own_post_and_server_requests_ride_the_oldest_one() {
        let mut routes = Routes::default();
        let (tx1, _rx1) = mpsc::channel(4);
        let (tx2, _rx2) = mpsc::channel(4);
        routes
            .register("1".into(), None, Some(tx1.clone()))
            .unwrap();
        routes
            .register("2".into(), Some("\"p\"".into()), Some(tx2.clone()))
            .unwrap();
        assert_eq!(
            routes.register("1".into(), None, Some(tx1.clone())),
            Err(Refused::Duplicate)
        );
        let (k, p) = msg(
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}"#,
        );
        assert!(matches!(routes.route(&k, &p), Dest::Stream(tx, false) if tx.same_channel(&tx2)));
        let (k, p) = msg(r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage"}"#);
        assert!(matches!(routes.route(&k, &p), Dest::Stream(tx, false) if tx.same_channel(&tx1)));
        let (k, p) = msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert!(matches!(routes.route(&k, &p), Dest::Stream(tx, true) if tx.same_channel(&tx1)));
        let (k, p) = msg(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert!(matches!(routes.route(&k, &p), Dest::Drop), "answered once");
        assert_eq!(routes.in_flight(), 1);
    }

    #[test]
    fn with_nothing_in_flight_server_messages_go_to_get_or_wait_for_it_bounded() {
        let mut routes = Routes::default();
        let (k, p) = msg(r#"{"jsonrpc":"2.0","method":"notifications/message"}"#);
        assert!(matches!(routes.route(&k, &p), Dest::Backlog));
        let mut dropped = 0;
        for _ in 0..MAX_BACKLOG + 3 {
            dropped += routes.keep(Bytes::from_static(b"x"));
        }
        assert_eq!(dropped, 3, "the oldest go");
        let (tx, _rx) = mpsc::channel(4);
        assert_eq!(routes.attach_get(tx.clone()).unwrap().len(), MAX_BACKLOG);
        assert!(matches!(routes.route(&k, &p), Dest::Stream(t, false) if t.same_channel(&tx)));
        let (w, _rw) = mpsc::channel(4);
        routes.register("9".into(), None, Some(w)).unwrap();
        assert_eq!(routes.close(false).len(), 1, "the GET stream ends");
        assert!(routes.attach_get(tx).is_none());
        assert_eq!(routes.register("3".into(), None, None), Err(Refused::Dead));
    }

    #[test]
    fn a_clients_progress_token_is_read_from_its_request() {
        let (_, p) = msg(
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"_meta":{"progressToken":7}}}"#,
        );
        assert_eq!(p.asks_progress().as_deref(), Some("7"));
        let (_, p) = msg(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#);
        assert_eq!(p.asks_progress(), None);
    }
}
