//! Connecting to the gateway: URL, TLS, API key, transport choice.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientConfig, Implementation, ProtocolVersion, Tool,
};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportChoice {
    /// stateless → Streamable HTTP session → legacy SSE, like current SDKs
    Auto,
    /// 2026-07-28 stateless requests (server/discover)
    Stateless,
    /// Streamable HTTP with a session (initialize)
    Streamable,
    /// legacy HTTP+SSE (2024-11-05)
    Sse,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Gateway URL: the base (http://127.0.0.1:8080), or an explicit /mcp or /sse endpoint.
    #[arg(
        long,
        short,
        env = "MCP_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// Transport to use.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub transport: TransportChoice,
    /// Extra CA certificate (PEM) to trust, e.g. the dev CA in .run/tls/ca.pem.
    #[arg(long, env = "MCP_CA_FILE", global = true)]
    pub ca: Option<PathBuf>,
    /// API key, sent as `Authorization: Bearer …`.
    #[arg(long, env = "MCP_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
    /// A JWT (access token), sent as `Authorization: Bearer …`; with
    /// `--api-key` too, the key goes as `X-API-Key`.
    #[arg(long, env = "MCP_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The protocol version a session offers in `initialize`, instead of the
    /// SDK's newest (2026-07-28, which has no `initialize`); for servers that
    /// refuse that offer, e.g. agentgateway.
    #[arg(long, value_enum, global = true)]
    pub initialize_version: Option<InitializeVersion>,
}

/// The versions `--initialize-version` takes: those with an `initialize` handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitializeVersion {
    #[value(name = "2024-11-05")]
    V2024_11_05,
    #[value(name = "2025-03-26")]
    V2025_03_26,
    #[value(name = "2025-06-18")]
    V2025_06_18,
    #[value(name = "2025-11-25")]
    V2025_11_25,
}

impl InitializeVersion {
    pub fn protocol_version(self) -> ProtocolVersion {
        match self {
            Self::V2024_11_05 => ProtocolVersion::V_2024_11_05,
            Self::V2025_03_26 => ProtocolVersion::V_2025_03_26,
            Self::V2025_06_18 => ProtocolVersion::V_2025_06_18,
            Self::V2025_11_25 => ProtocolVersion::V_2025_11_25,
        }
    }
}

impl ConnectArgs {
    fn base(&self) -> String {
        let u = self.url.trim_end_matches('/');
        u.strip_suffix("/mcp")
            .or_else(|| u.strip_suffix("/sse"))
            .unwrap_or(u)
            .to_owned()
    }
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base())
    }
    pub fn sse_url(&self) -> String {
        format!("{}/sse", self.base())
    }

    /// [`client_info`] offering `--initialize-version` if given.
    pub fn client_info(&self) -> ClientConfig {
        let mut info = client_info();
        if let Some(v) = self.initialize_version {
            info.protocol_version = v.protocol_version();
        }
        info
    }

    pub fn http_client(&self) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &self.ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).context("parsing CA file")? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let mut headers = reqwest::header::HeaderMap::new();
        let secret = |text: String, what: &str| -> Result<reqwest::header::HeaderValue> {
            let mut value = reqwest::header::HeaderValue::from_str(&text)
                .with_context(|| format!("{what} is not a valid header value"))?;
            value.set_sensitive(true);
            Ok(value)
        };
        match (&self.token, &self.api_key) {
            (Some(token), key) => {
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    secret(format!("Bearer {token}"), "the token")?,
                );
                if let Some(key) = key {
                    headers.insert("x-api-key", secret(key.clone(), "the API key")?);
                }
            }
            (None, Some(key)) => {
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    secret(format!("Bearer {key}"), "the API key")?,
                );
            }
            (None, None) => {}
        }
        Ok(builder.default_headers(headers).build()?)
    }
}

pub type Service<H = ClientConfig> = RunningService<RoleClient, H>;

/// A connected MCP session and the transport it ended up on. `H` answers
/// the server's requests (sampling, elicitation); the plain `ClientConfig`
/// answers none and declares no capability for them.
pub struct Connection<H: ClientHandler = ClientConfig> {
    pub service: Service<H>,
    pub transport: TransportChoice,
}

/// Who we say we are in `initialize` (name and version).
pub fn client_info() -> ClientConfig {
    let mut info = ClientConfig::default();
    info.client_info = Implementation::new("mcp-client", env!("CARGO_PKG_VERSION"));
    info
}

