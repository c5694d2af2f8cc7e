//! A JSON-RPC body, read once. [`parse`] checks that the body is one
//! JSON-RPC 2.0 message (or a batch of them) and keeps what the gateway acts
//! on: the method as a [`Method`], the request id (as raw JSON, so an error
//! answer echoes it exactly) and, for `tools/call`, the tool's name. It
//! deserializes into borrowed fields and skips everything else, so no JSON
//! tree is built. [`check_headers`] holds the 2026-07-28 `Mcp-Method` /
//! `Mcp-Name` headers to the body.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::reject::Reject;

/// What a message asks for. Methods the gateway treats specially have their
/// own variant; the rest keep their name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Initialize,
    Initialized,
    Ping,
    ToolsList,
    ToolsCall {
        name: String,
    },
    ResourcesList,
    ResourcesRead {
        uri: String,
    },
    ResourceTemplatesList,
    PromptsList,
    PromptsGet {
        name: String,
    },
    ServerDiscover,
    Cancelled,
    /// Another request.
    Other(String),
    /// Another notification.
    Notification(String),
    /// A client's response (to a server→client request).
    Response,
}

/// Longest tool name the MCP specification allows (2025-11-25, "Tool
/// Names": 1 to 128 characters). A `tools/call` naming a longer (or empty)
/// one is refused: no server the gateway fronts can have listed it.
pub const MAX_TOOL_NAME: usize = 128;

/// The one field of `params` the gateway routes a message by (`name` or
/// `uri`). Deserialized by serde's derived visitor, which refuses a
/// duplicate key, a wrong type (`null` included) and a missing key, so the
/// gateway never acts on one reading of a body while a server acts on
/// another. Every other key is skipped unread.
#[derive(Deserialize)]
struct NameParam<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct UriParam<'a> {
    #[serde(borrow)]
    uri: Cow<'a, str>,
}

/// Reads `params` as an object of the shape `T` wants.
fn routing_params<'a, T: Deserialize<'a>>(
    method: &str,
    params: Option<&'a RawValue>,
) -> Result<T, Reject> {
    let params = params
        .map(RawValue::get)
        .filter(|p| p.starts_with('{'))
        .ok_or_else(|| Reject::Invalid(format!("{method}: \"params\" must be an object")))?;
    serde_json::from_str(params).map_err(|e| Reject::Invalid(format!("{method}: \"params\": {e}")))
}

impl Method {
    fn from_wire(
        method: &str,
        params: Option<&RawValue>,
        is_request: bool,
    ) -> Result<Method, Reject> {
        let name = |m: &str| routing_params::<NameParam>(m, params).map(|p| p.name.into_owned());
        Ok(match method {
            "initialize" => Method::Initialize,
            "notifications/initialized" => Method::Initialized,
            "notifications/cancelled" => Method::Cancelled,
            "ping" => Method::Ping,
            "tools/list" => Method::ToolsList,
            "tools/call" => {
                let name = name(method)?;
                let chars = name.chars().count();
                if chars == 0 || chars > MAX_TOOL_NAME {
                    return Err(Reject::Invalid(format!(
                        "tools/call: a tool name has 1 to {MAX_TOOL_NAME} characters ({chars} given)"
                    )));
                }
                Method::ToolsCall { name }
            }
            "resources/list" => Method::ResourcesList,
            "resources/read" => Method::ResourcesRead {
                uri: routing_params::<UriParam>(method, params)?.uri.into_owned(),
            },
            "resources/templates/list" => Method::ResourceTemplatesList,
            "prompts/list" => Method::PromptsList,
            "prompts/get" => Method::PromptsGet {
                name: name(method)?,
            },
            "server/discover" => Method::ServerDiscover,
            other if is_request => Method::Other(other.to_owned()),
            other => Method::Notification(other.to_owned()),
        })
    }

    /// A notification from the client (no id, nothing answers it).
    pub fn is_notification(&self) -> bool {
        matches!(
            self,
            Method::Initialized | Method::Cancelled | Method::Notification(_)
        )
    }

