//! What a backend speaks: the MCP revisions it supports and how it
//! describes itself, learned by asking it as a client would — first
//! `server/discover` (2026-07-28, no session), else `initialize` (a
//! session, ended at once). Learned at health-check time ([`super::health::Observed`])
//! and again after [`STALE_MS`] or when the backend comes back; read by the
//! request path to decide whether a stateless request must be carried over a
//! session (`bridge/`), and shown in `/backends`.

use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::upstream::{self, Forwarded, Outgoing, SESSION_HEADER, Upstream};

/// The stateless revision.
pub const STATELESS: &str = "2026-07-28";
/// The revision the probe's `initialize` offers (the newest with sessions).
pub const NEWEST_SESSION: &str = "2025-11-25";
/// A backend's revision is asked again after this long.
pub const STALE_MS: u64 = 30_000;
/// Largest probe answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// What one backend speaks, as of `learned_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    /// Answers `server/discover` and takes requests without a session.
    pub stateless: bool,
    /// Opens sessions with `initialize`.
    pub sessions: bool,
    /// The revisions it names: `supportedVersions`, or the one `initialize` settled on.
    pub versions: Vec<String>,
    /// Its capabilities, `serverInfo` and `instructions`, as it gave them.
    pub capabilities: Value,
    pub server_info: Option<Value>,
    pub instructions: Option<String>,
    pub learned_ms: u64,
}

impl Revision {
    /// A backend that answered neither probe with a result (asked again
    /// after [`STALE_MS`], like any other).
    pub fn unknown(now_ms: u64) -> Self {
        Revision {
            stateless: false,
            sessions: false,
            versions: Vec::new(),
            capabilities: Value::Null,
            server_info: None,
            instructions: None,
            learned_ms: now_ms,
        }
    }

    /// The newest session revision it named (what a session opened there speaks).
    pub fn session_version(&self) -> Option<&str> {
        self.versions
            .iter()
            .filter(|v| v.as_str() < STATELESS)
            .max()
            .map(String::as_str)
    }

    /// For `/backends`.
    pub fn shown(&self) -> Value {
        json!({
            "versions": self.versions,
            "stateless": self.stateless,
            "sessions": self.sessions,
            "server": self.server_info.as_ref().and_then(|s| s.get("name")).cloned(),
        })
    }
}

/// A `server/discover` request with id `id`, as a stateless client sends it.
pub fn discover_body(id: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":"{id}","method":"server/discover","params":{{"_meta":{{"io.modelcontextprotocol/protocolVersion":"{STATELESS}","io.modelcontextprotocol/clientInfo":{{"name":"mcp-gateway-{id}","version":"1"}},"io.modelcontextprotocol/clientCapabilities":{{}}}}}}}}"#
    )
}

/// An `initialize` request with id `id` offering `version`.
pub fn initialize_body(id: &str, version: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":"{id}","method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"mcp-gateway-{id}","version":"1"}}}}}}"#
    )
}

