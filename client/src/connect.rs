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
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
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

    pub fn http_client(&self) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &self.ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading CA file {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).context("parsing CA file")? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(key) = &self.api_key {
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .context("API key is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(builder.build()?)
    }
}

pub type Service = RunningService<RoleClient, ClientConfig>;

/// A connected MCP session and the transport it ended up on.
pub struct Connection {
    pub service: Service,
    pub transport: TransportChoice,
}

fn client_info() -> ClientConfig {
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

async fn streamable(args: &ConnectArgs, mode: ClientLifecycleMode) -> Result<Service> {
    let transport = StreamableHttpClientTransport::with_client(
        args.http_client()?,
        StreamableHttpClientTransportConfig::with_uri(args.mcp_url()),
    );
    Ok(client_info().serve_with_lifecycle(transport, mode).await?)
}

async fn legacy(args: &ConnectArgs) -> Result<Service> {
    let transport = crate::sse::connect(args.http_client()?, &args.sse_url()).await?;
    Ok(client_info().serve(transport).await?)
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
    if let Err(e) = reachable(args).await {
        return Err(unreachable_hint(args, &e));
    }
    match connect_transport(args).await {
        Ok(c) => Ok(c),
        Err(e) => Err(diagnose(args, e).await),
    }
}

async fn connect_transport(args: &ConnectArgs) -> Result<Connection> {
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
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await?,
            TransportChoice::Stateless,
        ),
        TransportChoice::Streamable => (
            streamable(args, ClientLifecycleMode::Initialize).await?,
            TransportChoice::Streamable,
        ),
        TransportChoice::Sse => (legacy(args).await?, TransportChoice::Sse),
        TransportChoice::Auto => {
            let auto = ClientLifecycleMode::Auto {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                legacy_version: Some(ProtocolVersion::V_2025_11_25),
            };
            match streamable(args, auto).await {
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
                        legacy(args)
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

impl Connection {
    pub async fn tools(&self) -> Result<Vec<Tool>> {
        Ok(self.service.list_all_tools().await?)
    }

    pub async fn call(&self, tool: &str, args: Value) -> Result<CallToolResult> {
        let arguments = match args {
            Value::Object(m) => m,
            Value::Null => Default::default(),
            other => bail!("tool arguments must be a JSON object, got {other}"),
        };
        Ok(self
            .service
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
            .await?)
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
