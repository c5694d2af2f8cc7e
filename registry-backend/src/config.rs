//! Command-line flags and environment variables. Secrets (the MongoDB URI)
//! are read from the environment and never echoed in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// The NANDA agent registry as an MCP server (Streamable HTTP on /mcp).
#[derive(Debug, Clone, Parser)]
#[command(name = "registry-backend", version)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// Name of this instance, reported by health checks and the X-Registry-Instance header.
    #[arg(long, env = "REGISTRY_INSTANCE")]
    pub instance: Option<String>,

    /// Host header values accepted on /mcp (DNS-rebinding protection); comma-separated.
    #[arg(
        long = "allowed-host",
        env = "REGISTRY_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    pub allowed_hosts: Vec<String>,

    /// Accept any Host header (only behind a gateway that checks it).
    #[arg(long, env = "REGISTRY_ALLOW_ANY_HOST")]
    pub allow_any_host: bool,

    /// The embedded store's file, used when no MongoDB URI is given. Several
    /// processes on one host may share it.
    #[arg(long, env = "REGISTRY_DB", default_value = "data/registry.db")]
    pub db: PathBuf,

    /// MongoDB connection string (also read from ATLAS_URL, the seed's variable).
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,

    /// MongoDB database name.
    #[arg(long, env = "MONGODB_DATABASE", default_value = crate::store::mongo::DEFAULT_DATABASE)]
    pub mongodb_database: String,

    /// Multi-document transactions for MongoDB writes: auto (when the
    /// deployment has them: replica sets, sharded clusters, Atlas), on, or off
    /// (ordered writes with a compensating undo).
    #[arg(long, env = "MONGODB_TRANSACTIONS", value_enum, default_value = "auto")]
    pub mongodb_transactions: crate::store::mongo::Transactions,

    /// An MCP session idle this long is ended (its next request gets 404 and
    /// the client initializes again). Default: the gateway's session id lifetime.
    #[arg(long, env = "REGISTRY_SESSION_IDLE_TIMEOUT", default_value = "24h", value_parser = humantime::parse_duration)]
    pub session_idle_timeout: Duration,

    /// How long a SIGTERM waits for in-flight requests before exiting (e.g. 30s, 500ms).
    #[arg(long, env = "REGISTRY_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Largest accepted request body in bytes (larger gets 413).
    #[arg(long, env = "REGISTRY_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "REGISTRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: telemetry::Format,

    /// Serve `/metrics` on this address instead of the MCP listener (so a
    /// network policy can admit Prometheus there and only the gateway to MCP).
    #[arg(long, env = "REGISTRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Export a span per HTTP request over OTLP/HTTP (protobuf) to this
    /// receiver's base URL, e.g. http://127.0.0.1:4318 (spans go to
    /// URL/v1/traces), joining the caller's trace (W3C traceparent). Off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Check the flags and environment, print what would run, and exit
    /// (nothing is opened: neither the store nor the listener).
    #[arg(long)]
    pub check_config: bool,
}

impl Config {
    /// What this configuration runs, in one line (never the MongoDB URI,
    /// which may hold credentials).
    pub fn summary(&self) -> String {
        let store = match self.mongodb_uri() {
            Some(_) => format!(
                "MongoDB (database {}, transactions {:?})",
                self.mongodb_database, self.mongodb_transactions
            ),
            None => format!("embedded ({})", self.db.display()),
        };
        format!(
            "listen {}, instance {}, store {store}, hosts {}, drain {:?}, log {:?}",
            self.listen,
            self.instance_name(),
            if self.allow_any_host {
                "any".to_owned()
            } else {
                self.allowed_hosts.join(",")
            },
            self.drain_timeout,
            self.log_format
        )
    }

    /// The MongoDB URI from the flag, MONGODB_URI, or ATLAS_URL; `None` means the embedded store.
    pub fn mongodb_uri(&self) -> Option<String> {
        self.mongodb_uri
            .clone()
            .or_else(|| std::env::var("ATLAS_URL").ok())
            .filter(|u| !u.trim().is_empty())
    }

    pub fn instance_name(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(|| format!("registry-{}-{}", self.listen.port(), std::process::id()))
    }
}
