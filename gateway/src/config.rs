//! Gateway configuration: a TOML file, overridden by flags and environment.
//!
//! Secrets (the session key) come from the environment or a file, never from
//! the command line where `ps` would show them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Deserialize;

/// The session key (16+ characters), from the environment.
pub const SESSION_KEY_ENV: &str = "MCP_GATEWAY_SESSION_KEY";
/// The session key before a rotation (opens ids, never seals one).
pub const PREVIOUS_SESSION_KEY_ENV: &str = "MCP_GATEWAY_SESSION_KEY_PREVIOUS";

/// Command-line flags; each overrides the matching file setting.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mcp-gateway",
    version,
    about = "The public front door for MCP servers",
    after_help = "Secrets come from the environment, never from flags:\n  MCP_GATEWAY_SESSION_KEY  secret (16+ characters) sealing session ids; replicas sharing it\n                           route each other's sessions (or [sessions] key_file in the config;\n                           without either, a random key per process)\n  MCP_GATEWAY_SESSION_KEY_PREVIOUS  the key before a rotation: opens ids, never seals\n                           (or [sessions] previous_key_file)\n  MCP_GATEWAY_STORE_PASSWORD  the shared store's password (--store / [cluster] store)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Take over the listening sockets of a running gateway (pingora's
    /// graceful upgrade): start the new binary with --upgrade, then send the
    /// old one SIGQUIT. Needs the same `upgrade_sock` in both configs.
    #[arg(long)]
    pub upgrade: bool,
    /// TOML configuration file.
    #[arg(long, short, env = "MCP_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Plain-HTTP listener, e.g. 127.0.0.1:8080.
    #[arg(long, env = "MCP_GATEWAY_HTTP")]
    pub http: Option<SocketAddr>,
    /// HTTPS listener, e.g. 127.0.0.1:8443 (needs --tls-cert/--tls-key or --dev-tls-dir).
    #[arg(long, env = "MCP_GATEWAY_HTTPS")]
    pub https: Option<SocketAddr>,
    /// Admin listener (health, metrics, backends); loopback by default.
    #[arg(long, env = "MCP_GATEWAY_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// PEM certificate chain for the HTTPS listener.
    #[arg(long, env = "MCP_GATEWAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the HTTPS listener.
    #[arg(long, env = "MCP_GATEWAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Directory holding a development CA and certificate, generated on first use.
    #[arg(long, env = "MCP_GATEWAY_DEV_TLS_DIR")]
    pub dev_tls_dir: Option<PathBuf>,
    /// Static backend address for the default pool (repeatable).
    #[arg(long = "backend", env = "MCP_GATEWAY_BACKENDS", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// Start and supervise this many registry-backend processes as the default pool.
    #[arg(long, env = "MCP_GATEWAY_MANAGED")]
    pub managed: Option<usize>,
    /// The program the managed pool runs (default: registry-backend next to this binary).
    #[arg(long, env = "MCP_GATEWAY_BACKEND_COMMAND")]
    pub backend_command: Option<PathBuf>,
    /// Extra argument for managed backends (repeatable), e.g. --backend-arg=--db=data/r.db
    #[arg(long = "backend-arg", allow_hyphen_values = true)]
    pub backend_args: Vec<String>,
    /// Worker threads for the proxy.
    #[arg(long, env = "MCP_GATEWAY_THREADS")]
    pub threads: Option<usize>,
    /// Bearer token for the admin API, 16+ characters (required when --admin
    /// is not on loopback; `rollout` sends it). Prefer the environment
    /// variable: flags show in `ps`.
    #[arg(
        long,
        global = true,
        env = "MCP_GATEWAY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Log lines on stderr as text, or as JSON (one object per line, for log
    /// collectors); the level comes from RUST_LOG (default info).
    #[arg(
        long,
        env = "MCP_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: telemetry::Format,
    /// Export a span per MCP request over OTLP/HTTP (protobuf) to this
    /// receiver's base URL, e.g. http://127.0.0.1:4318 (spans go to
    /// URL/v1/traces); W3C traceparent goes on to the backend. Off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// One access-log line per request at info level (target `access`):
    /// status, method, path, JSON-RPC method and name, session id's first 8
    /// characters, principal, client address, backend, milliseconds. Never
    /// credentials or whole session ids.
    #[arg(long, env = "MCP_GATEWAY_ACCESS_LOG")]
    pub access_log: bool,
    /// The store several replicas share (redis:// or rediss://; an empty
    /// value: none): global rate limits and ended sessions across replicas.
    /// Its password comes from MCP_GATEWAY_STORE_PASSWORD (or the variable
    /// `[cluster] store_password_env` names).
    #[arg(long, env = "MCP_GATEWAY_STORE")]
    pub store: Option<String>,
    /// Load and check the configuration (file, flags, environment: syntax,
    /// unknown keys, values, pools, auth rules, limits), print a summary and
    /// exit. Files it names for later (certificate, key, session key) are
    /// not read: they exist where the gateway is deployed.
    #[arg(long)]
    pub check_config: bool,
}

/// Operator commands that talk to a running gateway's admin listener.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Restart a managed pool's backends one at a time (start the replacement,
    /// wait until it is ready, drain and stop the old one), printing progress.
    Rollout {
        /// The running gateway's admin listener.
        #[arg(long, default_value = "127.0.0.1:9090", env = "MCP_GATEWAY_ADMIN")]
        admin: SocketAddr,
        /// The pool to roll out ("default" for --managed N).
        #[arg(long, default_value = "default")]
        pool: String,
    },
    /// The stdio guardian (started by the gateway itself, never by hand):
    /// ends the stdio servers' process groups when the gateway is gone.
    #[command(name = "stdio-guardian", hide = true)]
    StdioGuardian {
        /// Between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 5000)]
        grace_ms: u64,
    },
}