/// Whether an error chain is a TLS certificate the client does not trust.
fn is_untrusted_certificate(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}").to_ascii_lowercase();
    text.contains("certificate")
        && (text.contains("unknownissuer")
            || text.contains("unknown issuer")
            || text.contains("not trusted")
            || text.contains("invalid peer certificate")
            || text.contains("self-signed")
            || text.contains("self signed"))
}

fn unreachable_hint(args: &ConnectArgs, err: &anyhow::Error) -> anyhow::Error {
    if is_untrusted_certificate(err) {
        return anyhow::anyhow!(
            "the gateway at {} answered, but its TLS certificate is not trusted ({err:#}).\n\
             For the local stack pass its development CA:  --ca .run/tls/ca.pem  (or set MCP_CA_FILE).",
            args.url
        );
    }
    anyhow::anyhow!(
        "cannot reach the MCP gateway at {} ({err:#}).\n\
         Start the local stack with:  deploy/local/run.sh\n\
         or point --url / MCP_GATEWAY_URL at a running gateway.",
        args.url
    )
}

/// What a gateway status means to someone at a shell, if it means something special.
pub fn status_hint(status: u16, retry_after: Option<&str>) -> Option<String> {
    let retry = retry_after
        .map(|s| format!(" Retry after {s} s."))
        .unwrap_or_default();
    Some(match status {
        401 => "the gateway refused the credentials (HTTP 401): pass --api-key KEY or --token JWT (or MCP_API_KEY / MCP_TOKEN).".into(),
        403 => "the gateway says these credentials may not do this (HTTP 403).".into(),
        429 => format!("the gateway is rate-limiting this client (HTTP 429).{retry}"),
        503 => format!("the gateway cannot take this now (HTTP 503: at capacity, or no healthy backend).{retry}"),
        _ => return None,
    })
}

/// After a failed connect: ask the gateway plainly, to say why in words.
async fn diagnose(args: &ConnectArgs, err: anyhow::Error) -> anyhow::Error {
    let Ok(client) = args.http_client() else {
        return err;
    };
    let probe = client
        .post(args.mcp_url())
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "ping"}))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    match probe {
        Ok(r) => {
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match status_hint(r.status().as_u16(), retry.as_deref()) {
                Some(hint) => anyhow::anyhow!("{hint}"),
                None => err,
            }
        }
        Err(e) => unreachable_hint(args, &anyhow::Error::from(e)),
    }
}

async fn streamable<H: ClientHandler>(
    args: &ConnectArgs,
    handler: H,
    mode: ClientLifecycleMode,
) -> Result<Service<H>> {
    let transport = StreamableHttpClientTransport::with_client(
        args.http_client()?,
        StreamableHttpClientTransportConfig::with_uri(args.mcp_url()),
    );
    Ok(handler.serve_with_lifecycle(transport, mode).await?)
}

async fn legacy<H: ClientHandler>(args: &ConnectArgs, handler: H) -> Result<Service<H>> {
    let transport = crate::sse::connect(args.http_client()?, &args.sse_url()).await?;
    Ok(handler.serve(transport).await?)
}

