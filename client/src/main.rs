//! `mcp-client`: the gateway from the shell.

use anyhow::Result;
use clap::{Parser, Subcommand};
use mcp_client::cmd::{self, Output};
use mcp_client::connect::{ConnectArgs, connect};

#[derive(Parser)]
#[command(
    name = "mcp-client",
    version,
    about = "Use MCP servers through the gateway from the shell"
)]
struct Cli {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Output format.
    #[arg(long, short, value_enum, default_value = "pretty", global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List tools with their descriptions and parameters.
    Tools,
    /// Call a tool: `call get_agent agent_id=x` or `call register_agent --json '{…}'`.
    Call {
        tool: String,
        /// key=value arguments (values that parse as JSON are JSON).
        args: Vec<String>,
        /// Arguments as one JSON object (key=value pairs override it).
        #[arg(long)]
        json: Option<String>,
    },
    /// An interactive shell over one session.
    Repl,
    /// Chat with an LLM that uses the registry's tools and talks to agents over A2A.
    Chat(cmd::chat::ChatArgs),
    /// Talk to a registered agent over A2A.
    A2a {
        #[command(subcommand)]
        action: A2aAction,
    },
    /// Load-test an MCP server: scenarios, stages, thresholds, baselines,
    /// shards (the README's "Load testing" describes the scenario file).
    Load(Box<cmd::load::LoadCommand>),
}

#[derive(Subcommand)]
enum A2aAction {
    /// Look AGENT_ID up in the registry and send it MESSAGE.
    Send {
        agent_id: String,
        message: String,
        /// Continue an earlier conversation.
        #[arg(long)]
        context_id: Option<String>,
    },
}

#[tokio::main]
async fn main() {
    // `mcp-client … | head`: a closed pipe ends the program quietly, as for
    // any Unix tool, instead of a panic on the next print.
    // SAFETY: restoring the default disposition of one signal at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            // TLS and HTTP internals log their own failures; ours say them in words.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rustls=off,hyper_util=off,reqwest=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        if let Some(crossed) = e.downcast_ref::<cmd::load::GatesCrossed>() {
            eprintln!("{crossed}");
            std::process::exit(cmd::load::GatesCrossed::EXIT_CODE);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// HTTP for the world outside the gateway (LLM APIs, A2A agents).
fn outside_http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()?)
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Load(load) = &cli.command {
        return cmd::load::command(&cli.conn, load, cli.output).await;
    }
    let conn = connect(&cli.conn).await?;
    let result = match cli.command {
        Command::Tools => cmd::tools::run(&conn, cli.output).await,
        Command::Call { tool, args, json } => {
            let args = cmd::call::build_args(&args, json.as_deref())?;
            cmd::call::run(&conn, &tool, args, cli.output).await
        }
        Command::Repl => cmd::repl::run(&conn).await,
        Command::Chat(args) => cmd::chat::run(&conn, &outside_http()?, &args).await,
        Command::A2a {
            action:
                A2aAction::Send {
                    agent_id,
                    message,
                    context_id,
                },
        } => {
            cmd::a2a::send(
                &conn,
                &outside_http()?,
                &agent_id,
                &message,
                context_id.as_deref(),
                cli.output,
            )
            .await
        }
        Command::Load(_) => Ok(()),
    };
    conn.close().await;
    result
}