fn default_admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default)]
    pub http: Option<SocketAddr>,
    #[serde(default)]
    pub https: Option<SocketAddr>,
    #[serde(default = "default_admin")]
    pub admin: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            http: None,
            https: None,
            admin: default_admin(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Generate (once) and use a development CA + certificate in this directory.
    pub dev_dir: Option<PathBuf>,
    /// How often the certificate and key files are checked for a change
    /// (as cert-manager rotates them); "0s" checks only on SIGHUP and
    /// `POST /reload`. New handshakes get the new certificate; open
    /// connections keep theirs.
    #[serde(with = "duration", default = "ten_secs")]
    pub reload_interval: Duration,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            dev_dir: None,
            reload_interval: ten_secs(),
        }
    }
}

fn ten_secs() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    /// File holding the session-token secret (or set MCP_GATEWAY_SESSION_KEY).
    pub key_file: Option<PathBuf>,
    /// File holding the key before the last rotation (or set
    /// MCP_GATEWAY_SESSION_KEY_PREVIOUS): it opens session ids, never seals
    /// one, so rotating the key ends no session (deploy/RUNBOOK.md).
    pub previous_key_file: Option<PathBuf>,
    /// How long a session id stays valid.
    #[serde(with = "duration", default = "day")]
    pub max_age: Duration,
    /// Most legacy SSE sessions this process holds at once per pool (one
    /// client, principal or anonymous address, at most its `client_share`).
    #[serde(default = "default_legacy_sessions")]
    pub max_legacy_sessions: usize,
}

fn day() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_legacy_sessions() -> usize {
    10_000
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            key_file: None,
            previous_key_file: None,
            max_age: day(),
            max_legacy_sessions: default_legacy_sessions(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body; larger → 413. Every POST body is read whole
    /// (up to this) and checked as JSON-RPC before a backend sees it.
    pub max_body_bytes: usize,
    /// Request bodies held in memory at once, all requests together; beyond → 503.
    pub max_buffered_bytes: usize,
    /// Requests in flight at once (open SSE streams included); 503 beyond.
    pub max_inflight: usize,
    /// The share of `max_inflight` one client address, and of
    /// `max_buffered_bytes` one client (principal, or address when
    /// anonymous), may hold at once (0 < share ≤ 1; 429 beyond).
    pub client_share: f64,
    /// A request body must arrive whole within this (408 beyond) …
    #[serde(with = "duration")]
    pub body_timeout: Duration,
    /// … and, after its first second, at no less than this many bytes per second on average.
    pub body_min_rate: usize,
    /// A client connection that sends nothing for this long while the
    /// gateway waits for a request (or between reads of a body) is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A request header must arrive whole within this, from its first byte.
    #[serde(with = "duration")]
    pub header_timeout: Duration,
    /// Largest request header (HTTP/1); the connection is closed as soon as
    /// a header passes it, before it ends.
    pub max_header_bytes: usize,
    /// Client connections one address may hold open at once; beyond, new
    /// ones are closed at once.
    pub max_connections_per_ip: usize,
    /// Comment keep-alive interval on every SSE stream the gateway serves.
    #[serde(with = "duration")]
    pub sse_keepalive: Duration,
    /// A client that cannot take a write for this long is dropped.
    #[serde(with = "duration", alias = "sse_write_timeout")]
    pub write_timeout: Duration,
    /// Connecting to a backend.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Longest silence from a backend (response header, or between bytes of a stream).
    #[serde(with = "duration")]
    pub upstream_idle_timeout: Duration,
    /// Bytes a legacy session may have queued for its backend; beyond → 503.
    pub legacy_inbox_bytes: usize,
    /// Backend calls one legacy session runs at once.
    pub legacy_session_concurrency: usize,
    /// Allowed Origin values ("*" = any; entries may end in ":*" for any port).
    /// Requests without Origin are always allowed (non-browser clients).
    pub allowed_origins: Vec<String>,
    /// Rate limits by principal tier ("default" applies when a principal's
    /// tier has none; "anonymous" to clients without credentials).
    pub tiers: std::collections::BTreeMap<String, TierConfig>,
    pub global: GlobalLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_inflight: 10_000,
            client_share: 0.25,
            body_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections_per_ip: 1024,
            sse_keepalive: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            upstream_idle_timeout: Duration::from_secs(300),
            legacy_inbox_bytes: 8 * 1024 * 1024,
            legacy_session_concurrency: 8,
            allowed_origins: vec![
                "http://localhost:*".into(),
                "https://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "https://127.0.0.1:*".into(),
            ],
            tiers: Default::default(),
            global: GlobalLimits::default(),
        }
    }
}

/// Where a pool's backends come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Discovery {
    /// A fixed list of `host:port`.
    Static { backends: Vec<String> },
    /// A DNS name re-resolved periodically (e.g. a Kubernetes headless Service).
    Dns {
        name: String,
        port: u16,
        #[serde(with = "duration", default = "default_dns_interval")]
        interval: Duration,
    },
    /// Processes the gateway starts and supervises on 127.0.0.1.
    Managed {
        command: PathBuf,
        count: usize,
        #[serde(default)]
        args: Vec<String>,
        /// How long a stopping backend may drain before it is killed; longer
        /// than the backend's own drain timeout (the registry's is 30 s).
        #[serde(with = "duration", default = "default_stop_timeout")]
        stop_timeout: Duration,
    },
    /// A stdio MCP server: one process of this command per client session,
    /// run by the gateway's in-process stdio host (`stdio/`).
    Stdio(StdioConfig),
}

