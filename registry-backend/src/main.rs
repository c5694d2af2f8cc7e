//! `registry-backend`: serve the registry until SIGTERM, then drain and exit 0.

use std::sync::Arc;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use clap::Parser as _;
use registry_backend::config::Config;
use registry_backend::http::{self, Lifecycle, McpOptions};
use registry_backend::store::{AgentStore, MongoStore, SqliteStore};
use registry_backend::tools::Registry;
use tokio_util::sync::CancellationToken;

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn AgentStore>> {
    Ok(match config.mongodb_uri() {
        Some(uri) => Arc::new(
            MongoStore::connect(&uri, &config.mongodb_database, config.mongodb_transactions)
                .await
                .context("connecting to MongoDB")?,
        ),
        None => Arc::new(
            SqliteStore::open(&config.db)
                .with_context(|| format!("opening the embedded store {}", config.db.display()))?,
        ),
    })
}

async fn terminated() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.check_config {
        println!("configuration OK: {}", config.summary());
        return Ok(());
    }
    let telemetry = telemetry::init(
        "registry-backend",
        config.log_format,
        config.otlp_endpoint.as_deref(),
    )?;
    let store = open_store(&config).await?;
    let registry = Arc::new(Registry {
        store,
        instance: config.instance_name(),
        metrics: Default::default(),
    });
    let life = Arc::new(Lifecycle::default());
    let cancel = CancellationToken::new();
    let (app, metrics_app) = http::router(
        Arc::clone(&registry),
        Arc::clone(&life),
        McpOptions {
            allowed_hosts: (!config.allow_any_host).then(|| config.allowed_hosts.clone()),
            max_body_bytes: config.max_body_bytes,
            session_idle_timeout: config.session_idle_timeout,
            cancel: cancel.clone(),
            metrics_apart: config.metrics_listen.is_some(),
        },
    );
    if let (Some(at), Some(metrics_app)) = (config.metrics_listen, metrics_app) {
        let listener = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("binding the metrics listener {at}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics on their own listener");
        // Ends with the process.
        tokio::spawn(async move { axum::serve(listener, metrics_app).await });
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    // One line on stdout that scripts and tests read to find us.
    println!("registry-backend listening on http://{addr}/mcp");
    tracing::info!(%addr, instance = %registry.instance, store = registry.store.kind(), "serving");

    let stopped = CancellationToken::new();
    let server = tokio::spawn({
        let stopped = stopped.clone();
        async move {
            // Nagle + delayed ACK would hold small SSE writes for ~40 ms.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await
        }
    });

    let signal = terminated().await;
    tracing::info!(signal, inflight = life.inflight(), "draining");
    life.start_drain();
    if tokio::time::timeout(config.drain_timeout, life.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(inflight = life.inflight(), "drain timed out");
    }
    cancel.cancel();
    stopped.cancel();
    match tokio::time::timeout(http::CLOSE_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error while stopping"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("connections still open after the grace period; exiting"),
    }
    tracing::info!("stopped");
    drop(telemetry); // the last spans go out
    Ok(())
}
