//! Server requests in the middle of a call, across the revisions. A server
//! that speaks sessions asks its client mid-call (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`) and waits; a 2026-07-28 client takes
//! such a question only as the call's answer: `resultType:
//! "input_required"` with `inputRequests` and a `requestState`, and it
//! retries the call with `inputResponses` and the state echoed. So the
//! gateway answers the call that way, parks the backend's stream (the call
//! still running there) under a random `requestState`, and when the retry
//! comes, gives the backend the client's answer and relays the rest of the
//! stream as the retry's answer. A parked call waits [`PARKED_FOR`] at
//! most, on this replica; [`MAX_PARKED`] at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use serde_json::{Value, json};

use crate::session::Link;
use crate::upstream::{Frames, Outgoing, Upstream};

use super::held::Holding;

/// How long a paused call waits for the client's retry.
pub const PARKED_FOR: Duration = Duration::from_secs(60);
/// Most paused calls at once.
pub const MAX_PARKED: u64 = 1024;
/// The methods a session server asks its client that 2026-07-28 carries as input requests.
const INPUT_METHODS: &[&str] = &["sampling/createMessage", "elicitation/create", "roots/list"];
/// The key of the one input request in an `inputRequests` the gateway makes.
pub const INPUT_KEY: &str = "gateway-input";

/// A backend's server request that a call is waiting on, and where the call runs.
pub struct Parked {
    pub principal: String,
    pub holding: Arc<Holding>,
    pub link: Arc<Link>,
    /// The server request's id (its JSON text), for the answer.
    pub asked: String,
    /// The id the client gave the call first (its JSON text): the backend answers that one.
    pub first_id: String,
    /// The rest of the backend's answer to the call.
    pub frames: Mutex<Option<Frames>>,
}

/// What the bridge takes out of a call's answer ([`crate::relay::Divert`]):
/// the answer, put in the 2026-07-28 shape, and a server request the
/// client takes only as input required (noted for the sink to park).
pub struct Diverter<'a> {
    /// The id the backend answers (the call's first).
    pub first_id: &'a str,
    /// The id the client waits on (another one on a retry).
    pub client_id: &'a str,
    pub token: String,
    pub cacheable: bool,
    /// The server request diverted, by its id, and the call's first id.
    pub asked: Mutex<Option<(String, String)>>,
}

impl<'a> Diverter<'a> {
    pub fn new(first_id: &'a str, client_id: &'a str, method: &str) -> Self {
        Self {
            first_id,
            client_id,
            token: token(),
            cacheable: cacheable(method),
            asked: Mutex::new(None),
        }
    }

    pub fn divert(&self, data: &str) -> Option<String> {
        if let Some(done) = for_client(data, self.first_id, self.client_id, self.cacheable) {
            return Some(done);
        }
        if self.token.is_empty() {
            return None;
        }
        let (answer, asked) = input_required(data, self.client_id, &self.token)?;
        if let Ok(mut a) = self.asked.lock() {
            *a = Some((asked, self.first_id.to_owned()));
        }
        Some(answer)
    }
}

pub struct Rounds {
    parked: moka::sync::Cache<String, Arc<Parked>>,
}

impl Rounds {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        let parked = moka::sync::Cache::builder()
            .max_capacity(MAX_PARKED)
            .time_to_live(PARKED_FOR)
            .eviction_listener(move |_token, p: Arc<Parked>, cause| {
                if cause == RemovalCause::Explicit || cause == RemovalCause::Replaced {
                    return;
                }
                // Nobody came back: the server hears its question went unanswered.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let upstream = Arc::clone(&upstream);
                    let error = json!({"code": -32603, "message": "the stateless (2026-07-28) client did not come back with an answer"});
                    rt.spawn(async move { answer(&upstream, &p, "error", error).await });
                }
            })
            .build();
        Self { parked }
    }

    pub fn park(&self, token: String, parked: Parked) {
        self.parked.insert(token, Arc::new(parked));
    }

    /// Calls paused now (for the metrics).
    pub fn count(&self) -> u64 {
        self.parked.run_pending_tasks();
        self.parked.entry_count()
    }

    /// The call paused under `token` for `principal`, taken (a state
    /// serves one retry; another principal's retry leaves it paused).
    pub fn take(&self, token: &str, principal: &str) -> Option<Arc<Parked>> {
        let parked = self.parked.get(token)?;
        if parked.principal != principal {
            return None;
        }
        self.parked.remove(token)
    }

    /// Ends what has waited too long now (moka evicts only when used).
    pub fn tidy(&self) {
        self.parked.run_pending_tasks();
    }
}