/// A stdio pool: the command (from this file only, never from a client),
/// its environment, and the bounds on its processes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioConfig {
    /// The program, found on the child's `PATH` when it has no `/`.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables set for the child, written here (no secrets: see `env_from`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables set for the child from the gateway's own environment:
    /// `{ TOKEN = "GATEWAY_VAR" }` gives the child `TOKEN` with the value of
    /// the gateway's `GATEWAY_VAR` (read once at start; missing → the
    /// gateway does not start). Secrets go here, never in the file.
    #[serde(default)]
    pub env_from: BTreeMap<String, String>,
    /// The child's working directory (default: the gateway's).
    pub cwd: Option<PathBuf>,
    /// Most processes at once (sessions' and warm ones together); a new
    /// session beyond gets 503 + `Retry-After`.
    #[serde(default = "default_max_processes")]
    pub max_processes: usize,
    /// Processes started ahead of time, so a new session need not wait for
    /// the command to start.
    #[serde(default)]
    pub warm: usize,
    /// A session's process with nothing in flight, no open `GET` stream and
    /// no message for this long is ended.
    #[serde(with = "duration", default = "default_stdio_idle")]
    pub idle_timeout: Duration,
    /// Between closing a process's stdin and SIGKILL to its process group
    /// (SIGTERM at half of it).
    #[serde(with = "duration", default = "default_stdio_stop")]
    pub stop_timeout: Duration,
}

/// Replaced, in `args`, `env` values and `cwd`, by a directory of the
/// process's own (created empty, removed with the process).
pub const PROCESS_DIR: &str = "{process_dir}";

fn default_max_processes() -> usize {
    32
}
fn default_stdio_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_stdio_stop() -> Duration {
    Duration::from_secs(5)
}

impl StdioConfig {
    fn check(&self, pool: &str) -> Result<()> {
        if self.command.trim().is_empty() {
            bail!("pool {pool}: stdio command is empty");
        }
        if self.max_processes == 0 {
            bail!("pool {pool}: max_processes must be at least 1");
        }
        if self.warm > self.max_processes {
            bail!(
                "pool {pool}: warm ({}) must be at most max_processes ({})",
                self.warm,
                self.max_processes
            );
        }
        if self.idle_timeout.is_zero() || self.stop_timeout.is_zero() {
            bail!("pool {pool}: idle_timeout and stop_timeout must be above zero");
        }
        let names = self.env.keys().chain(self.env_from.keys());
        for name in names.chain(self.env_from.values()) {
            if name.is_empty() || name.contains(['=', '\0']) {
                bail!("pool {pool}: {name:?} is not an environment variable name");
            }
        }
        let texts = self.env.values().chain(&self.args).chain([&self.command]);
        if texts.into_iter().any(|v| v.contains('\0')) {
            bail!("pool {pool}: a stdio command, argument or value holds a NUL byte");
        }
        Ok(())
    }
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(40)
}

fn default_dns_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// Path prefix this pool serves: "/" serves /mcp, /sse, /messages;
    /// "/tools" serves /tools/mcp and so on.
    #[serde(default = "default_route")]
    pub route: String,
    pub discovery: Discovery,
    /// How backends are checked: `http` (GET `health_path`, 200 = ready),
    /// `mcp` (an `initialize` answered with a result; for MCP servers with
    /// no health endpoint) or `tcp` (a connection is accepted).
    #[serde(default)]
    pub health: HealthKind,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(with = "duration", default = "default_health_interval")]
    pub health_interval: Duration,
    /// The longest one ejection lasts (an upper bound: an ejection for a
    /// failed connection ends at the first passing health check or answer).
    #[serde(with = "duration", default = "default_eject")]
    pub eject_for: Duration,
    /// The first ejection's length; doubled for each further one in a row.
    #[serde(with = "duration", default = "default_eject_base")]
    pub eject_base: Duration,
    /// 5xx answers (503 aside) or lost exchanges in a row that eject a
    /// backend (a failed connection ejects at once).
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// A backend not ejected for this long starts again at `eject_base`.
    #[serde(with = "duration", default = "default_eject_reset")]
    pub eject_reset: Duration,
    /// The largest share of the pool's backends ejected at once (one at least).
    #[serde(default = "default_max_ejected")]
    pub max_ejected: f64,
    /// A backend that joins or comes back gets a share of new sessions that
    /// grows over this window ("0s": at once).
    #[serde(with = "duration", default = "default_slow_start")]
    pub slow_start: Duration,
    /// The backends speak HTTP/2 without TLS (h2c, prior knowledge; the
    /// registry backend does): sessions' `GET` streams to them share a few
    /// HTTP/2 connections per backend instead of holding one connection
    /// each. Requests stay on HTTP/1.1 keep-alive connections.
    #[serde(default)]
    pub http2_streams: bool,
    /// Credentials for this pool (default: required when any key or JWT is
    /// configured, else none).
    pub auth: Option<AuthMode>,
}

/// A virtual server: one route whose sessions see the tools, prompts and
/// resources of several pools (its members) at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub name: String,
    /// Path prefix it serves, as a pool's ("/all" serves /all/mcp, /all/sse …).
    pub route: String,
    pub members: Vec<MemberConfig>,
    /// Credentials for this route (default: as for pools).
    pub auth: Option<AuthMode>,
    /// How long a member's lists are kept before they are asked again (a
    /// member's `list_changed` notification drops them at once).
    #[serde(with = "duration", default = "default_list_ttl")]
    pub list_ttl: Duration,
}

/// One member of a virtual server: a pool, the prefix of its names, and
/// what of it clients see.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub pool: String,
    /// Put before the member's tool and prompt names ("" when they do not clash).
    #[serde(default)]
    pub prefix: String,
    /// The member's tools and prompts clients see, by the member's own names
    /// (default: all).
    pub allow: Option<Vec<String>>,
    /// Names clients see instead of the member's own (`own = "shown"`; no prefix added).
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Descriptions clients see instead of the member's own, by the member's names.
    #[serde(default)]
    pub describe: std::collections::BTreeMap<String, String>,
}

