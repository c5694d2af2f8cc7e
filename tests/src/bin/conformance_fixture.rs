//! `conformance-fixture`: an MCP server (rmcp, Streamable HTTP on `/mcp`)
//! with the fixtures the MCP conformance suite's server scenarios call —
//! `test_*` tools, `test://` resources and a template, prompts, completion,
//! subscriptions, logging, and server→client sampling and elicitation —
//! written from the suite's scenario texts. A test peer, not a product: the
//! conformance run puts it behind the gateway as a pool.
//!
//!     conformance-fixture [PORT]    # prints "listening on http://127.0.0.1:PORT/mcp"

#![allow(deprecated)] // the suite still tests sampling, logging and resources/subscribe

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ElicitRequestParams, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, LoggingMessageNotificationParam, PaginatedRequestParams,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    ServerCapabilities, ServerConfig, SetLevelRequestParams, SubscribeRequestParams,
    UnsubscribeRequestParams,
};
use rmcp::model::{CreateMessageRequest, ServerRequest};
use rmcp::service::{PeerRequestOptions, RequestContext, ServiceError};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A 1×1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV header with one silent sample.
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQIAAAAAAA==";

fn from<T: DeserializeOwned>(v: Value) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}

fn text_result(text: impl Into<String>) -> Result<CallToolResponse, ErrorData> {
    Ok(from::<CallToolResult>(json!({"content": [{"type": "text", "text": text.into()}]}))?.into())
}

/// A string argument, "" when absent.
fn str_arg(args: &serde_json::Map<String, Value>, name: &str) -> String {
    args.get(name)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Tool calls `gw_wait_for_cancel` saw cancelled, in this process.
static CANCELLED: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Default)]
struct Fixture;