/// A fresh `requestState`: 128 random bits.
pub fn token() -> String {
    use ring::rand::SecureRandom;
    use std::fmt::Write;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return String::new();
    }
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// When `data` is a server request a 2026-07-28 client takes only as input
/// required: the answer the client gets instead (to its request `client_id`,
/// with the state `token`), and the server request's id.
pub fn input_required(data: &str, client_id: &str, token: &str) -> Option<(String, String)> {
    if !data.contains("\"method\"") {
        return None;
    }
    let msg: Value = serde_json::from_str(data).ok()?;
    let method = msg.get("method")?.as_str()?;
    let asked = msg.get("id")?;
    if !INPUT_METHODS.contains(&method) {
        return None;
    }
    let id: Value = serde_json::from_str(client_id).ok()?;
    let mut request = json!({"method": method});
    if let Some(params) = msg.get("params") {
        request["params"] = params.clone();
    }
    let answer = json!({
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "resultType": "input_required",
            "inputRequests": {INPUT_KEY: request},
            "requestState": token,
        },
    });
    Some((answer.to_string(), asked.to_string()))
}

/// Sends the backend the answer to its server request (`kind`: "result" or "error").
pub async fn answer(upstream: &Upstream, p: &Parked, kind: &str, value: Value) -> bool {
    let asked: Value = serde_json::from_str(&p.asked).unwrap_or(Value::Null);
    let mut body = json!({"jsonrpc": "2.0", "id": asked});
    body[kind] = value;
    let sent = upstream
        .send(
            p.link.backend.addr,
            Outgoing {
                session: Some(&p.link.session),
                protocol_version: p.link.version.as_deref(),
                accept: Some("application/json, text/event-stream"),
                content_type: Some("application/json"),
                body: Bytes::from(body.to_string()),
                principal: p.holding.caller.principal_header(),
                ..Outgoing::own(http::Method::POST, "/mcp", &p.holding.caller.forwarded)
            },
        )
        .await;
    match sent {
        Ok((parts, mut rest)) => {
            let _ = rest.read_all(64 * 1024).await;
            parts.status.is_success()
        }
        Err(_) => false,
    }
}