fn default_list_ttl() -> Duration {
    Duration::from_secs(60)
}

/// Whether a name (or a prefix, when `empty_ok`) follows the MCP
/// specification's tool-name rule: 1–128 characters of `A-Z a-z 0-9 _ - .`.
pub fn valid_name(name: &str, empty_ok: bool) -> bool {
    (empty_ok || !name.is_empty())
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// A pool's active health check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    #[default]
    Http,
    Mcp,
    Tcp,
}

fn default_route() -> String {
    "/".into()
}
fn default_health_path() -> String {
    "/readyz".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_eject() -> Duration {
    crate::pool::outlier::Policy::default().eject_max
}
fn default_eject_base() -> Duration {
    crate::pool::outlier::Policy::default().eject_base
}
fn default_eject_after() -> u32 {
    crate::pool::outlier::Policy::default().eject_after
}
fn default_eject_reset() -> Duration {
    crate::pool::outlier::Policy::default().eject_reset
}
fn default_max_ejected() -> f64 {
    crate::pool::outlier::Policy::default().max_ejected
}
fn default_slow_start() -> Duration {
    crate::pool::outlier::Policy::default().slow_start
}

/// Who may come in: API keys (stored as SHA-256 hashes), JWTs, and what
/// each principal may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    pub jwt: Option<JwtConfig>,
    /// Per-principal authorization; the first rule that matches applies;
    /// none matching allows everything.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// This resource's canonical URI for the protected-resource metadata
    /// (default: the URL the client used).
    pub resource: Option<String>,
    /// Authorization servers named in the protected-resource metadata.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Header carrying the verified principal to backends (stripped from clients).
    #[serde(default = "default_principal_header")]
    pub principal_header: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys: Vec::new(),
            jwt: None,
            rules: Vec::new(),
            resource: None,
            authorization_servers: Vec::new(),
            principal_header: default_principal_header(),
        }
    }
}

fn default_principal_header() -> String {
    "x-mcp-principal".into()
}
fn default_tier() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Who the key belongs to.
    pub principal: String,
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`); the key itself is never stored.
    pub sha256: String,
    #[serde(default = "default_tier")]
    pub tier: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A revoked key is refused like an unknown one.
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `aud` (mandatory: a token for another service is refused).
    pub audience: String,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Environment variable holding an HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// A JWKS file with RS256/ES256 public keys (chosen by `kid`).
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Claim naming the principal.
    #[serde(default = "default_sub")]
    pub principal_claim: String,
    /// Claim naming the rate-limit tier (else "default").
    pub tier_claim: Option<String>,
    /// Claim holding space-separated scopes.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
}

fn default_leeway() -> u64 {
    30
}
fn default_sub() -> String {
    "sub".into()
}
fn default_scope_claim() -> String {
    "scope".into()
}

/// One authorization rule: whom it matches, and what they may do.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Matches these principals (any of the three lists; empty lists match nobody,
    /// all three empty matches everybody).
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Pools the principal may reach (default: all).
    pub pools: Option<Vec<String>>,
    /// Tools it may call (default: all but `deny_tools`).
    pub allow_tools: Option<Vec<String>>,
    #[serde(default)]
    pub deny_tools: Vec<String>,
    /// The scope a denied call would need (named in the 403).
    pub required_scope: Option<String>,
}

/// The limits of one tier of principals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Requests per second per principal (or per client IP when anonymous).
    pub requests_per_second: u32,
    /// Burst above the rate (default: the rate).
    pub burst: Option<u32>,
    /// `tools/call` per minute per principal per tool (default: unlimited).
    pub tool_calls_per_minute: Option<u32>,
    /// Per-tool overrides of `tool_calls_per_minute`.
    #[serde(default)]
    pub tool_limits: std::collections::BTreeMap<String, u32>,
    /// New sessions (initialize, GET /sse) per minute per principal.
    pub sessions_per_minute: Option<u32>,
    /// Open streams (GET /mcp, GET /sse) at once per principal.
    pub max_streams: Option<usize>,
}

/// Limits across all principals.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalLimits {
    /// All requests together, per second.
    pub requests_per_second: Option<u32>,
    /// Per client IP, checked before authentication (flood protection).
    pub per_ip_requests_per_second: Option<u32>,
    /// Requests in flight at once per client IP.
    pub per_ip_inflight: Option<usize>,
    /// New connections per second per client IP, checked at accept before
    /// TLS (a refused connection is closed at once).
    pub per_ip_connections_per_second: Option<u32>,
    /// Burst of new connections above that rate (default: the rate).
    pub per_ip_connection_burst: Option<u32>,
    /// Most keys a limiter remembers (principals, IPs, principal×tool).
    pub max_keys: usize,
    /// Most bytes a limiter's keys may take (keys and their state); beyond
    /// either bound the least recently seen keys are forgotten.
    pub max_key_bytes: usize,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        Self {
            requests_per_second: None,
            per_ip_requests_per_second: None,
            per_ip_inflight: None,
            per_ip_connections_per_second: None,
            per_ip_connection_burst: None,
            max_keys: 100_000,
            max_key_bytes: 16 * 1024 * 1024,
        }
    }
}

/// How a pool treats credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every request must carry valid credentials.
    Required,
    /// Anonymous requests pass; presented credentials must be valid.
    Optional,
    /// Credentials are not looked at.
    None,
}

/// The admin listener's protection.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Environment variable holding the admin bearer token. Required when the
    /// admin listener is not on loopback (or set MCP_GATEWAY_ADMIN_TOKEN).
    pub token_env: Option<String>,
    /// The token itself, resolved at load from `--admin-token` or `token_env`.
    #[serde(skip)]
    pub token: Option<String>,
}

/// Several gateway replicas in front of the same pools.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// This replica's MCP listener as the other replicas reach it
    /// ("10.0.0.5:8080"). Set it on every replica (with one shared session
    /// key) and a legacy SSE message that reaches the wrong replica is
    /// relayed to the one holding the client's stream.
    pub advertise: Option<String>,
    /// The store the replicas share (`redis://host:6379/0`, `rediss://…`
    /// for TLS; or `--store` / MCP_GATEWAY_STORE): the rate limits hold
    /// across all of them and an ended session is ended on all of them.
    /// Without it every replica keeps its own limits and ended sessions.
    pub store: Option<String>,
    /// Environment variable holding the store's password (never in the file).
    pub store_password_env: String,
    /// Prefix of every key the gateway writes (several deployments may
    /// share one store).
    pub key_prefix: String,
    /// Longest wait for one store call; past it the call has failed.
    #[serde(with = "duration")]
    pub store_timeout: Duration,
    /// How often the store is pinged (while down: how soon it is back).
    #[serde(with = "duration")]
    pub store_recheck: Duration,
    /// What requests get while the store is down or slow.
    pub on_store_down: StoreDown,
    /// Replicas sharing the store: while it is down (`fail_open`) each
    /// replica allows 1/`replicas` of every rate limit on its own.
    pub replicas: u32,
    /// The password, resolved at load from `store_password_env`.
    #[serde(skip)]
    pub store_password: Option<String>,
}