/// Whether the gateway answers at all (to tell "down" from "refused").
async fn reachable(args: &ConnectArgs) -> Result<()> {
    let client = args.http_client()?;
    client
        .get(format!("{}/health", args.base()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|_| ())
        .map_err(anyhow::Error::from)
}

pub async fn connect(args: &ConnectArgs) -> Result<Connection> {
    connect_with(args, args.client_info()).await
}

/// [`connect`] with a handler of our own for the server's requests.
pub async fn connect_with<H: ClientHandler + Clone>(
    args: &ConnectArgs,
    handler: H,
) -> Result<Connection<H>> {
    if let Err(e) = reachable(args).await {
        return Err(unreachable_hint(args, &e));
    }
    match connect_transport(args, handler).await {
        Ok(c) => Ok(c),
        Err(e) => Err(diagnose(args, e).await),
    }
}

async fn connect_transport<H: ClientHandler + Clone>(
    args: &ConnectArgs,
    handler: H,
) -> Result<Connection<H>> {
    let forced = if args.url.trim_end_matches('/').ends_with("/sse")
        && args.transport == TransportChoice::Auto
    {
        TransportChoice::Sse
    } else {
        args.transport
    };
    let (service, transport) = match forced {
        TransportChoice::Stateless => (
            streamable(
                args,
                handler,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await?,
            TransportChoice::Stateless,
        ),
        TransportChoice::Streamable => (
            streamable(args, handler, ClientLifecycleMode::Initialize).await?,
            TransportChoice::Streamable,
        ),
        TransportChoice::Sse => (legacy(args, handler).await?, TransportChoice::Sse),
        TransportChoice::Auto => {
            let auto = ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: Some(args.initialize_version.map_or(
                    ProtocolVersion::V_2025_11_25,
                    InitializeVersion::protocol_version,
                )),
            };
            match streamable(args, handler.clone(), auto).await {
                Ok(s) => {
                    let stateless = s
                        .peer_info()
                        .is_none_or(|i| i.protocol_version == ProtocolVersion::V_2026_07_28);
                    let t = if stateless {
                        TransportChoice::Stateless
                    } else {
                        TransportChoice::Streamable
                    };
                    (s, t)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Streamable HTTP failed; trying legacy SSE");
                    (
                        legacy(args, handler)
                            .await
                            .context("neither Streamable HTTP nor legacy SSE worked")?,
                        TransportChoice::Sse,
                    )
                }
            }
        }
    };
    Ok(Connection { service, transport })
}

impl<H: ClientHandler> Connection<H> {
    pub async fn tools(&self) -> Result<Vec<Tool>> {
        Ok(self.service.list_all_tools().await?)
    }

    pub async fn call(&self, tool: &str, args: Value) -> Result<CallToolResult> {
        let arguments = match args {
            Value::Object(m) => m,
            Value::Null => Default::default(),
            other => bail!("tool arguments must be a JSON object, got {other}"),
        };
        self.service
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
            .await
            .map_err(|e| explain_refusal(tool, anyhow::Error::from(e)))
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// The text of a tool result (all text blocks joined).
pub fn result_text(result: &CallToolResult) -> String {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.as_str())
        .collect();
    if texts.is_empty() {
        result
            .structured_content
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default()
    } else {
        texts.join("\n")
    }
}

/// If the gateway rate-limited this call: how long it asked us to wait.
/// Streamable HTTP surfaces the 429 and its `Retry-After`; legacy SSE the
/// JSON-RPC error (-32023, `data.retryAfterSeconds`) its stream carried.
pub fn rate_limited(e: &anyhow::Error) -> Option<Duration> {
    use rmcp::transport::streamable_http_client::HttpStatusError;
    for cause in e.chain() {
        if let Some(h) = cause.downcast_ref::<HttpStatusError>()
            && h.status == 429
        {
            let secs = h.retry_after.as_deref().and_then(|v| v.trim().parse().ok());
            return Some(Duration::from_secs(secs.unwrap_or(1)));
        }
        if let Some(rmcp::ServiceError::McpError(m)) = cause.downcast_ref::<rmcp::ServiceError>()
            && m.code.0 == RATE_LIMITED_CODE
        {
            let secs = m
                .data
                .as_ref()
                .and_then(|d| d.get("retryAfterSeconds"))
                .and_then(serde_json::Value::as_u64);
            return Some(Duration::from_secs(secs.unwrap_or(1)));
        }
    }
    let text = format!("{e:#}");
    (text.contains("HTTP 429") || text.contains("rate limited")).then(|| Duration::from_secs(1))
}

/// The gateway's JSON-RPC code for "rate limited" (SEP-3304's proposal).
const RATE_LIMITED_CODE: i32 = -32023;

/// Puts the gateway's refusal of a call in words (keeping the cause chain).
fn explain_refusal(tool: &str, e: anyhow::Error) -> anyhow::Error {
    if let Some(wait) = rate_limited(&e) {
        return e.context(format!(
            "the gateway is rate-limiting this client (HTTP 429); retry after {} s",
            wait.as_secs()
        ));
    }
    let text = format!("{e:#}");
    let lower = text.to_ascii_lowercase();
    if lower.contains("insufficient scope")
        || lower.contains("http 403")
        || lower.contains("forbidden")
    {
        let scope = text
            .split("scope=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(|s| format!(" (it needs scope {s})"))
            .unwrap_or_default();
        return e.context(format!(
            "the gateway says these credentials may not call '{tool}' (HTTP 403){scope}"
        ));
    }
    e
}
