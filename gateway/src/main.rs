//! `mcp-gateway`: builds the pingora server from the configuration and runs
//! it until SIGTERM (graceful shutdown) or SIGQUIT (graceful upgrade).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser as _;
use mcp_gateway::admin::Admin;
use mcp_gateway::app::Gateway;
use mcp_gateway::cluster::Store;
use mcp_gateway::config::{
    Cli, Command, Config, Discovery, HealthKind, PREVIOUS_SESSION_KEY_ENV, PoolConfig,
    SESSION_KEY_ENV, StdioConfig,
};
use mcp_gateway::front::Front;
use mcp_gateway::pool::discovery::{PoolDiscovery, Source, resolve_static};
use mcp_gateway::pool::health::{McpHealthCheck, Observed};
use mcp_gateway::pool::supervisor::Supervisor;
use mcp_gateway::pool::{Member, MemberTable, Pool};
use mcp_gateway::proxy::McpProxy;
use mcp_gateway::stdio::guardian::{self, Guardian};
use mcp_gateway::stdio::{HostLimits, HostService, STDIO_MEMBER, StdioHost};
use mcp_gateway::tls::{ServedCert, ensure_dev_tls};
use mcp_gateway::token::TokenSealer;
use pingora::apps::http_app::HttpServer;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backends, LoadBalancer};
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

/// jemalloc rather than the system allocator: a request makes ~85 small
/// allocations (heaptrack), and in an A/B run (`tests/bench/ab.sh`, 4
/// rounds) jemalloc cut CPU per call by 6.5 % and idle-session RSS by 7 %
/// (mimalloc cut CPU by 5 % but doubled idle-session RSS). BENCHMARKS.md.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A secret from an env var, else from a file (trimmed), else none. With
/// `empty_is_none`, an empty variable counts as unset (how Compose and env
/// files clear an optional secret).
fn secret(
    env: &str,
    file: Option<&std::path::Path>,
    empty_is_none: bool,
) -> Result<Option<Vec<u8>>> {
    if let Ok(key) = std::env::var(env)
        && !(empty_is_none && key.is_empty())
    {
        if key.len() < 16 {
            bail!("{env} must be at least 16 characters");
        }
        return Ok(Some(key.into_bytes()));
    }
    if let Some(path) = file {
        let key = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let key: Vec<u8> = key.trim_ascii().to_vec();
        if key.len() < 16 {
            bail!("{} must hold at least 16 bytes", path.display());
        }
        return Ok(Some(key));
    }
    Ok(None)
}

/// The session-id sealer: the current key (env var, else key file, else a
/// random one) and, after a rotation, the previous key, which only opens.
fn session_sealer(config: &Config) -> Result<TokenSealer> {
    let current = match secret(SESSION_KEY_ENV, config.sessions.key_file.as_deref(), false)? {
        Some(key) => key,
        None => {
            tracing::warn!(
                "no {SESSION_KEY_ENV} or sessions.key_file: using a random session key (sessions will not survive a restart or be shared between replicas)"
            );
            TokenSealer::random_secret().to_vec()
        }
    };
    let sealer = TokenSealer::new(&current, config.sessions.max_age)
        .map_err(|e| anyhow::anyhow!("session key: {e}"))?;
    match secret(
        PREVIOUS_SESSION_KEY_ENV,
        config.sessions.previous_key_file.as_deref(),
        true,
    )? {
        Some(previous) => {
            tracing::info!(
                "session ids sealed under the previous session key still open; new ones are sealed under the current key"
            );
            sealer
                .with_previous(&previous)
                .map_err(|e| anyhow::anyhow!("previous session key: {e}"))
        }
        None => Ok(sealer),
    }
}