/// Environment variable naming the shared store (empty: none).
pub const STORE_ENV: &str = "MCP_GATEWAY_STORE";
/// Default environment variable holding the store's password.
pub const STORE_PASSWORD_ENV: &str = "MCP_GATEWAY_STORE_PASSWORD";

impl Default for Cluster {
    fn default() -> Self {
        Self {
            advertise: None,
            store: None,
            store_password_env: STORE_PASSWORD_ENV.into(),
            key_prefix: "mcp-gateway:".into(),
            store_timeout: Duration::from_millis(50),
            store_recheck: Duration::from_secs(1),
            on_store_down: StoreDown::FailOpen,
            replicas: 1,
            store_password: None,
        }
    }
}

/// What requests get while the shared store is down or slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreDown {
    /// Served under local limits, each 1/`replicas` of the configured one.
    FailOpen,
    /// 503 + Retry-After (and the admin `/health` turns 503).
    FailClosed,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub sessions: Sessions,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub pools: Vec<PoolConfig>,
    /// Virtual servers over the pools.
    #[serde(default)]
    pub servers: Vec<ServerConfig>,
    #[serde(default)]
    pub threads: Option<usize>,
    /// The access log (see `--access-log`).
    #[serde(default)]
    pub access_log: bool,
    /// Seconds between SIGTERM/SIGQUIT and closing the listeners, while the
    /// gateway drains (admin /health 503, every answer closes its
    /// connection). Longer than your balancer's health-check interval.
    #[serde(default)]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds requests in flight (open streams too) may run once the
    /// listeners are closed (default 10).
    #[serde(default)]
    pub shutdown_timeout_secs: Option<u64>,
    /// Unix socket a new gateway (started with --upgrade) takes the listening
    /// sockets from; one per gateway on a host.
    #[serde(default)]
    pub upgrade_sock: Option<PathBuf>,
}

/// Durations in config files: humantime text ("30s", "500ms", "5m", "1h 30m")
/// or a bare number of seconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => humantime::parse_duration(t.trim()).map_err(serde::de::Error::custom),
        }
    }
}

impl Config {
    /// The settings of `next` that differ from this (running) configuration
    /// and cannot change while the gateway runs, by name; empty when `next`
    /// can be applied live (credentials, rules, limits, timeouts, origins,
    /// the legacy caps, the pools' `auth`, the access log).
    pub fn restart_needed(&self, next: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        let mut check = |name: &str, same: bool| {
            if !same {
                changed.push(name.to_owned());
            }
        };
        check("listen", self.listen == next.listen);
        check("tls.cert", self.tls.cert == next.tls.cert);
        check("tls.key", self.tls.key == next.tls.key);
        check("tls.dev_dir", self.tls.dev_dir == next.tls.dev_dir);
        check(
            "tls.reload_interval",
            self.tls.reload_interval == next.tls.reload_interval,
        );
        check(
            "sessions.key_file",
            self.sessions.key_file == next.sessions.key_file,
        );
        check(
            "sessions.previous_key_file",
            self.sessions.previous_key_file == next.sessions.previous_key_file,
        );
        check(
            "sessions.max_age",
            self.sessions.max_age == next.sessions.max_age,
        );
        check("cluster", self.cluster == next.cluster);
        check("admin (its token)", self.admin == next.admin);
        check("threads", self.threads == next.threads);
        check(
            "shutdown_grace_secs",
            self.shutdown_grace_secs == next.shutdown_grace_secs,
        );
        check(
            "shutdown_timeout_secs",
            self.shutdown_timeout_secs == next.shutdown_timeout_secs,
        );
        check("upgrade_sock", self.upgrade_sock == next.upgrade_sock);
        check(
            "limits.connect_timeout",
            self.limits.connect_timeout == next.limits.connect_timeout,
        );
        check("servers", self.servers == next.servers);
        if self.pools.len() != next.pools.len() {
            check("pools (how many)", false);
            return changed;
        }
        for (a, b) in self.pools.iter().zip(&next.pools) {
            let live = |p: &PoolConfig| PoolConfig {
                auth: None,
                ..p.clone()
            };
            check(&format!("pools[{}]", a.name), live(a) == live(b));
        }
        changed
    }