    /// The method's wire name (`None` for a response).
    pub fn as_str(&self) -> Option<&str> {
        Some(match self {
            Method::Initialize => "initialize",
            Method::Initialized => "notifications/initialized",
            Method::Cancelled => "notifications/cancelled",
            Method::Ping => "ping",
            Method::ToolsList => "tools/list",
            Method::ToolsCall { .. } => "tools/call",
            Method::ResourcesList => "resources/list",
            Method::ResourcesRead { .. } => "resources/read",
            Method::ResourceTemplatesList => "resources/templates/list",
            Method::PromptsList => "prompts/list",
            Method::PromptsGet { .. } => "prompts/get",
            Method::ServerDiscover => "server/discover",
            Method::Other(m) | Method::Notification(m) => m,
            Method::Response => return None,
        })
    }

    /// Its label in the latency histograms: an index into `metrics::METHODS`.
    pub fn metric_index(&self) -> usize {
        match self {
            Method::Initialize => 0,
            Method::Initialized => 1,
            Method::Cancelled => 2,
            Method::Ping => 3,
            Method::ToolsList => 4,
            Method::ToolsCall { .. } => 5,
            Method::ResourcesList => 6,
            Method::ResourcesRead { .. } => 7,
            Method::ResourceTemplatesList => 8,
            Method::PromptsList => 9,
            Method::PromptsGet { .. } => 10,
            Method::ServerDiscover => 11,
            Method::Other(_) => 12,
            Method::Notification(_) => 13,
            Method::Response => 14,
        }
    }

    /// The name the 2026-07-28 `Mcp-Name` header must carry, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Method::ToolsCall { name } | Method::PromptsGet { name } => Some(name),
            Method::ResourcesRead { uri } => Some(uri),
            _ => None,
        }
    }
}

/// What the gateway knows of a body after [`parse`].
#[derive(Debug, Clone)]
pub struct Rpc {
    /// The method of the (first) message.
    pub method: Method,
    /// The request id as raw JSON; `None` for notifications and responses.
    pub id: Option<Box<RawValue>>,
    /// The body is a batch (2025-03-26 allowed them; 2025-06-18 removed them).
    pub batch: bool,
    /// The methods of a batch's other messages: every policy step reads
    /// them as it reads the first.
    pub rest: Vec<Method>,
}

impl Rpc {
    pub fn is_initialize(&self) -> bool {
        self.method == Method::Initialize
    }

    /// The method of every message in the body.
    pub fn methods(&self) -> impl Iterator<Item = &Method> {
        std::iter::once(&self.method).chain(&self.rest)
    }

    /// The request id as JSON text (`None` for notifications and responses).
    pub fn id_text(&self) -> Option<&str> {
        self.id.as_deref().map(RawValue::get)
    }
}

/// The top-level keys of one message. serde's derived visitor refuses a
/// duplicate key; [`present`] keeps an explicit `null` apart from a missing
/// key, so `"method": null` is a wrong type, not an absent method.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// A key that is there, whatever its value (`null` too).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn invalid(msg: &str) -> Reject {
    Reject::Invalid(msg.to_owned())
}

/// JSON-RPC ids are strings or numbers (`null` only where no id is known).
fn id_is_well_typed(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9')) || id.get() == "null"
}

fn check(raw: &RawValue) -> Result<Rpc, Reject> {
    if !raw.get().starts_with('{') {
        return Err(invalid("a JSON-RPC message must be an object"));
    }
    let wire: Wire = serde_json::from_str(raw.get())
        .map_err(|e| Reject::Invalid(format!("not a JSON-RPC message: {e}")))?;
    if wire.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    if wire.id.is_some_and(|id| !id_is_well_typed(id)) {
        return Err(invalid("\"id\" must be a string or a number"));
    }
    let id = wire.id.filter(|v| v.get() != "null");
    match wire.method {
        Some(m) => {
            let name: Cow<str> = serde_json::from_str(m.get())
                .map_err(|_| invalid("\"method\" must be a non-empty string"))?;
            if name.is_empty() {
                return Err(invalid("\"method\" must be a non-empty string"));
            }
            Ok(Rpc {
                method: Method::from_wire(&name, wire.params, id.is_some())?,
                id: id.map(RawValue::to_owned),
                batch: false,
                rest: Vec::new(),
            })
        }
        None if id.is_some() && (wire.result.is_some() || wire.error.is_some()) => Ok(Rpc {
            method: Method::Response,
            id: None,
            batch: false,
            rest: Vec::new(),
        }),
        None => Err(invalid(
            "a message needs \"method\" (request/notification) or \"result\"/\"error\" (response)",
        )),
    }
}