/// A stdio pool's source: its in-process host (bound now, served by a
/// background service on its own runtime) as the pool's one member. The
/// member's identity names this replica when `[cluster] advertise` is set,
/// so another replica knows where the session's process lives.
fn stdio_host(
    server: &mut Server,
    pc: &PoolConfig,
    stdio: &StdioConfig,
    config: &Config,
    guardian: &mut Option<Arc<Guardian>>,
) -> Result<(Source, Arc<StdioHost>)> {
    let guardian = match guardian {
        Some(g) => Arc::clone(g),
        None => {
            let grace = config
                .pools
                .iter()
                .filter_map(|p| match &p.discovery {
                    Discovery::Stdio(s) => Some(s.stop_timeout),
                    _ => None,
                })
                .max()
                .unwrap_or_default();
            let g = Arc::new(Guardian::start(grace).context("starting the stdio guardian")?);
            guardian.insert(g).clone()
        }
    };
    let limits = HostLimits {
        max_body_bytes: config.limits.max_body_bytes,
        upstream_idle_timeout: config.limits.upstream_idle_timeout,
    };
    let host = StdioHost::bind(&pc.name, stdio, limits, Some(guardian))?;
    let mut svc = background_service(
        &format!("stdio {}", pc.name),
        HostService(Arc::clone(&host)),
    );
    svc.threads = Some(config.threads.unwrap_or(2));
    server.add_service(svc);
    let id = match &config.cluster.advertise {
        Some(replica) => format!("{STDIO_MEMBER}@{replica}"),
        None => STDIO_MEMBER.to_owned(),
    };
    let member = Member {
        id,
        addr: host.addr(),
        weight: 1,
    };
    Ok((Source::Static(vec![member]), host))
}

/// The pool's active health check (a stdio pool's host answers any `GET` but `/mcp`).
fn health_check(pc: &PoolConfig) -> Result<Box<dyn HealthCheck + Send + Sync>> {
    Ok(match pc.health {
        HealthKind::Http => {
            let mut hc = HttpHealthCheck::new("localhost", false);
            hc.req
                .set_uri(pc.health_path.parse().context("health_path")?);
            hc.peer_template.options.connection_timeout = Some(Duration::from_secs(1));
            hc.peer_template.options.read_timeout = Some(Duration::from_secs(2));
            Box::new(hc)
        }
        HealthKind::Mcp => Box::new(McpHealthCheck::new(Duration::from_secs(2))),
        HealthKind::Tcp => {
            let mut hc = TcpHealthCheck::new();
            hc.peer_template.options.connection_timeout = Some(Duration::from_secs(1));
            hc
        }
    })
}

/// The pool's health check inside `Observed`: every verdict also reaches
/// the member's state (a pass ends an ejection), and a healthy member is
/// asked its revisions (a stdio host is not: the probe would start a process).
fn observed(pc: &PoolConfig, members: &Arc<MemberTable>, ask: bool) -> Result<Box<Observed>> {
    let revisions = ask.then_some(Duration::from_secs(2));
    let check = health_check(pc)?;
    Ok(Box::new(Observed::new(
        check,
        Arc::clone(members),
        revisions,
    )))
}

fn build_pool(
    server: &mut Server,
    index: u16,
    pc: &PoolConfig,
    config: &Config,
    guardian: &mut Option<Arc<Guardian>>,
) -> Result<(Arc<Pool>, Option<Arc<StdioHost>>)> {
    let members = Arc::new(MemberTable::default());
    let mut stdio = None;
    let (source, update) = match &pc.discovery {
        Discovery::Static { backends } => (
            Source::Static(resolve_static(backends)?),
            Duration::from_secs(5),
        ),
        Discovery::Dns {
            name,
            port,
            interval,
        } => (
            Source::Dns {
                name: name.clone(),
                port: *port,
            },
            *interval,
        ),
        Discovery::Managed {
            command,
            count,
            args,
            stop_timeout,
        } => {
            if !command.exists() {
                bail!(
                    "pool {}: managed backend program {} not found (build it with cargo build --release)",
                    pc.name,
                    command.display()
                );
            }
            let svc = background_service(
                &format!("supervisor {}", pc.name),
                Supervisor::new(
                    &pc.name,
                    command.clone(),
                    args.clone(),
                    *count,
                    *stop_timeout,
                ),
            );
            let supervisor = svc.task();
            server.add_service(svc);
            (Source::Managed(supervisor), Duration::from_millis(500))
        }
        Discovery::Stdio(cfg) => {
            let (source, host) = stdio_host(server, pc, cfg, config, guardian)?;
            stdio = Some(host);
            (source, Duration::from_secs(5))
        }
    };
    let supervisor = match &source {
        Source::Managed(s) => Some(Arc::clone(s)),
        _ => None,
    };
    let discovery = PoolDiscovery {
        source,
        members: Arc::clone(&members),
    };
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(discovery)));
    lb.set_health_check(observed(pc, &members, stdio.is_none())?);
    lb.health_check_frequency = Some(pc.health_interval);
    lb.update_frequency = Some(update);
    let svc = background_service(&format!("pool {}", pc.name), lb);
    let lb = svc.task();
    server.add_service(svc);
    let pool = Arc::new(
        Pool::new(
            index,
            pc.name.clone(),
            pc.route.trim_end_matches('/').to_owned(),
            lb,
            members,
            pc.policy(),
            supervisor.clone(),
        )
        .with_stdio(stdio.is_some())
        .with_http2_streams(pc.http2_streams),
    );
    if let Some(s) = supervisor {
        // A rollout waits for the pool's own health checks to see the replacement.
        let weak = Arc::downgrade(&pool);
        s.set_ready_check(Arc::new(move |addr| {
            weak.upgrade().is_some_and(|p| {
                p.member_at(&addr)
                    .is_some_and(|b| p.checks.backends().ready(&b.backend))
            })
        }));
    }
    Ok((pool, stdio))
}