    /// How long the gateway drains before its listeners close (default 2 s).
    pub fn drain_secs(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs.unwrap_or(2))
    }

    /// Reads the file (if any) and applies the command line on top.
    pub fn load(cli: &Cli) -> Result<Self> {
        let mut config: Config = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        if cli.http.is_some() {
            config.listen.http = cli.http;
        }
        if cli.https.is_some() {
            config.listen.https = cli.https;
        }
        if cli.admin.is_some() {
            config.listen.admin = cli.admin;
        }
        if cli.tls_cert.is_some() {
            config.tls.cert = cli.tls_cert.clone();
        }
        if cli.tls_key.is_some() {
            config.tls.key = cli.tls_key.clone();
        }
        if cli.dev_tls_dir.is_some() {
            config.tls.dev_dir = cli.dev_tls_dir.clone();
        }
        if cli.threads.is_some() {
            config.threads = cli.threads;
        }
        config.access_log |= cli.access_log;
        if !cli.backends.is_empty() {
            config.pools.retain(|p| p.name != "default");
            config.pools.push(PoolConfig::new(
                "default",
                Discovery::Static {
                    backends: cli.backends.clone(),
                },
            ));
        }
        if let Some(count) = cli.managed {
            let command = match &cli.backend_command {
                Some(c) => c.clone(),
                None => std::env::current_exe()?.with_file_name("registry-backend"),
            };
            config.pools.retain(|p| p.name != "default");
            let mut pool = PoolConfig::new(
                "default",
                Discovery::Managed {
                    command,
                    count,
                    args: cli.backend_args.clone(),
                    stop_timeout: default_stop_timeout(),
                },
            );
            // The registry backend speaks h2c; another command may not.
            pool.http2_streams = cli.backend_command.is_none();
            config.pools.push(pool);
        }
        if let Some(store) = &cli.store {
            // An empty value (how Compose and env files clear it) means none.
            config.cluster.store = Some(store.clone()).filter(|s| !s.is_empty());
        }
        config.cluster.store_password = std::env::var(&config.cluster.store_password_env)
            .ok()
            .filter(|p| !p.is_empty());
        config.admin.token = match (&cli.admin_token, &config.admin.token_env) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(env)) => std::env::var(env).ok(),
            (None, None) => None,
        };
        if let Some(token) = &config.admin.token
            && token.len() < 16
        {
            bail!("the admin token (--admin-token / [admin] token_env) must have 16+ characters");
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.listen.http.is_none() && self.listen.https.is_none() {
            bail!("no listener: give --http and/or --https (or [listen] in the config file)");
        }
        if self.listen.https.is_some()
            && self.tls.dev_dir.is_none()
            && (self.tls.cert.is_none() || self.tls.key.is_none())
        {
            bail!("--https needs --tls-cert and --tls-key, or --dev-tls-dir");
        }
        if self.pools.is_empty() {
            bail!("no backends: give --backend ADDR, --managed N, or [[pools]] in the config file");
        }
        if self.pools.len() > u16::MAX as usize {
            bail!("too many pools");
        }
        self.validate_servers()?;
        if !(self.limits.client_share > 0.0 && self.limits.client_share <= 1.0) {
            bail!("[limits] client_share must be above 0 and at most 1");
        }
        for p in &self.pools {
            if !p.route.starts_with('/') {
                bail!("pool {}: route must start with '/'", p.name);
            }
            p.check_ejection()?;
            if let Discovery::Stdio(stdio) = &p.discovery {
                stdio.check(&p.name)?;
                if p.health == HealthKind::Mcp {
                    bail!(
                        "pool {}: a stdio pool's health is its host's (health = \"http\" on /readyz): an `mcp` check would start a process each time",
                        p.name
                    );
                }
                if p.http2_streams {
                    bail!(
                        "pool {}: a stdio pool's host speaks HTTP/1.1 only: http2_streams does not apply",
                        p.name
                    );
                }
            }
        }
        self.check_cluster()?;
        if let Some(admin) = self.listen.admin
            && !admin.ip().is_loopback()
            && self.admin.token.is_none()
        {
            bail!(
                "the admin listener {admin} is not on loopback: give it a bearer token (MCP_GATEWAY_ADMIN_TOKEN, or [admin] token_env naming a variable that holds one)"
            );
        }
        Ok(())
    }
}

impl Config {
    /// Virtual servers: known pools, routes and names of their own, prefixes
    /// and names by the specification's rule, no two members whose names
    /// could clash. Every offending name is named.
    fn validate_servers(&self) -> Result<()> {
        let mut routes: Vec<(&str, &str)> = self
            .pools
            .iter()
            .map(|p| (p.route.trim_end_matches('/'), p.name.as_str()))
            .collect();
        for s in &self.servers {
            let what = format!("virtual server {}", s.name);
            if !s.route.starts_with('/') {
                bail!("{what}: route must start with '/'");
            }
            let route = s.route.trim_end_matches('/');
            if let Some((_, other)) = routes.iter().find(|(r, _)| *r == route) {
                bail!("{what}: route {} is already {other}'s", s.route);
            }
            routes.push((route, &s.name));
            if self.pools.iter().any(|p| p.name == s.name) {
                bail!("{what}: a pool has the same name");
            }
            if s.members.is_empty() {
                bail!("{what}: no members");
            }
            check_members(&what, s, &self.pools)?;
        }
        Ok(())
    }

    fn check_cluster(&self) -> Result<()> {
        let c = &self.cluster;
        if let Some(url) = &c.store {
            check_store_url(url).with_context(|| "[cluster] store")?;
        }
        if c.replicas == 0 {
            bail!("[cluster] replicas must be at least 1");
        }
        if c.store_timeout.is_zero() || c.store_recheck.is_zero() {
            bail!("[cluster] store_timeout and store_recheck must be above zero");
        }
        Ok(())
    }
}