/// Asks the backend at `addr` what it speaks. `Err`: it answered neither
/// `server/discover` nor `initialize` with a result.
pub async fn learn(upstream: &Upstream, addr: SocketAddr, now_ms: u64) -> Result<Revision, String> {
    let fwd = Forwarded::default();
    let discover = discover_body("revision");
    let stateless = Some(("server/discover", None));
    let (result, _) = probe(upstream, addr, &fwd, discover, Some(STATELESS), stateless).await?;
    if let Some(r) = result
        .as_ref()
        .filter(|r| r.get("supportedVersions").is_some())
    {
        return Ok(from_discover(r, now_ms));
    }
    let init = initialize_body("revision", NEWEST_SESSION);
    let (result, session) = probe(upstream, addr, &fwd, init, None, None).await?;
    let version = result
        .as_ref()
        .and_then(|r| r.get("protocolVersion"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(session) = session {
        end_probe(upstream, addr, &fwd, &session, version.as_deref()).await;
    }
    match (result, version) {
        (Some(r), Some(v)) => Ok(from_initialize(&r, v, now_ms)),
        _ => Err("neither server/discover nor initialize was answered with a result".into()),
    }
}

/// Ends a probe's session (so probes do not pile sessions up).
pub async fn end_probe(
    upstream: &Upstream,
    addr: SocketAddr,
    fwd: &Forwarded,
    session: &str,
    version: Option<&str>,
) {
    let ended = upstream
        .send(
            addr,
            Outgoing {
                session: Some(session),
                protocol_version: version,
                ..Outgoing::own(http::Method::DELETE, "/mcp", fwd)
            },
        )
        .await;
    if let Ok((_, mut rest)) = ended {
        let _ = rest.read_all(64 * 1024).await;
    }
}

/// One probe POST of the gateway's own: the result its answer holds (a
/// success status and a JSON-RPC result object, in JSON or an event
/// stream), and the session it opened.
pub async fn probe(
    upstream: &Upstream,
    addr: SocketAddr,
    fwd: &Forwarded,
    body: String,
    version: Option<&str>,
    mcp: Option<(&str, Option<&str>)>,
) -> Result<(Option<Value>, Option<String>), String> {
    let (parts, mut frames) = upstream
        .send(
            addr,
            Outgoing {
                protocol_version: version,
                mcp,
                accept: Some("application/json, text/event-stream"),
                content_type: Some("application/json"),
                body: Bytes::from(body),
                ..Outgoing::own(http::Method::POST, "/mcp", fwd)
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let messages = upstream::read_messages(&parts.headers, &mut frames, MAX_ANSWER).await;
    let opened = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let result = result_in(&messages).filter(|_| parts.status.is_success());
    Ok((result, opened))
}

/// The first JSON-RPC result object among an answer's messages.
fn result_in(messages: &[String]) -> Option<Value> {
    messages.iter().find_map(|m| {
        let mut v: Value = serde_json::from_str(m).ok()?;
        match v.get_mut("result")?.take() {
            r @ Value::Object(_) => Some(r),
            _ => None,
        }
    })
}

fn from_discover(r: &Value, now_ms: u64) -> Revision {
    let versions: Vec<String> = r["supportedVersions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let server_info = r
        .get("_meta")
        .and_then(|m| m.get("io.modelcontextprotocol/serverInfo"))
        .or_else(|| r.get("serverInfo"))
        .cloned();
    Revision {
        stateless: versions.iter().any(|v| v == STATELESS),
        sessions: versions.iter().any(|v| v.as_str() < STATELESS),
        versions,
        capabilities: r.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        server_info,
        instructions: r
            .get("instructions")
            .and_then(Value::as_str)
            .map(str::to_owned),
        learned_ms: now_ms,
    }
}

fn from_initialize(r: &Value, version: String, now_ms: u64) -> Revision {
    Revision {
        stateless: false,
        sessions: true,
        versions: vec![version],
        capabilities: r.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        server_info: r.get("serverInfo").cloned(),
        instructions: r
            .get("instructions")
            .and_then(Value::as_str)
            .map(str::to_owned),
        learned_ms: now_ms,
    }
}

/// A `server/discover` result (2026-07-28) for a server that speaks only
/// sessions, as the gateway gives it to a stateless client: the backend's
/// capabilities, server info and instructions; the stateless revision
/// first (the gateway carries it), then the backend's own.
pub fn discover_result(rev: &Revision) -> Value {
    let mut versions = vec![Value::from(STATELESS)];
    versions.extend(
        rev.versions
            .iter()
            .filter(|v| v.as_str() != STATELESS)
            .map(|v| Value::from(v.as_str())),
    );
    let mut capabilities = match &rev.capabilities {
        Value::Object(c) => c.clone(),
        _ => Map::new(),
    };
    // Removed in 2026-07-28 (subscriptions/listen replaces them): not offered.
    if let Some(Value::Object(r)) = capabilities.get_mut("resources") {
        r.remove("subscribe");
    }
    let mut result = json!({
        "supportedVersions": versions,
        "capabilities": capabilities,
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
    });
    if let Some(text) = &rev.instructions {
        result["instructions"] = text.as_str().into();
    }
    if let Some(info) = &rev.server_info {
        result["_meta"] = json!({"io.modelcontextprotocol/serverInfo": info});
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_found_in_json_and_in_sse() {
        let json = http::HeaderMap::new();
        let mut sse = http::HeaderMap::new();
        sse.insert("content-type", "text/event-stream".parse().unwrap());
        let of =
            |h: &http::HeaderMap, b: &[u8]| result_in(&upstream::messages_of(h, b, MAX_ANSWER));
        let r = of(
            &json,
            br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"x"}}"#,
        );
        assert_eq!(r.unwrap()["protocolVersion"], "x");
        assert!(
            of(
                &sse,
                b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"
            )
            .is_some()
        );
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"draining"}}"#;
        assert!(of(&json, error).is_none());
        assert!(of(&json, b"<html>Bad Request</html>").is_none());
        assert!(of(&sse, b"data: {\"result\": 3}\n\n").is_none());
    }

    #[test]
    fn a_session_server_is_offered_to_stateless_clients_under_both_revisions() {
        let init = json!({"protocolVersion":"2025-06-18","capabilities":{"tools":{"listChanged":true},"resources":{"subscribe":true}},"serverInfo":{"name":"everything","version":"2"},"instructions":"hi"});
        let rev = from_initialize(&init, "2025-06-18".into(), 1);
        assert!(!rev.stateless && rev.sessions);
        assert_eq!(rev.session_version(), Some("2025-06-18"));
        let d = discover_result(&rev);
        assert_eq!(d["supportedVersions"], json!(["2026-07-28", "2025-06-18"]));
        assert_eq!(d["capabilities"]["tools"]["listChanged"], true);
        assert!(d["capabilities"]["resources"].get("subscribe").is_none());
        assert_eq!(
            d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "everything"
        );
        assert_eq!(d["instructions"], "hi");
    }

    #[test]
    fn discover_tells_whether_sessions_are_spoken_too() {
        let only = json!({"supportedVersions":["2026-07-28"],"capabilities":{}});
        let rev = from_discover(&only, 1);
        assert!(rev.stateless && !rev.sessions);
        assert_eq!(rev.session_version(), None);
        let both =
            json!({"supportedVersions":["2026-07-28","2025-11-25","2025-06-18"],"capabilities":{}});
        let rev = from_discover(&both, 1);
        assert!(rev.stateless && rev.sessions);
        assert_eq!(rev.session_version(), Some("2025-11-25"));
    }
}