/// `--check-config`: the configuration loads and its policy builds.
fn check_config(config: &Config) -> Result<()> {
    let guard = mcp_gateway::policy::guard::Guard::new(config)?;
    let store = Store::new(&config.cluster)?.map_or_else(
        || "store: none (limits per replica)".to_owned(),
        |s| {
            let c = &config.cluster;
            let password = match &c.store_password {
                Some(_) => format!(", password from {}", c.store_password_env),
                None => String::new(),
            };
            format!(
                "store: {}{password} ({:?}, {} replicas)",
                s.shown(),
                c.on_store_down,
                c.replicas
            )
        },
    );
    let listeners = [
        ("http", config.listen.http),
        ("https", config.listen.https),
        ("admin", config.listen.admin),
    ]
    .iter()
    .filter_map(|(k, a)| a.map(|a| format!("{k} {a}")))
    .collect::<Vec<_>>()
    .join(", ");
    let pools = config
        .pools
        .iter()
        .map(|p| format!("{} at {}", p.name, p.route))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "configuration OK: {listeners}; pools: {pools}; {store}; {}",
        guard.summary()
    );
    Ok(())
}

/// pingora's server, with the drain and grace periods of the configuration.
fn pingora_server(config: &Config, upgrade: bool) -> Result<Server> {
    let mut conf = ServerConf::new().context("pingora defaults")?;
    conf.threads = config.threads.unwrap_or(2);
    // After the drain (DrainingSignals) pingora closes the listeners, then
    // lets requests in flight (open streams too) run this long, then stops.
    conf.grace_period_seconds = Some(config.shutdown_timeout_secs.unwrap_or(10));
    conf.graceful_shutdown_timeout_seconds = Some(1);
    conf.max_retries = 3;
    if let Some(sock) = &config.upgrade_sock {
        conf.upgrade_sock = sock.to_string_lossy().into_owned();
    }
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    Ok(server)
}

/// The served certificate and its files, when there is an HTTPS listener.
type Certificate = (Arc<ServedCert>, std::path::PathBuf, std::path::PathBuf);

fn certificate(config: &Config, banner: &mut Vec<String>) -> Result<Option<Certificate>> {
    if config.listen.https.is_none() {
        return Ok(None);
    }
    let (cert, key) = match (&config.tls.cert, &config.tls.key, &config.tls.dev_dir) {
        (Some(c), Some(k), _) => (c.clone(), k.clone()),
        (_, _, Some(dir)) => {
            let dev = ensure_dev_tls(dir)?;
            banner.push(format!("development CA:    {}", dev.ca.display()));
            (dev.cert, dev.key)
        }
        _ => bail!("HTTPS needs a certificate"),
    };
    Ok(Some((ServedCert::load(&cert, &key)?, cert, key)))
}

