//! The executor as a process of its own: its flags, logging, signals, and serving until
//! one arrives. Shared by the `executor-svc` binary and `almanac executor`.

use std::path::PathBuf;

use clap::ValueEnum;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;

use crate::config::ActionsConfig;
use crate::{Config, ServerError, server};

/// How logs are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The flags of a standalone executor.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(
        long,
        env = "ALMANAC_EXECUTOR_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub listen: String,
    /// SQLite database file (created with its folder if missing).
    #[arg(
        long,
        env = "ALMANAC_EXECUTOR_DATABASE",
        default_value = "./.almanac/executor.db"
    )]
    pub database: PathBuf,
    /// A PostgreSQL database instead of the SQLite file (`postgres://user:pw@host/db`;
    /// the executor's tables go in its schema `executor`). Wins over `--database`.
    #[arg(long, env = "ALMANAC_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A TOML file of secrets, SMTP profiles, egress and command allow-lists (see
    /// `config::ActionsConfig`); `ALMANAC_SECRET_<NAME>` variables add secrets.
    #[arg(long, env = "ALMANAC_EXECUTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// How long finished executions are kept (e.g. `30d`; at least `1h`). It must exceed
    /// the longest time the scheduler may stay down.
    #[arg(long, env = "ALMANAC_EXECUTOR_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub retention: std::time::Duration,
    /// How many executions may run their actions at once.
    #[arg(long, env = "ALMANAC_EXECUTOR_MAX_CONCURRENT", default_value_t = crate::config::DEFAULT_MAX_CONCURRENT_EXECUTIONS)]
    pub max_concurrent_executions: usize,
    /// This executor's name among the replicas sharing a database (it owns the leases of
    /// the executions it runs). Give a stable one (e.g. the pod name) so that a restarted
    /// process takes its executions back at once; default: a fresh UUIDv7 per start.
    #[arg(long, env = "ALMANAC_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// How long an execution's lease lasts without renewal (renewed every third of it;
    /// at least 1s). Other replicas adopt a crashed executor's executions after it.
    #[arg(long, env = "ALMANAC_LEASE_TTL", default_value = "15s", value_parser = crate::config::parse_lease_ttl)]
    pub lease_ttl: std::time::Duration,
    /// Log format (logs go to stderr).
    #[arg(long, value_enum, env = "ALMANAC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Binds, prints `executor listening on http://ADDR` as the first line on stdout, and
/// serves until SIGINT/SIGTERM (a second signal exits at once).
pub async fn serve(args: ServeArgs) -> Result<(), ServerError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or collector gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    let bind_error = |source| ServerError::Bind {
        addr: args.listen.clone(),
        source,
    };
    let listener = TcpListener::bind(&args.listen).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    println!("executor listening on http://{addr}");
    let mut config = Config::new(args.database);
    config.database_url = args.database_url;
    config.max_concurrent_executions = args.max_concurrent_executions;
    config.retention = args.retention;
    if let Some(id) = args.replica_id.filter(|id| !id.trim().is_empty()) {
        config.replica_id = id;
    }
    config.lease_ttl = args.lease_ttl;
    config.actions = ActionsConfig::load(args.config.as_deref())?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(signals(stop_tx));
    server::run(config, listener, async move {
        let _ = stop_rx.await;
    })
    .await
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
