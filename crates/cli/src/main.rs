//! The `sluice` binary: `sluice server` runs the REST server; `sluice demo` runs the
//! server on the embedded broker with a card-transaction generator and the fraud
//! detection queries, and prints the alerts as they appear; `sluice shell` is the SQL
//! shell over a server's REST API.

mod demo;
mod shell;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_server::config::ProcessingGuarantee;
use sluice_server::{Server, ServerConfig};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "SQL over Kafka streams")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (REST API on --listen).
    Server(ServerArgs),
    /// Run the fraud-detection demo on the embedded broker (or on --bootstrap-servers).
    Demo(demo::DemoArgs),
    /// An interactive SQL shell on a running server; statements from a pipe or -f FILE
    /// run without one.
    Shell(shell::ShellArgs),
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Kafka bootstrap servers; without it an embedded, in-memory broker is started.
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Directory for local state.
    #[arg(long, default_value = "sluice-state")]
    state_dir: PathBuf,
    /// Prefix of this server's consumer groups and internal topics.
    #[arg(long, default_value = "default_")]
    service_id: String,
    /// Milliseconds after which a source partition that delivers nothing stops holding
    /// the watermark back (0: never). A query can override it with the
    /// `sluice.idle.timeout.ms` property.
    #[arg(long, default_value_t = 10_000)]
    idle_timeout_ms: u64,
    /// How many push queries (SELECT … EMIT CHANGES) may run at once; more get HTTP 429.
    #[arg(long, default_value_t = 100)]
    max_push_queries: usize,
    /// exactly_once_v2 (results and offsets in one Kafka transaction per batch) or
    /// at_least_once. A statement can choose with the `processing.guarantee` property.
    #[arg(long, default_value = "exactly_once_v2", value_parser = parse_guarantee)]
    processing_guarantee: ProcessingGuarantee,
}

fn parse_guarantee(s: &str) -> Result<ProcessingGuarantee, String> {
    ProcessingGuarantee::parse(s)
        .ok_or_else(|| format!("unknown guarantee {s:?}; use exactly_once_v2 or at_least_once"))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    // Colours only on a terminal: a log redirected to a file stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Server(args) => server(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Shell(args) => shell::run(args).await,
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let server = Server::start(ServerConfig {
        bootstrap_servers: args.bootstrap_servers,
        state_dir: args.state_dir,
        service_id: args.service_id,
        idle_timeout: (args.idle_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(args.idle_timeout_ms)),
        max_push_queries: args.max_push_queries,
        processing_guarantee: args.processing_guarantee,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    announce_broker(&server);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    server.serve(listener, shutdown_signal()).await?;
    Ok(())
}

/// Say which broker the server uses; the embedded one loses its data on exit.
pub(crate) fn announce_broker(server: &Server) {
    if server.is_embedded() {
        tracing::warn!(
            bootstrap_servers = server.bootstrap_servers(),
            "running on an embedded, in-memory Kafka broker at {}: data is lost when the server stops; \
             give --bootstrap-servers to use a real cluster",
            server.bootstrap_servers()
        );
    } else {
        tracing::info!(
            bootstrap_servers = server.bootstrap_servers(),
            "using Kafka"
        );
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what `docker stop` and service managers send).
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