/// The store's URL parses and names a store the gateway can reach
/// (redis://, rediss://, or a Unix socket); nothing is connected.
fn check_store_url(url: &str) -> Result<()> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e} (expected redis://host:6379/0 or rediss://…)"))
}

/// A virtual server's members against the pools and each other.
fn check_members(what: &str, s: &ServerConfig, pools: &[PoolConfig]) -> Result<()> {
    let mut shown: Vec<(String, &str)> = Vec::new();
    for (i, m) in s.members.iter().enumerate() {
        if !pools.iter().any(|p| p.name == m.pool) {
            bail!("{what}: member {} is no pool", m.pool);
        }
        if !valid_name(&m.prefix, true) || m.prefix.len() > 64 {
            bail!(
                "{what}: member {}: prefix {:?} must be at most 64 characters of A-Z a-z 0-9 _ - .",
                m.pool,
                m.prefix
            );
        }
        // One member may go without a prefix (its names win no clash: a
        // prefixed member's names come first); prefixed ones must not
        // start one another.
        for other in &s.members[..i] {
            let (a, b) = (&m.prefix, &other.prefix);
            let both_empty = a.is_empty() && b.is_empty();
            let nested = !a.is_empty()
                && !b.is_empty()
                && (a.starts_with(b.as_str()) || b.starts_with(a.as_str()));
            if both_empty || nested {
                bail!(
                    "{what}: the names of members {} (prefix {a:?}) and {} (prefix {b:?}) can clash: at most one member goes without a prefix, and no prefix may start another",
                    m.pool,
                    other.pool
                );
            }
        }
        for (own, new) in &m.rename {
            if !valid_name(new, false) {
                bail!(
                    "{what}: member {}: rename {own} → {new:?} is not a valid name",
                    m.pool
                );
            }
            if let Some((_, by)) = shown.iter().find(|(n, _)| n == new) {
                bail!(
                    "{what}: the name {new} is given twice (members {by} and {})",
                    m.pool
                );
            }
            shown.push((new.clone(), &m.pool));
        }
    }
    Ok(())
}

impl PoolConfig {
    pub fn new(name: &str, discovery: Discovery) -> Self {
        Self {
            name: name.into(),
            route: default_route(),
            discovery,
            health: HealthKind::Http,
            health_path: default_health_path(),
            health_interval: default_health_interval(),
            eject_for: default_eject(),
            eject_base: default_eject_base(),
            eject_after: default_eject_after(),
            eject_reset: default_eject_reset(),
            max_ejected: default_max_ejected(),
            slow_start: default_slow_start(),
            http2_streams: false,
            auth: None,
        }
    }

    /// The pool's ejection and slow-start rules.
    pub fn policy(&self) -> crate::pool::outlier::Policy {
        crate::pool::outlier::Policy {
            eject_after: self.eject_after,
            eject_base: self.eject_base,
            eject_max: self.eject_for,
            eject_reset: self.eject_reset,
            max_ejected: self.max_ejected,
            slow_start: self.slow_start,
        }
    }

    fn check_ejection(&self) -> Result<()> {
        let name = &self.name;
        if !(self.max_ejected > 0.0 && self.max_ejected <= 1.0) {
            bail!(
                "pool {name}: max_ejected must be a share above 0 and at most 1 (0.5 = half the backends), not {}",
                self.max_ejected
            );
        }
        if self.eject_after == 0 {
            bail!("pool {name}: eject_after must be at least 1");
        }
        if self.eject_base.is_zero() || self.eject_base > self.eject_for {
            bail!(
                "pool {name}: eject_base ({:?}) must be above zero and at most eject_for ({:?})",
                self.eject_base,
                self.eject_for
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let text = r#"
            threads = 2
            [listen]
            http = "127.0.0.1:8080"
            https = "127.0.0.1:8443"
            [tls]
            dev_dir = ".run/tls"
            [limits]
            max_body_bytes = 1024
            idle_timeout = "30s"
            allowed_origins = ["https://app.example.com"]
            [[pools]]
            name = "registry"
            discovery = { managed = { command = "registry-backend", count = 3 } }
            [[pools]]
            name = "k8s"
            route = "/k8s"
            health_interval = "500ms"
            discovery = { dns = { name = "registry.default.svc", port = 8090 } }
        "#;
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.max_body_bytes, 1024);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.pools[1].health_interval, Duration::from_millis(500));
        assert!(matches!(
            c.pools[0].discovery,
            Discovery::Managed { count: 3, .. }
        ));
        assert_eq!(c.listen.admin, default_admin());
    }

    #[test]
    fn a_reload_names_each_setting_that_needs_a_restart() {
        let base = r#"
            [listen]
            http = "127.0.0.1:8080"
            [limits]
            max_body_bytes = 1024
            [[pools]]
            name = "registry"
            discovery = { static = { backends = ["127.0.0.1:1"] } }
        "#;
        let running: Config = toml::from_str(base).unwrap();
        let live: Config = toml::from_str(
            &base
                .replace(
                    "max_body_bytes = 1024",
                    "max_body_bytes = 10\nidle_timeout = \"5s\"",
                )
                .replace(
                    "name = \"registry\"",
                    "name = \"registry\"\nauth = \"none\"",
                ),
        )
        .unwrap();
        assert!(running.restart_needed(&live).is_empty());
        let moved: Config = toml::from_str(&base.replace("8080", "8081").replace(
            "static = { backends = [\"127.0.0.1:1\"] }",
            "dns = { name = \"x\", port = 1 }",
        ))
        .unwrap();
        assert_eq!(
            running.restart_needed(&moved),
            vec!["listen", "pools[registry]"]
        );
    }