impl Fixture {
    fn progress_token(
        request: &CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Option<Value> {
        let from_params = serde_json::to_value(&request.meta).ok();
        let from_context = serde_json::to_value(&context.meta).ok();
        [from_params, from_context]
            .into_iter()
            .flatten()
            .find_map(|m| m.get("progressToken").cloned())
    }

    async fn elicit(
        context: &RequestContext<RoleServer>,
        params: Value,
    ) -> Result<Value, ErrorData> {
        let params: ElicitRequestParams = from(params)?;
        let out = context
            .peer
            .create_elicitation(params)
            .await
            .map_err(|e| ErrorData::internal_error(format!("elicitation failed: {e}"), None))?;
        serde_json::to_value(out).map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }
}

fn tools() -> Value {
    let none = json!({"type": "object", "properties": {}});
    let tool = |name: &str, description: &str, schema: &Value| json!({"name": name, "description": description, "inputSchema": schema});
    json!({"tools": [
        tool("test_simple_text", "Returns simple text", &none),
        tool("test_image_content", "Returns an image", &none),
        tool("test_audio_content", "Returns audio", &none),
        tool("test_embedded_resource", "Returns an embedded resource", &none),
        tool("test_multiple_content_types", "Returns text, image and resource", &none),
        tool("test_error_handling", "Always fails", &none),
        tool("test_tool_with_progress", "Reports progress", &none),
        tool("test_tool_with_logging", "Sends log messages", &none),
        tool("test_sampling", "Asks the client's LLM",
             &json!({"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]})),
        tool("test_elicitation", "Asks the user",
             &json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]})),
        tool("test_elicitation_sep1034_defaults", "Elicitation with defaults", &none),
        tool("test_elicitation_sep1330_enums", "Elicitation with every enum form", &none),
    ]})
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        let capabilities: ServerCapabilities = serde_json::from_value(json!({
            "tools": {}, "resources": {"subscribe": true}, "prompts": {},
            "completions": {}, "logging": {}
        }))
        .unwrap_or_default();
        ServerConfig::new(capabilities).with_server_info(Implementation::new(
            "conformance-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        from(tools())
    }

    #[allow(deprecated)] // sampling and logging, as the suite's scenarios use them
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let arg = |name: &str| str_arg(&args, name);
        match request.name.as_ref() {
            "test_simple_text" => text_result("This is a simple text response for testing."),
            "test_image_content" => Ok(from::<CallToolResult>(
                json!({"content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]}),
            )?
            .into()),
            "test_audio_content" => Ok(from::<CallToolResult>(
                json!({"content": [{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]}),
            )?
            .into()),
            "test_embedded_resource" => Ok(from::<CallToolResult>(json!({"content": [{
                "type": "resource",
                "resource": {"uri": "test://embedded-resource", "mimeType": "text/plain",
                             "text": "This is an embedded resource content."}}]}))?
            .into()),
            "test_multiple_content_types" => Ok(from::<CallToolResult>(json!({"content": [
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": PNG, "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                    "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}]}))?
            .into()),
            "test_error_handling" => Ok(from::<CallToolResult>(json!({"isError": true, "content": [
                {"type": "text", "text": "This tool intentionally returns an error for testing"}]}))?
            .into()),
            "test_tool_with_progress" => {
                let token = Self::progress_token(&request, &context);
                for (i, progress) in [0, 50, 100].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(token) = &token {
                        let p: ProgressNotificationParam =
                            from(json!({"progressToken": token, "progress": progress, "total": 100}))?;
                        let _ = context.peer.notify_progress(p).await;
                    }
                }
                text_result("Progress tool completed")
            }
            "test_tool_with_logging" => {
                for (i, message) in ["Tool execution started", "Tool processing data", "Tool execution completed"]
                    .into_iter()
                    .enumerate()
                {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let p: LoggingMessageNotificationParam =
                        from(json!({"level": "info", "data": message}))?;
                    let _ = context.peer.notify_logging_message(p).await;
                }
                text_result("Logging tool completed")
            }
            "test_sampling" => {
                let params = from(json!({
                    "messages": [{"role": "user", "content": {"type": "text", "text": arg("prompt")}}],
                    "maxTokens": 100
                }))?;
                let out = context
                    .peer
                    .create_message(params)
                    .await
                    .map_err(|e| ErrorData::internal_error(format!("sampling failed: {e}"), None))?;
                let out = serde_json::to_value(out).unwrap_or_default();
                let text = out["content"]["text"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| out["content"].to_string());
                text_result(format!("LLM response: {text}"))
            }
            "test_elicitation" => {
                let out = Self::elicit(&context, json!({
                    "message": arg("message"),
                    "requestedSchema": {"type": "object", "properties": {
                        "username": {"type": "string", "description": "User's response"},
                        "email": {"type": "string", "description": "User's email address"}},
                        "required": ["username", "email"]}
                }))
                .await?;
                text_result(format!("User response: action={}, content={}", out["action"], out["content"]))
            }
            "test_elicitation_sep1034_defaults" => {
                let out = Self::elicit(&context, json!({
                    "message": "Please review and update the form fields with defaults",
                    "requestedSchema": {"type": "object", "properties": {
                        "name": {"type": "string", "description": "User name", "default": "John Doe"},
                        "age": {"type": "integer", "description": "User age", "default": 30},
                        "score": {"type": "number", "description": "User score", "default": 95.5},
                        "status": {"type": "string", "description": "User status",
                                   "enum": ["active", "inactive", "pending"], "default": "active"},
                        "verified": {"type": "boolean", "description": "Verification status", "default": true}}}
                }))
                .await?;
                text_result(format!("Elicitation completed: action={}, content={}", out["action"], out["content"]))
            }
            "test_elicitation_sep1330_enums" => {
                let out = Self::elicit(&context, json!({
                    "message": "Please select options from the enum fields",
                    "requestedSchema": {"type": "object", "properties": {
                        "untitledSingle": {"type": "string", "description": "Select one option",
                            "enum": ["option1", "option2", "option3"]},
                        "titledSingle": {"type": "string", "description": "Select one option with titles",
                            "oneOf": [{"const": "value1", "title": "First Option"},
                                      {"const": "value2", "title": "Second Option"},
                                      {"const": "value3", "title": "Third Option"}]},
                        "legacyEnum": {"type": "string", "description": "Select one option (legacy)",
                            "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"]},
                        "untitledMulti": {"type": "array", "description": "Select multiple options",
                            "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                        "titledMulti": {"type": "array", "description": "Select multiple options with titles",
                            "items": {"anyOf": [{"const": "value1", "title": "First Choice"},
                                                {"const": "value2", "title": "Second Choice"},
                                                {"const": "value3", "title": "Third Choice"}]}}}}
                }))
                .await?;
                text_result(format!("Elicitation completed: action={}, content={}", out["action"], out["content"]))
            }
            // Gateway test hooks, not conformance fixtures (unlisted).
            "gw_wait_for_cancel" => {
                // Runs until the client cancels it (notifications/cancelled)
                // or 30 s pass; counts the cancellations it saw.
                tokio::select! {
                    _ = context.ct.cancelled() => {
                        CANCELLED.fetch_add(1, Ordering::SeqCst);
                        text_result("cancelled")
                    }
                    _ = tokio::time::sleep(Duration::from_secs(30)) => text_result("never cancelled"),
                }
            }
            "gw_cancellations" => text_result(CANCELLED.load(Ordering::SeqCst).to_string()),
            "gw_sampling_times_out" => {
                // Asks the client's LLM with a short timeout: rmcp cancels its
                // request (notifications/cancelled to the client) when it expires.
                let params = from(json!({
                    "messages": [{"role": "user", "content": {"type": "text", "text": "never answered"}}],
                    "maxTokens": 10
                }))?;
                let asked = context
                    .peer
                    .send_request_with_option(
                        ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params)),
                        PeerRequestOptions::with_timeout(Duration::from_millis(300)),
                    )
                    .await
                    .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
                match asked.await_response().await {
                    Err(ServiceError::Timeout { .. }) => text_result("sampling timed out"),
                    Err(e) => text_result(format!("sampling failed: {e}")),
                    Ok(_) => text_result("sampling answered"),
                }
            }
            other => Err(ErrorData::invalid_params(format!("unknown tool {other}"), None)),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        from(json!({"resources": [
            {"uri": "test://static-text", "name": "static-text", "description": "A static text resource",
             "mimeType": "text/plain"},
            {"uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource",
             "mimeType": "image/png"},
            {"uri": "test://watched-resource", "name": "watched-resource", "description": "A resource to subscribe to",
             "mimeType": "text/plain"}
        ]}))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        from(json!({"resourceTemplates": [
            {"uriTemplate": "test://template/{id}/data", "name": "template-data",
             "description": "Data for an id", "mimeType": "application/json"}
        ]}))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.to_string();
        let contents = match uri.as_str() {
            "test://static-text" => json!([{"uri": uri, "mimeType": "text/plain",
                "text": "This is the content of the static text resource."}]),
            "test://static-binary" => json!([{"uri": uri, "mimeType": "image/png", "blob": PNG}]),
            "test://watched-resource" => {
                json!([{"uri": uri, "mimeType": "text/plain", "text": "watched"}])
            }
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
            {
                Some(id) => json!([{"uri": uri, "mimeType": "application/json",
                    "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()}]),
                None => {
                    return Err(ErrorData::resource_not_found(
                        format!("unknown resource {uri}"),
                        None,
                    ));
                }
            },
        };
        Ok(from::<ReadResourceResult>(json!({"contents": contents}))?.into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        from(json!({"prompts": [
            {"name": "test_simple_prompt", "description": "A simple prompt"},
            {"name": "test_prompt_with_arguments", "description": "A prompt with arguments", "arguments": [
                {"name": "arg1", "description": "First test argument", "required": true},
                {"name": "arg2", "description": "Second test argument", "required": true}]},
            {"name": "test_prompt_with_embedded_resource", "description": "A prompt with a resource", "arguments": [
                {"name": "resourceUri", "description": "URI of the resource to embed", "required": true}]},
            {"name": "test_prompt_with_image", "description": "A prompt with an image"}
        ]}))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let arg = |name: &str| str_arg(&args, name);
        let text = |t: String| json!({"role": "user", "content": {"type": "text", "text": t}});
        let messages = match request.name.as_ref() {
            "test_simple_prompt" => json!([text("This is a simple prompt for testing.".into())]),
            "test_prompt_with_arguments" => json!([text(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                arg("arg1"),
                arg("arg2")
            ))]),
            "test_prompt_with_embedded_resource" => json!([
                {"role": "user", "content": {"type": "resource", "resource": {
                    "uri": arg("resourceUri"), "mimeType": "text/plain",
                    "text": "Embedded resource content for testing."}}},
                text("Please process the embedded resource above.".into())
            ]),
            "test_prompt_with_image" => json!([
                {"role": "user", "content": {"type": "image", "data": PNG, "mimeType": "image/png"}},
                text("Please analyze the image above.".into())
            ]),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown prompt {other}"),
                    None,
                ));
            }
        };
        Ok(from::<GetPromptResult>(json!({"messages": messages}))?.into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let request = serde_json::to_value(&request).unwrap_or_default();
        let typed = request["argument"]["value"].as_str().unwrap_or("");
        let values: Vec<&str> = ["paris", "park", "party"]
            .into_iter()
            .filter(|v| v.starts_with(typed))
            .collect();
        from(json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}))
    }

    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}

/// `--stateless-only`: the fixture as a server of the 2026-07-28 revision
/// alone — a request without `MCP-Protocol-Version: 2026-07-28`
/// (`initialize` and every session-era message) gets 400, a `GET` 405 — so
/// a session client reaches it only through the gateway's version bridge.
async fn stateless_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let version = req
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok());
    if req.method() == axum::http::Method::GET {
        return axum::http::StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    if version != Some("2026-07-28") {
        let refusal = json!({"jsonrpc": "2.0", "id": null, "error": {
            "code": -32600, "message": "this server speaks only 2026-07-28"}});
        return (axum::http::StatusCode::BAD_REQUEST, axum::Json(refusal)).into_response();
    }
    let discover = req
        .headers()
        .get("mcp-method")
        .is_some_and(|m| m == "server/discover");
    let answer = next.run(req).await;
    if !discover {
        return answer;
    }
    // rmcp names every revision it knows: this server names only its own.
    let (mut parts, body) = answer.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let only: String = text
        .lines()
        .map(|line| {
            match line
                .strip_prefix("data: ")
                .map(serde_json::from_str::<Value>)
            {
                Some(Ok(mut msg)) => {
                    msg["result"]["supportedVersions"] = json!(["2026-07-28"]);
                    format!("data: {msg}\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(only))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port: u16 = 0;
    let mut only_stateless = false;
    for arg in args.by_ref() {
        match arg.as_str() {
            "--stateless-only" => only_stateless = true,
            p => port = p.parse().context("the port")?,
        }
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .context("binding the listener")?;
    let addr = listener.local_addr()?;
    // rmcp's default Host allow-list (loopback names): DNS-rebinding protection.
    let config = StreamableHttpServerConfig::default();
    let service: StreamableHttpService<Fixture, LocalSessionManager> =
        StreamableHttpService::new(|| Ok(Fixture), Default::default(), config);
    let mut app = axum::Router::new().nest_service("/mcp", service);
    if only_stateless {
        app = app.layer(axum::middleware::from_fn(stateless_only));
    }
    println!("listening on http://{addr}/mcp");
    axum::serve(listener, app).await?;
    Ok(())
}
