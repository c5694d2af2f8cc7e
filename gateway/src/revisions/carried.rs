//! A session client (2024-11-05 … 2025-11-25, Streamable HTTP or legacy
//! SSE) to servers that speak only 2026-07-28 (`Pool::stateless_only`):
//! the gateway answers `initialize` itself from the server's
//! `server/discover`, and keeps the session only in the id it seals (the
//! client's `initialize` params, so any replica serves it:
//! `Sessions::pin_carried`). Each request then goes to the servers
//! stateless, through the one exchange: the revision, the client's info
//! and capabilities in `_meta`, `MCP-Protocol-Version` and
//! `Mcp-Method`/`Mcp-Name` set; the answer loses the 2026-07-28 fields a
//! session client does not know. Notifications, `ping` and
//! `logging/setLevel` are answered here; there is no server stream (405),
//! and what needs one (`resources/subscribe`) or a round trip the gateway
//! does not carry yet (`input_required`) is refused naming both revisions.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::response;
use crate::metrics::Transport;
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::pool::revision::{self, Revision};
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::relay::{self, Failure, Sink};
use crate::session::binding::trim_init;
use crate::session::exchange::{Exchange, Message, Target};
use crate::session::{Binding, Caller, Sessions};
use crate::state::State;
use crate::upstream::Upstream;

/// The session revisions the gateway offers a session client.
const HANDSHAKE: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// One message of a session client for a stateless-only pool.
pub struct Carrying<'r> {
    pub pool: &'r Arc<Pool>,
    pub body: Bytes,
    pub rpc: &'r Rpc,
    pub caller: &'r Caller,
    /// The client's session (`None`: its `initialize`).
    pub session: Option<&'r Binding>,
    pub transport: Transport,
}

pub struct Carrier<'a> {
    pub sessions: &'a Sessions,
    pub upstream: &'a Upstream,
    pub state: &'a State,
}

impl Carrier<'_> {
    /// Serves one message; every refusal is written to `sink`.
    pub async fn serve<S: Sink>(
        &self,
        msg: Carrying<'_>,
        rev: Option<&Revision>,
        sink: &mut S,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let id = msg.rpc.id.as_deref();
        match self.route(&msg, rev, sink).await {
            Err(Failure::Reject(r)) => {
                relay::refuse(sink, &self.state.metrics, &r, id).await?;
                Ok(None)
            }
            other => other,
        }
    }

    async fn route<S: Sink>(
        &self,
        msg: &Carrying<'_>,
        rev: Option<&Revision>,
        sink: &mut S,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let rpc = msg.rpc;
        if rpc.batch {
            return Err(Reject::Revisions(format!(
                "batches are not carried to a server that speaks only MCP {}",
                revision::STATELESS
            ))
            .into());
        }
        let answer = |result: Value| Some(response(rpc.id.as_deref(), result));
        match (&rpc.method, msg.session) {
            (Method::Initialize, _) => {
                let rev = rev.ok_or(Reject::NoBackend)?;
                let params = jsonrpc::params_of(&msg.body).unwrap_or("{}");
                let token = self
                    .sessions
                    .pin_carried(msg.pool, &msg.caller.principal, &trim_init(params))
                    .ok_or(Reject::BadGateway)?;
                let result = initialize_result(rev, params);
                sink.reply(answer(result), Some(&token)).await?;
                Ok(None)
            }
            (_, None) => Err(Reject::BadRequest("this message needs a session").into()),
            (Method::Response, _) => Err(Reject::AnswerUndeliverable.into()),
            (m, _) if m.is_notification() => sink.reply(None, None).await.map(|()| None),
            (Method::Ping, _) => sink.reply(answer(json!({})), None).await.map(|()| None),
            // 2026-07-28 sets the level per request; the servers get none, so send no logs.
            (Method::Other(m), _) if m == "logging/setLevel" => {
                sink.reply(answer(json!({})), None).await.map(|()| None)
            }
            (Method::Other(m), _) if m == "resources/subscribe" || m == "resources/unsubscribe" => {
                Err(Reject::Revisions(format!(
                    "{m} is not carried to a server that speaks only MCP {} (its updates need subscriptions/listen, which a session client does not speak)",
                    revision::STATELESS
                ))
                .into())
            }
            (_, Some(session)) => self.forward(msg, session, sink).await,
        }
    }

    /// A request, sent stateless: its `_meta` says the revision, and the
    /// client's info and capabilities from the session's `initialize`.
    async fn forward<S: Sink>(
        &self,
        msg: &Carrying<'_>,
        session: &Binding,
        sink: &mut S,
    ) -> Result<Option<Arc<BackendState>>, Failure> {
        let rpc = msg.rpc;
        let body = enveloped(&msg.body, session.init()).ok_or(Reject::Invalid(
            "a request's params must be an object".into(),
        ))?;
        let method = rpc.method.as_str().unwrap_or_default();
        let name = match &rpc.method {
            Method::ToolsCall { name } | Method::PromptsGet { name } => Some(name.as_str()),
            Method::ResourcesRead { uri } => Some(uri.as_str()),
            _ => None,
        };
        let client_id = rpc.id_text().unwrap_or("null");
        let divert = |data: &str| handshake_shape(data, client_id);
        let out = Message {
            version: Some(revision::STATELESS),
            mcp: Some((method, name)),
            divert: Some(&divert),
            ..Message::gateway(msg.pool, body, Some(rpc), msg.caller, msg.transport)
        };
        let exchange = Exchange {
            sessions: self.sessions,
            upstream: self.upstream,
            state: self.state,
        };
        let mut speaking = super::Speaking { inner: sink };
        let outcome = exchange
            .run(&out, Target::Anywhere { seal: false }, &mut speaking)
            .await?;
        Ok(outcome.backend)
    }
}