    #[test]
    fn ejection_settings_have_defaults_for_two_backends_and_bad_ones_are_named() {
        let pool = |extra: &str| {
            let text = format!(
                "[listen]\nhttp='127.0.0.1:1'\n[[pools]]\nname='r'\n{extra}\ndiscovery={{static={{backends=['127.0.0.1:1']}}}}"
            );
            toml::from_str::<Config>(&text).map(|c| (c.validate().map_err(|e| e.to_string()), c))
        };
        let (ok, c) = pool("").unwrap();
        ok.unwrap();
        let p = c.pools[0].policy();
        assert_eq!(p.max_out(2), 1, "one of two backends out at most");
        assert_eq!(
            (p.eject_after, p.eject_base, p.eject_max),
            (5, Duration::from_secs(2), Duration::from_secs(30))
        );
        let (ok, c) = pool("eject_after = 3\neject_base = '500ms'\neject_for = '4s'\nmax_ejected = 1.0\nslow_start = '0s'").unwrap();
        ok.unwrap();
        assert_eq!(c.pools[0].policy().ejection_ms(4), 4000);
        for (bad, says) in [
            ("max_ejected = 0.0", "max_ejected must be a share"),
            ("max_ejected = 1.5", "max_ejected must be a share"),
            ("eject_after = 0", "eject_after must be at least 1"),
            (
                "eject_base = '1m'",
                "eject_base (60s) must be above zero and at most eject_for (30s)",
            ),
        ] {
            let (err, _) = pool(bad).unwrap();
            let err = err.unwrap_err();
            assert!(err.contains(says) && err.contains("pool r"), "{bad}: {err}");
        }
        assert!(pool("eject_after = -1").is_err(), "not a count");
        assert!(pool("slow_start = 'soon'").is_err(), "not a duration");
    }

    #[test]
    fn virtual_servers_with_clashing_or_unknown_members_are_refused_naming_them() {
        let with = |members: &str| {
            let text = format!(
                "[listen]\nhttp='127.0.0.1:1'\n[[pools]]\nname='a'\ndiscovery={{static={{backends=['127.0.0.1:1']}}}}\n[[pools]]\nname='b'\nroute='/b'\ndiscovery={{static={{backends=['127.0.0.1:2']}}}}\n[[servers]]\nname='all'\nroute='/all'\n{members}"
            );
            toml::from_str::<Config>(&text)
                .unwrap()
                .validate()
                .map_err(|e| e.to_string())
        };
        let member = |pool: &str, prefix: &str| {
            format!("[[servers.members]]\npool='{pool}'\nprefix='{prefix}'\n")
        };
        assert!(with(&(member("a", "") + &member("b", "b_"))).is_ok());
        let err = with(&(member("a", "") + &member("b", ""))).unwrap_err();
        assert!(err.contains("members b") && err.contains("and a"), "{err}");
        let err = with(&(member("a", "x_") + &member("b", "x_y"))).unwrap_err();
        assert!(err.contains("can clash"), "{err}");
        let err = with(&member("nope", "n_")).unwrap_err();
        assert!(err.contains("member nope is no pool"), "{err}");
        let err = with(&member("a", "bad prefix")).unwrap_err();
        assert!(err.contains("prefix \"bad prefix\""), "{err}");
        let renamed = member("a", "a_")
            + "rename = { x = 'shown' }\n"
            + &member("b", "b_")
            + "rename = { y = 'shown' }\n";
        let err = with(&renamed).unwrap_err();
        assert!(err.contains("the name shown is given twice"), "{err}");
    }

    #[test]
    fn a_stdio_pool_parses_with_its_bounds_and_bad_ones_are_named() {
        let pool = |stdio: &str, extra: &str| {
            let text = format!(
                "[listen]\nhttp='127.0.0.1:1'\n[[pools]]\nname='mem'\n{extra}\ndiscovery={{stdio={{{stdio}}}}}"
            );
            toml::from_str::<Config>(&text).map(|c| (c.validate().map_err(|e| e.to_string()), c))
        };
        let (ok, c) = pool(
            r#"command='npx', args=['-y','@modelcontextprotocol/server-memory'], env={MEMORY_FILE_PATH='{process_dir}/m.jsonl'}, env_from={TOKEN='GW_TOKEN'}, max_processes=4, warm=1, idle_timeout='2m'"#,
            "",
        )
        .unwrap();
        ok.unwrap();
        let Discovery::Stdio(s) = &c.pools[0].discovery else {
            panic!("a stdio pool")
        };
        assert_eq!((s.max_processes, s.warm), (4, 1));
        assert_eq!(s.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.stop_timeout, default_stdio_stop());
        assert_eq!(s.env_from["TOKEN"], "GW_TOKEN");
        for (stdio, extra, says) in [
            ("command=''", "", "stdio command is empty"),
            (
                "command='x', max_processes=0",
                "",
                "max_processes must be at least 1",
            ),
            (
                "command='x', max_processes=2, warm=3",
                "",
                "warm (3) must be at most max_processes (2)",
            ),
            (
                "command='x', env={'A=B'='1'}",
                "",
                "is not an environment variable name",
            ),
            (
                "command='x'",
                "health = 'mcp'",
                "would start a process each time",
            ),
            (
                "command='x'",
                "http2_streams = true",
                "speaks HTTP/1.1 only",
            ),
        ] {
            let (err, _) = pool(stdio, extra).unwrap();
            let err = err.unwrap_err();
            assert!(
                err.contains(says) && err.contains("pool mem"),
                "{stdio}: {err}"
            );
        }
        assert!(
            pool("command='x', shell=true", "").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn rejects_unknown_keys_and_missing_listeners() {
        assert!(toml::from_str::<Config>("[limits]\nmax_bdy = 1").is_err());
        let c: Config =
            toml::from_str("[[pools]]\nname='a'\ndiscovery={static={backends=['127.0.0.1:1']}}")
                .unwrap();
        assert!(c.validate().is_err());
    }
}