/// The MCP listeners: the proxy behind the front door (connection cap,
/// header deadline and bound), on plain HTTP and HTTPS.
fn mcp_service(
    server: &Server,
    gw: &Arc<Gateway>,
    config: &Config,
    tls: Option<Certificate>,
    banner: &mut Vec<String>,
) -> Result<Service<Front<pingora::proxy::HttpProxy<McpProxy>>>> {
    let app = pingora::proxy::http_proxy(&server.configuration, McpProxy { gw: Arc::clone(gw) });
    let front = Front {
        app: Arc::new(app),
        gw: Arc::clone(gw),
    };
    let mut proxy = Service::new("mcp-gateway".to_string(), front);
    proxy.set_connection_filter(Arc::new(mcp_gateway::app::AcceptFilter {
        gw: Arc::clone(gw),
    }));
    if let Some(addr) = config.listen.http {
        proxy.add_tcp(&addr.to_string());
        banner.push(format!(
            "MCP (plain HTTP):  http://{addr}/mcp   legacy SSE: http://{addr}/sse"
        ));
    }
    if let (Some(addr), Some((served, cert, key))) = (config.listen.https, tls) {
        let mut tls = TlsSettings::intermediate(
            cert.to_str().context("cert path")?,
            key.to_str().context("key path")?,
        )
        .map_err(|e| anyhow::anyhow!("TLS setup: {e}"))?;
        // Served from memory, reloaded when the files change.
        tls.set_cert_resolver(served);
        tls.enable_h2();
        proxy.add_tls_with_settings(&addr.to_string(), None, tls);
        banner.push(format!(
            "MCP (HTTPS):       https://{addr}/mcp   legacy SSE: https://{addr}/sse"
        ));
    }
    Ok(proxy)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Rollout { admin, pool }) = &cli.command {
        let rt = tokio::runtime::Runtime::new()?;
        let ok = rt.block_on(mcp_gateway::ctl::rollout(
            *admin,
            pool,
            cli.admin_token.as_deref(),
        ))?;
        std::process::exit(if ok { 0 } else { 1 });
    }
    if let Some(Command::StdioGuardian { grace_ms }) = &cli.command {
        std::process::exit(guardian::run(Duration::from_millis(*grace_ms)));
    }
    let telemetry = telemetry::init("mcp-gateway", cli.log_format, cli.otlp_endpoint.as_deref())?;
    let config = Config::load(&cli)?;
    if cli.check_config {
        return check_config(&config);
    }
    let sealer = session_sealer(&config)?;
    let mut server = pingora_server(&config, cli.upgrade)?;
    let (mut pools, mut hosts) = (Vec::new(), Vec::new());
    let mut guardian = None;
    for (i, pc) in config.pools.iter().enumerate() {
        let (pool, host) = build_pool(&mut server, i as u16, pc, &config, &mut guardian)?;
        pools.push(pool);
        hosts.extend(host);
    }
    let store = Store::new(&config.cluster)?;
    if let Some(store) = &store {
        server.add_service(background_service(
            "shared store",
            mcp_gateway::cluster::Watcher(Arc::clone(store)),
        ));
    }
    let guard = mcp_gateway::policy::guard::Guard::with_store(&config, store.clone())?;
    let auth_summary = guard.summary();
    let mut banner = Vec::new();
    let tls = certificate(&config, &mut banner)?;
    let served = tls.as_ref().map(|(served, _, _)| Arc::clone(served));
    let gw = Gateway::new(
        &config,
        cli.clone(),
        guard,
        pools,
        hosts,
        sealer,
        served,
        store,
    );
    server.add_service(background_service(
        "reloader",
        mcp_gateway::app::Reloader(Arc::clone(&gw)),
    ));
    server.add_service(background_service(
        "federation",
        mcp_gateway::federation::Watcher(Arc::clone(&gw.federation)),
    ));
    server.add_service(mcp_service(&server, &gw, &config, tls, &mut banner)?);
    if let Some(addr) = config.listen.admin {
        let admin = Admin {
            gw: Arc::clone(&gw),
            token: config.admin.token.clone(),
        };
        let mut admin = Service::new("admin".to_string(), HttpServer::new_app(admin));
        admin.add_tcp(&addr.to_string());
        server.add_service(admin);
        banner.push(format!(
            "admin:             http://{addr}/backends  /metrics  /health"
        ));
    }
    if let Some(store) = &gw.store {
        let c = &config.cluster;
        banner.push(format!(
            "shared store:      {} (limits across replicas; {:?} while it is down, {} replicas)",
            store.shown(),
            c.on_store_down,
            c.replicas
        ));
    }
    banner.push(auth_summary);
    println!("mcp-gateway ready");
    for line in &banner {
        println!("  {line}");
    }
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(mcp_gateway::app::DrainingSignals {
            gw,
            drain_for: config.drain_secs(),
        }),
    });
    drop(telemetry); // the last spans go out
    std::process::exit(0)
}
