//! The scheduler as a process of its own: its flags, and serving them until a signal.
//! Shared by the `scheduler-svc` binary and `almanac scheduler`.

use std::path::PathBuf;

use crate::config::Config;
use crate::server::{self, ServerError};
use crate::store::Location;
use crate::telemetry::{self, LogFormat};

/// The flags of a standalone scheduler (the executor's endpoint is given apart, because
/// `almanac` already has a global `--executor`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(
        long,
        env = "ALMANAC_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: String,
    /// SQLite file of the scheduler's ledger (created with its folder if missing).
    #[arg(
        long,
        env = "ALMANAC_SCHEDULER_DATABASE",
        default_value = "./.almanac/scheduler.db"
    )]
    pub database: PathBuf,
    /// PostgreSQL URL (`postgres://user@host/db`) of the scheduler's store (schema
    /// `scheduler`); wins over `--database`.
    #[arg(long, env = "ALMANAC_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Use synchronous=FULL: commits survive power loss, not only a process crash.
    #[arg(long, env = "ALMANAC_SYNCHRONOUS_FULL")]
    pub synchronous_full: bool,
    /// This replica's name as the owner of the runs it drives: unique among live replicas
    /// (a pod name). A replica restarted under the same name resumes its runs at once;
    /// otherwise another replica adopts them when their lease expires. Default: a fresh id.
    #[arg(long, env = "ALMANAC_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// How long a run's owner lease lasts without a heartbeat (renewed every third of it):
    /// how soon another replica adopts the runs of one that died (e.g. `15s`, at least `1s`).
    #[arg(long, env = "ALMANAC_LEASE_TTL", default_value = "15s", value_parser = parse_lease_ttl)]
    pub lease_ttl: std::time::Duration,
    /// Log format (logs go to stderr): text or json.
    #[arg(long, env = "ALMANAC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Binds, prints `scheduler listening on http://ADDR` as the first line on stdout, and
/// serves until SIGINT/SIGTERM (a second signal exits at once).
pub async fn serve(args: ServeArgs, executor_endpoint: String) -> Result<(), ServerError> {
    telemetry::init(args.log_format);
    // A database URL no backend serves is refused before anything is bound.
    Location::choose(args.database_url.as_deref(), &args.database)
        .map_err(|scheme| ServerError::DatabaseScheme { scheme })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: args.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: args.listen.clone(),
        source,
    })?;
    println!("scheduler listening on http://{addr}");
    let mut config = Config::new(args.database, executor_endpoint);
    config.synchronous_full = args.synchronous_full;
    config.database_url = args.database_url;
    if let Some(replica_id) = args.replica_id.filter(|id| !id.trim().is_empty()) {
        config.engine.replica_id = replica_id;
    }
    config.engine.lease_ttl = args.lease_ttl;
    server::run(config, listener, telemetry::shutdown_signal()).await
}

/// A lease length: a humantime duration of at least one second.
fn parse_lease_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if ttl < std::time::Duration::from_secs(1) {
        return Err(format!("{text} is shorter than the minimum lease of 1s"));
    }
    Ok(ttl)
}