/// The gateway's `initialize` result for a stateless-only server: the
/// revision the client asked when it is one the gateway speaks (else the
/// newest), the server's capabilities but what needs a server stream
/// (subscriptions, list-changed notices), its info and instructions.
fn initialize_result(rev: &Revision, params: &str) -> Value {
    let asked = jsonrpc::protocol_version(params);
    let version = match asked.as_deref() {
        Some(v) if HANDSHAKE.contains(&v) => v,
        _ => revision::NEWEST_SESSION,
    };
    let mut capabilities = match &rev.capabilities {
        Value::Object(c) => c.clone(),
        _ => Map::new(),
    };
    for kind in ["tools", "prompts", "resources"] {
        if let Some(Value::Object(c)) = capabilities.get_mut(kind) {
            c.remove("listChanged");
            c.remove("subscribe");
        }
    }
    capabilities.remove("logging");
    let server_info = rev
        .server_info
        .clone()
        .unwrap_or_else(|| json!({"name": "mcp-server", "version": ""}));
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": server_info,
    });
    if let Some(text) = &rev.instructions {
        result["instructions"] = text.as_str().into();
    }
    result
}

/// The request with the 2026-07-28 `_meta` a stateless server needs.
fn enveloped(body: &[u8], init: &str) -> Option<Bytes> {
    let mut msg: Value = serde_json::from_slice(body).ok()?;
    let init: Value = serde_json::from_str(init).unwrap_or(Value::Null);
    let obj = msg.as_object_mut()?;
    let params = obj.entry("params").or_insert_with(|| json!({}));
    let meta = params
        .as_object_mut()?
        .entry("_meta")
        .or_insert_with(|| json!({}))
        .as_object_mut()?;
    meta.insert(
        "io.modelcontextprotocol/protocolVersion".into(),
        revision::STATELESS.into(),
    );
    let info = init.get("clientInfo").cloned();
    meta.insert(
        "io.modelcontextprotocol/clientInfo".into(),
        info.unwrap_or_else(|| json!({"name": "mcp-gateway", "version": "1"})),
    );
    let capabilities = init.get("capabilities").cloned();
    meta.insert(
        "io.modelcontextprotocol/clientCapabilities".into(),
        capabilities.unwrap_or_else(|| json!({})),
    );
    Some(Bytes::from(msg.to_string()))
}