/// An id of the gateway's own for a carried request (its JSON text):
/// requests of many clients share a held backend session, and their own
/// ids would meet there.
pub fn own_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("\"gw-{}\"", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The message with its id set to `id` (JSON text).
pub fn with_id(body: &[u8], id: &str) -> Option<Bytes> {
    let mut msg: Value = serde_json::from_slice(body).ok()?;
    *msg.as_object_mut()?.get_mut("id")? = serde_json::from_str(id).ok()?;
    Some(Bytes::from(msg.to_string()))
}

/// The backend's answer to `first` as the client's answer to `client`:
/// its id the client's, and a result in the 2026-07-28 shape — it says it
/// is `complete`, and one clients may cache (lists, reads, discover) says
/// for how long and for whom: not at all, and only for this principal,
/// since the server said nothing of it. `None`: not that answer.
pub fn for_client(data: &str, first: &str, client: &str, cacheable: bool) -> Option<String> {
    let mut msg: Value = serde_json::from_str(data).ok()?;
    let first: Value = serde_json::from_str(first).ok()?;
    if msg.get("method").is_some() || msg.get("id") != Some(&first) {
        return None;
    }
    msg["id"] = serde_json::from_str(client).ok()?;
    if let Some(result) = msg.get_mut("result").and_then(Value::as_object_mut) {
        result
            .entry("resultType")
            .or_insert_with(|| "complete".into());
        if cacheable {
            result.entry("ttlMs").or_insert_with(|| 0.into());
            result
                .entry("cacheScope")
                .or_insert_with(|| "private".into());
        }
    }
    Some(msg.to_string())
}

/// Whether a method's result is one clients may cache (2026-07-28).
pub fn cacheable(method: &str) -> bool {
    matches!(
        method,
        "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "server/discover"
    )
}

/// The retry's params: its `requestState` and the response to the gateway's input request.
pub fn retry_of(body: &[u8]) -> Option<(String, Option<Value>)> {
    let msg: Value = serde_json::from_slice(body).ok()?;
    let params = msg.get("params")?;
    let state = params.get("requestState")?.as_str()?.to_owned();
    let response = params
        .get("inputResponses")
        .and_then(|r| r.get(INPUT_KEY))
        .cloned();
    Some((state, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampling_request_becomes_the_calls_input_required_answer() {
        let ask = r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{"maxTokens":5,"messages":[]}}"#;
        let (answer, asked) = input_required(ask, "\"c1\"", "tok").unwrap();
        let v: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["result"]["resultType"], "input_required");
        assert_eq!(v["result"]["requestState"], "tok");
        assert_eq!(
            v["result"]["inputRequests"][INPUT_KEY]["method"],
            "sampling/createMessage"
        );
        assert_eq!(
            v["result"]["inputRequests"][INPUT_KEY]["params"]["maxTokens"],
            5
        );
        assert_eq!(asked, "7");
        let note = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert!(input_required(note, "1", "t").is_none());
        let ping = r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#;
        assert!(input_required(ping, "1", "t").is_none());
    }

    #[test]
    fn answers_take_the_clients_id_and_the_2026_shape() {
        let list = r#"{"jsonrpc":"2.0","id":"gw-4","result":{"tools":[]}}"#;
        let v: Value =
            serde_json::from_str(&for_client(list, "\"gw-4\"", "1", true).unwrap()).unwrap();
        assert_eq!(v["id"], 1);
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(v["result"]["ttlMs"], 0);
        assert_eq!(v["result"]["cacheScope"], "private");
        let call =
            r#"{"jsonrpc":"2.0","id":"gw-4","result":{"content":[],"resultType":"complete"}}"#;
        let v: Value =
            serde_json::from_str(&for_client(call, "\"gw-4\"", "\"c\"", false).unwrap()).unwrap();
        assert_eq!(v["id"], "c");
        assert!(v["result"].get("ttlMs").is_none());
        let error = r#"{"jsonrpc":"2.0","id":"gw-4","error":{"code":1,"message":"x"}}"#;
        let v: Value =
            serde_json::from_str(&for_client(error, "\"gw-4\"", "7", false).unwrap()).unwrap();
        assert_eq!(
            (v["id"].clone(), v["error"]["code"].clone()),
            (json!(7), json!(1))
        );
        assert!(for_client(call, "\"gw-5\"", "1", false).is_none());
        assert!(
            for_client(
                r#"{"jsonrpc":"2.0","id":"gw-4","method":"x"}"#,
                "\"gw-4\"",
                "1",
                false
            )
            .is_none()
        );
        assert!(cacheable("tools/list") && !cacheable("tools/call"));
    }

    #[test]
    fn a_carried_request_gets_an_id_of_the_gateways_own() {
        let (a, b) = (own_id(), own_id());
        assert_ne!(a, b);
        let body = with_id(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, &a).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"].to_string(), a);
        assert_eq!(v["method"], "tools/list");
    }

    #[test]
    fn a_retry_carries_its_state_and_the_input_response() {
        let body = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","requestState":"s","inputResponses":{"gateway-input":{"role":"assistant"}}}}"#;
        let (state, response) = retry_of(body).unwrap();
        assert_eq!(state, "s");
        assert_eq!(response.unwrap()["role"], "assistant");
        assert!(
            retry_of(br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}"#).is_none()
        );
    }
}
