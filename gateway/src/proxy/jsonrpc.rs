//! What the gateway reads from a JSON-RPC body it has buffered: whether it
//! is well formed, its method, and for `tools/call` the tool name. Used to
//! reject garbage before it reaches a backend, to check the 2026-07-28
//! `Mcp-Method`/`Mcp-Name` headers against the body, and for metrics.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RpcSummary {
    /// The method of the (first) request or notification; `None` for a response.
    pub method: Option<String>,
    /// `params.name` of a `tools/call` (or a `prompts/get`).
    pub name: Option<String>,
    /// The request id, as JSON, if the first message is a request.
    pub id: Option<Value>,
    /// How many messages the body holds (a 2025-03-26 batch may hold several).
    pub messages: usize,
}

impl RpcSummary {
    pub fn is_initialize(&self) -> bool {
        self.method.as_deref() == Some("initialize")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RpcError {
    /// Not JSON at all (-32700).
    Parse(String),
    /// JSON, but not a JSON-RPC 2.0 message (-32600).
    Invalid(String),
}

impl RpcError {
    pub fn code(&self) -> i64 {
        match self {
            RpcError::Parse(_) => -32700,
            RpcError::Invalid(_) => -32600,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            RpcError::Parse(m) | RpcError::Invalid(m) => m,
        }
    }
}

fn check_message(msg: &Value) -> Result<(), RpcError> {
    let obj = msg
        .as_object()
        .ok_or_else(|| RpcError::Invalid("a JSON-RPC message must be an object".into()))?;
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(RpcError::Invalid("\"jsonrpc\" must be \"2.0\"".into()));
    }
    match obj.get("method") {
        Some(Value::String(m)) if !m.is_empty() => Ok(()),
        Some(_) => Err(RpcError::Invalid(
            "\"method\" must be a non-empty string".into(),
        )),
        None if obj.contains_key("id")
            && (obj.contains_key("result") || obj.contains_key("error")) =>
        {
            Ok(())
        }
        None => Err(RpcError::Invalid(
            "a message needs \"method\" (request/notification) or \"result\"/\"error\" (response)"
                .into(),
        )),
    }
}

pub fn summarize(body: &[u8]) -> Result<RpcSummary, RpcError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RpcError::Parse(format!("invalid JSON: {e}")))?;
    let messages: Vec<&Value> = match &value {
        Value::Array(items) if items.is_empty() => {
            return Err(RpcError::Invalid("an empty batch".into()));
        }
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    for m in &messages {
        check_message(m)?;
    }
    let first = messages[0];
    let method = first
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let name = match method.as_deref() {
        Some("tools/call") | Some("prompts/get") => first
            .pointer("/params/name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some("resources/read") => first
            .pointer("/params/uri")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    let id = method.as_ref().and(first.get("id").cloned());
    Ok(RpcSummary {
        method,
        name,
        id,
        messages: messages.len(),
    })
}

/// A JSON-RPC error response body.
pub fn error_body(id: Option<&Value>, code: i64, message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": { "code": code, "message": message },
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_requests_and_tool_calls() {
        let s = summarize(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_agent","arguments":{}}}"#).unwrap();
        assert_eq!(s.method.as_deref(), Some("tools/call"));
        assert_eq!(s.name.as_deref(), Some("get_agent"));
        assert_eq!(s.id, Some(serde_json::json!(7)));
        let n = summarize(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.id, None);
        let r = summarize(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        assert_eq!(r.method, None);
    }

    #[test]
    fn rejects_malformed_messages() {
        assert!(matches!(summarize(b"{not json"), Err(RpcError::Parse(_))));
        assert!(matches!(
            summarize(br#"{"id":1,"method":"ping"}"#),
            Err(RpcError::Invalid(_))
        ));
        assert!(matches!(
            summarize(br#"{"jsonrpc":"2.0","id":1}"#),
            Err(RpcError::Invalid(_))
        ));
        assert!(matches!(
            summarize(br#"{"jsonrpc":"1.0","method":"x"}"#),
            Err(RpcError::Invalid(_))
        ));
        assert!(matches!(summarize(b"[]"), Err(RpcError::Invalid(_))));
        assert!(matches!(summarize(b"42"), Err(RpcError::Invalid(_))));
    }
}