/// Checks a body and reads what the gateway needs from it.
pub fn parse(body: &[u8]) -> Result<Rpc, Reject> {
    let raw: &RawValue =
        serde_json::from_slice(body).map_err(|e| Reject::Parse(format!("invalid JSON: {e}")))?;
    if raw.get().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(raw.get())
            .map_err(|e| Reject::Parse(format!("invalid JSON: {e}")))?;
        let mut messages = items.iter().map(|item| check(item));
        let mut rpc = messages.next().ok_or_else(|| invalid("an empty batch"))??;
        for other in messages {
            rpc.rest.push(other?.method);
        }
        rpc.batch = true;
        if rpc.methods().any(|m| *m == Method::Initialize) {
            return Err(invalid("initialize cannot be part of a batch"));
        }
        return Ok(rpc);
    }
    check(raw)
}

/// Whether a revision has JSON-RPC batches: 2025-03-26 only (and a
/// request without `MCP-Protocol-Version` is 2025-03-26); 2025-06-18
/// removed them and 2026-07-28 carries one message per request.
pub fn has_batches(version: Option<&str>) -> bool {
    version.is_none_or(|v| v <= "2025-03-26")
}

/// A batch from a client of a revision without batches is refused, naming it.
pub fn check_batch(rpc: &Rpc, version: Option<&str>) -> Result<(), Reject> {
    if rpc.batch && !has_batches(version) {
        let v = version.unwrap_or(ASSUMED_PROTOCOL_VERSION);
        return Err(Reject::Invalid(format!(
            "JSON-RPC batches were removed in 2025-06-18 and this request speaks {v}: send one message per request"
        )));
    }
    Ok(())
}

/// The 2026-07-28 headers, when present, must say what the body says.
pub fn check_headers(rpc: &Rpc, method: Option<&str>, name: Option<&str>) -> Result<(), Reject> {
    if rpc.batch && (method.is_some() || name.is_some()) {
        return Err(invalid(
            "a batch cannot carry Mcp-Method or Mcp-Name (one message per request)",
        ));
    }
    if let (Some(h), Some(m)) = (method, rpc.method.as_str())
        && h != m
    {
        return Err(Reject::Invalid(format!(
            "Mcp-Method header '{h}' does not match body method '{m}'"
        )));
    }
    if let (Some(h), Some(n)) = (name, rpc.method.name())
        && h != n
    {
        return Err(Reject::Invalid(format!(
            "Mcp-Name header '{h}' does not match body name '{n}'"
        )));
    }
    Ok(())
}

/// Whether `data` (one message from a backend) is the response to the
/// request whose id is `id` (its JSON text). Reads only the top-level keys.
pub fn answers(data: &str, id: &str) -> bool {
    #[derive(Deserialize)]
    struct Reply<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
        #[serde(borrow, default)]
        method: Option<&'a RawValue>,
        #[serde(borrow, default)]
        result: Option<&'a RawValue>,
        #[serde(borrow, default)]
        error: Option<&'a RawValue>,
    }
    if !data.contains(id) {
        return false;
    }
    serde_json::from_str::<Reply>(data).is_ok_and(|r| {
        r.method.is_none()
            && (r.result.is_some() || r.error.is_some())
            && r.id.is_some_and(|v| v.get() == id)
    })
}

/// The revision a peer is assumed to speak when nothing says otherwise: a
/// Streamable HTTP request without `MCP-Protocol-Version` means 2025-03-26.
pub const ASSUMED_PROTOCOL_VERSION: &str = "2025-03-26";

/// The `protocolVersion` an object names at its top level: the `params` of
/// an `initialize` request, or the `result` of its answer. The one reader
/// of it in the gateway.
pub fn protocol_version(object: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Versioned<'a> {
        #[serde(rename = "protocolVersion", borrow)]
        protocol_version: Option<Cow<'a, str>>,
    }
    serde_json::from_str::<Versioned>(object)
        .ok()?
        .protocol_version
        .map(Cow::into_owned)
}