/// A stateless server's answer as a session client knows it: without
/// `resultType`, `ttlMs` and `cacheScope`; an `input_required` answer (the
/// server wants input mid-call) becomes an error naming both revisions.
fn handshake_shape(data: &str, id: &str) -> Option<String> {
    let mut msg: Value = serde_json::from_str(data).ok()?;
    let id: Value = serde_json::from_str(id).ok()?;
    if msg.get("method").is_some() || msg.get("id") != Some(&id) {
        return None;
    }
    let result = msg.get_mut("result")?.as_object_mut()?;
    if result.get("resultType").and_then(Value::as_str) == Some("input_required") {
        let error = json!({
            "code": -32601,
            "message": format!(
                "the server asked for input mid-call (MCP {} input_required), which the gateway does not carry to a session client yet",
                revision::STATELESS
            ),
        });
        return Some(json!({"jsonrpc": "2.0", "id": id, "error": error}).to_string());
    }
    result.remove("resultType");
    result.remove("ttlMs");
    result.remove("cacheScope");
    Some(msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev() -> Revision {
        Revision {
            stateless: true,
            sessions: false,
            versions: vec![revision::STATELESS.into()],
            capabilities: json!({"tools": {"listChanged": true}, "resources": {"subscribe": true}, "logging": {}}),
            server_info: Some(json!({"name": "s", "version": "1"})),
            instructions: Some("hi".into()),
            learned_ms: 0,
        }
    }

    #[test]
    fn initialize_is_answered_in_the_clients_revision_without_what_needs_a_stream() {
        let r = initialize_result(
            &rev(),
            r#"{"protocolVersion":"2025-06-18","capabilities":{}}"#,
        );
        assert_eq!(r["protocolVersion"], "2025-06-18");
        assert!(r["capabilities"]["tools"].get("listChanged").is_none());
        assert!(r["capabilities"]["resources"].get("subscribe").is_none());
        assert!(r["capabilities"].get("logging").is_none());
        assert_eq!(r["serverInfo"]["name"], "s");
        assert_eq!(r["instructions"], "hi");
        let r = initialize_result(&rev(), r#"{"protocolVersion":"2030-01-01"}"#);
        assert_eq!(r["protocolVersion"], revision::NEWEST_SESSION);
    }

    #[test]
    fn a_request_carries_the_sessions_client_in_meta() {
        let init = r#"{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"2"}}"#;
        let body = enveloped(br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#, init).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let meta = &v["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"],
            revision::STATELESS
        );
        assert_eq!(meta["io.modelcontextprotocol/clientInfo"]["name"], "c");
        assert!(
            meta["io.modelcontextprotocol/clientCapabilities"]
                .get("sampling")
                .is_some()
        );
        let kept = enveloped(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":1}}}"#, init).unwrap();
        let v: Value = serde_json::from_slice(&kept).unwrap();
        assert_eq!(v["params"]["_meta"]["progressToken"], 1);
        assert_eq!(v["params"]["name"], "x");
    }

    #[test]
    fn answers_lose_the_stateless_fields_and_input_required_is_refused() {
        let a = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[],"resultType":"complete","ttlMs":0,"cacheScope":"private"}}"#;
        let v: Value = serde_json::from_str(&handshake_shape(a, "3").unwrap()).unwrap();
        assert_eq!(v["result"], json!({"tools": []}));
        let ir = r#"{"jsonrpc":"2.0","id":3,"result":{"resultType":"input_required","requestState":"s"}}"#;
        let v: Value = serde_json::from_str(&handshake_shape(ir, "3").unwrap()).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(revision::STATELESS)
        );
        assert!(handshake_shape(a, "4").is_none());
    }
}
