//! What a parked connection keeps alive, by size: the futures (state
//! machines) on the stack of a connection's task, each boxed where pingora
//! or `async_trait` boxes it, and the per-connection structs. Nothing is
//! polled; a future's size is fixed when it is made.
//!
//!   cargo run --release -p mcp-gateway --example future_sizes
//!
//! BENCHMARKS.md ("Where an idle session's memory goes") reads these.

use std::mem::{size_of, size_of_val};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use mcp_gateway::app::Gateway;
use mcp_gateway::config::{Cli, Config};
use mcp_gateway::front::Front;
use mcp_gateway::policy::guard::Guard;
use mcp_gateway::proxy::McpProxy;
use mcp_gateway::token::TokenSealer;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(sizes())
}

async fn stream(listener: &tokio::net::TcpListener) -> anyhow::Result<Stream> {
    let tcp = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    Ok(Box::new(pingora::protocols::l4::stream::Stream::from(tcp)))
}

async fn sizes() -> anyhow::Result<()> {
    let config = Config::default();
    let cli = Cli::parse_from(["mcp-gateway"]);
    let guard = Guard::with_store(&config, None)?;
    let sealer = TokenSealer::new(
        b"future-sizes-key-0123456789abcdef",
        Duration::from_secs(60),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let gw = Gateway::new(&config, cli, guard, vec![], vec![], sealer, None, None);
    let conf = Arc::new(ServerConf::default());
    let proxy = McpProxy {
        gw: Arc::clone(&gw),
    };
    let app = Arc::new(pingora::proxy::http_proxy(
        &conf,
        McpProxy {
            gw: Arc::clone(&gw),
        },
    ));
    let front = Arc::new(Front {
        app: Arc::clone(&app),
        gw: Arc::clone(&gw),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (_tx, shutdown) = tokio::sync::watch::channel(false);

    let f = front.process_new(stream(&listener).await?, &shutdown);
    println!(
        "Front::process_new (boxed by async_trait)      {:>6} B",
        size_of_val(&*f)
    );
    drop(f);
    let f = app.process_new(stream(&listener).await?, &shutdown);
    println!(
        "HttpProxy::process_new (pingora, boxed)        {:>6} B",
        size_of_val(&*f)
    );
    drop(f);
    let session = pingora::protocols::http::ServerSession::new_http1(stream(&listener).await?);
    let f = app.process_new_http(session, &shutdown);
    println!(
        "HttpProxy::process_new_http (pingora, boxed)   {:>6} B",
        size_of_val(&*f)
    );
    drop(f);
    let mut session = Session::new_h1(stream(&listener).await?);
    let mut ctx = proxy.new_ctx();
    println!(
        "pingora proxy Session                          {:>6} B",
        size_of_val(&session)
    );
    println!(
        "the gateway's Ctx                              {:>6} B",
        size_of_val(&ctx)
    );
    let f = proxy.request_filter(&mut session, &mut ctx);
    println!(
        "McpProxy::request_filter (boxed by async_trait) {:>5} B",
        size_of_val(&*f)
    );
    drop(f);
    println!(
        "l4 Stream (pingora's TCP stream struct)         {:>5} B",
        size_of::<pingora::protocols::l4::stream::Stream>()
    );
    Ok(())
}