/// The `result` of a response message, as JSON text.
pub fn result_of(message: &str) -> Option<&str> {
    #[derive(Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        result: Option<&'a RawValue>,
    }
    serde_json::from_str::<Reply>(message)
        .ok()?
        .result
        .map(RawValue::get)
}

/// The `params` of a single message, as JSON text (for sealing `initialize`).
pub fn params_of(body: &[u8]) -> Option<&str> {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        params: Option<&'a RawValue>,
    }
    serde_json::from_slice::<Params>(body)
        .ok()?
        .params
        .map(RawValue::get)
}

/// A JSON-RPC response body with `result`; `id` is the request's id as
/// JSON text (already parsed once, so it is valid JSON).
pub fn result_body(id: &str, result: &serde_json::Value) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#
    ))
}

/// A JSON-RPC error response body.
pub fn error_body(id: Option<&RawValue>, code: i64, message: &str) -> Vec<u8> {
    error_body_with(id, code, message, None)
}

/// A JSON-RPC error response body with `data`.
pub fn error_body_with(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<serde_json::Value>,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Error<'a> {
        code: i64,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        jsonrpc: &'static str,
        id: Option<&'a RawValue>,
        error: Error<'a>,
    }
    serde_json::to_vec(&Body {
        jsonrpc: "2.0",
        id,
        error: Error {
            code,
            message,
            data,
        },
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_protocol_method_has_its_own_metric_label() {
        for name in crate::metrics::METHODS.iter().take(12) {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{name}","params":{{"name":"t","uri":"u"}}}}"#
            );
            let rpc = parse(body.as_bytes()).unwrap();
            assert_eq!(crate::metrics::METHODS[rpc.method.metric_index()], *name);
        }
        let other = parse(br#"{"jsonrpc":"2.0","id":1,"method":"x/y"}"#).unwrap();
        assert_eq!(
            crate::metrics::METHODS[other.method.metric_index()],
            "other_request"
        );
    }
    use proptest::prelude::*;

    #[test]
    fn reads_requests_tool_calls_notifications_and_responses() {
        let s = parse(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_agent","arguments":{}}}"#).unwrap();
        assert_eq!(
            s.method,
            Method::ToolsCall {
                name: "get_agent".into()
            }
        );
        assert_eq!(s.id.as_deref().map(RawValue::get), Some("7"));
        let n = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(n.method, Method::Initialized);
        assert!(n.id.is_none());
        let r = parse(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
        assert_eq!(r.method, Method::Response);
        let b = parse(
            br#"[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","method":"x/y"}]"#,
        )
        .unwrap();
        assert!(b.batch);
        assert_eq!(b.method, Method::Ping);
        assert_eq!(b.id.as_deref().map(RawValue::get), Some("\"a\""));
        let other = parse(br#"{"jsonrpc":"2.0","id":2,"method":"sampling/whatever"}"#).unwrap();
        assert_eq!(other.method, Method::Other("sampling/whatever".into()));
    }

    #[test]
    fn rejects_malformed_messages_with_the_right_code() {
        assert_eq!(parse(b"{not json").unwrap_err().code(), -32700);
        assert_eq!(parse(b"{} trailing").unwrap_err().code(), -32700);
        for bad in [
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"1.0","method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
            "[]",
            "42",
            r#"[{"jsonrpc":"2.0","method":"ok"}, 3]"#,
        ] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().code(), -32600, "{bad}");
        }
    }

    #[test]
    fn ambiguous_routing_fields_are_refused_never_guessed() {
        // Each of these reads one way to the gateway and another to some
        // server (most JSON parsers keep the last duplicate key).
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_agent","name":"delete_agent"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null,"name":"delete_agent"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_agent","n\u0061me":"delete_agent"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["delete_agent"]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["delete_agent"]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"a://x","uri":"a://y"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":null}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":null,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"params":{},"params":{"name":"x"},"method":"tools/call"}"#,
        ] {
            let refused = parse(bad.as_bytes()).expect_err(bad);
            assert_eq!((refused.status(), refused.code()), (400, -32600), "{bad}");
        }
        // Keys the gateway does not route by may repeat or be anything.
        let ok = parse(
            br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"uri":5,"name":"get_agent","arguments":{},"arguments":null}}"#,
        )
        .unwrap();
        assert_eq!(ok.method.name(), Some("get_agent"));
        let escaped = parse(
            br#"{"jsonrpc":"2.0","id":-3,"method":"tools/call","params":{"n\u0061me":"get_\u0061gent"}}"#,
        )
        .unwrap();
        assert_eq!(escaped.method.name(), Some("get_agent"));
    }

    #[test]
    fn tool_names_beyond_the_specs_length_are_refused() {
        let call = |name: &str| {
            parse(
                format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#
                )
                .as_bytes(),
            )
        };
        let longest = "t".repeat(MAX_TOOL_NAME);
        assert_eq!(
            call(&longest).unwrap().method.name(),
            Some(longest.as_str())
        );
        for bad in [
            String::new(),
            "t".repeat(MAX_TOOL_NAME + 1),
            "t".repeat(1 << 20),
        ] {
            let refused = call(&bad).unwrap_err();
            assert_eq!(refused.code(), -32600, "{} characters", bad.len());
            assert!(
                refused.to_string().contains("1 to 128 characters"),
                "{refused}"
            );
        }
    }

    #[test]
    fn headers_must_match_the_body() {
        let rpc = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_agent"}}"#,
        )
        .unwrap();
        assert!(check_headers(&rpc, Some("tools/call"), Some("get_agent")).is_ok());
        assert!(check_headers(&rpc, None, None).is_ok());
        assert!(check_headers(&rpc, Some("tools/list"), None).is_err());
        assert!(check_headers(&rpc, Some("tools/call"), Some("delete_agent")).is_err());
    }

    #[test]
    fn finds_the_response_to_a_request() {
        assert!(answers(r#"{"jsonrpc":"2.0","id":7,"result":{}}"#, "7"));
        assert!(answers(
            r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"x"}}"#,
            "\"a\""
        ));
        assert!(!answers(r#"{"jsonrpc":"2.0","id":70,"result":{}}"#, "7"));
        assert!(!answers(
            r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage"}"#,
            "7"
        ));
        assert!(!answers(
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":7}}"#,
            "7"
        ));
        assert!(!answers("not json 7", "7"));
    }

    #[test]
    fn the_protocol_version_is_read_from_params_and_results() {
        let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{}}}"#;
        let result = result_of(answer).unwrap();
        assert_eq!(protocol_version(result).as_deref(), Some("2025-06-18"));
        assert_eq!(protocol_version(r#"{"capabilities":{}}"#), None);
        assert_eq!(protocol_version("not json"), None);
        assert_eq!(result_of(r#"{"jsonrpc":"2.0","id":1,"error":{}}"#), None);
    }

    #[test]
    fn error_bodies_echo_the_id_exactly() {
        let id = RawValue::from_string("\"req-1\"".into()).unwrap();
        let body = error_body(Some(&id), -32600, "bad");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "req-1");
        assert_eq!(v["error"]["code"], -32600);
        let v: serde_json::Value = serde_json::from_slice(&error_body(None, 1, "x")).unwrap();
        assert!(v["id"].is_null());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Any bytes: an answer, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body);
        }

        /// JSON-looking input (objects and arrays of near-valid messages) never panics,
        /// and whatever parses has a method or is a response.
        #[test]
        fn near_valid_messages_never_panic(
            method in proptest::option::of("[a-z/]{0,12}"),
            id in proptest::option::of(prop_oneof![Just("1".to_string()), Just("\"x\"".to_string()), Just("null".to_string()), Just("{}".to_string())]),
            version in prop_oneof![Just("\"2.0\""), Just("\"1.0\""), Just("2")],
            batch in any::<bool>(),
        ) {
            let mut msg = format!("{{\"jsonrpc\":{version}");
            if let Some(m) = &method { msg.push_str(&format!(",\"method\":\"{m}\"")); }
            if let Some(i) = &id { msg.push_str(&format!(",\"id\":{i}")); }
            msg.push('}');
            let body = if batch { format!("[{msg}]") } else { msg };
            if let Ok(rpc) = parse(body.as_bytes()) {
                prop_assert!(rpc.method.as_str().is_some() || rpc.method == Method::Response);
            }
        }
    }
}
