//! The `executor-svc` binary: parses flags, sets up logging, binds, and runs the server
//! until SIGINT or SIGTERM (a second signal exits at once).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;

use almanac_executor::{Config, server};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Almanac's executor: runs actions and records their events.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "ALMANAC_EXECUTOR_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    listen: SocketAddr,
    /// SQLite database file (created if missing).
    #[arg(
        long,
        env = "ALMANAC_EXECUTOR_DATABASE",
        default_value = "./.almanac/executor.db"
    )]
    database: PathBuf,
    /// How many executions may run their actions at once.
    #[arg(long, env = "ALMANAC_EXECUTOR_MAX_CONCURRENT", default_value_t = 256)]
    max_concurrent_executions: usize,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = Config::new(args.database);
    config.max_concurrent_executions = args.max_concurrent_executions;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(signals(stop_tx));
    server::run(config, listener, async move {
        let _ = stop_rx.await;
    })
    .await
    .context("executor failed")?;
    Ok(())
}

/// The first SIGINT/SIGTERM asks for a graceful shutdown; a second one exits at once.
async fn signals(stop: oneshot::Sender<()>) {
    if let Err(error) = next_signal().await {
        tracing::error!(%error, "cannot listen for signals");
        return;
    }
    tracing::info!("signal received: shutting down (send another to exit at once)");
    let _ = stop.send(());
    if next_signal().await.is_ok() {
        tracing::warn!("second signal: exiting at once");
        std::process::exit(130);
    }
}

#[cfg(unix)]
async fn next_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn next_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
