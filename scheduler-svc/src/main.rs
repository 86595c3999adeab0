//! `scheduler-svc`: the scheduler as a standalone process. Parses flags, binds, and
//! runs `server::run` until SIGINT/SIGTERM (a second signal exits at once).

use std::path::PathBuf;

use almanac_scheduler::{config::Config, server, telemetry};
use clap::Parser;

/// Almanac's scheduler service.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "ALMANAC_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: String,
    /// SQLite file of the scheduler's ledger.
    #[arg(
        long,
        env = "ALMANAC_SCHEDULER_DATABASE",
        default_value = "./.almanac/scheduler.db"
    )]
    database: PathBuf,
    /// The executor's gRPC endpoint.
    #[arg(
        long,
        env = "ALMANAC_EXECUTOR_ENDPOINT",
        default_value = "http://127.0.0.1:50052"
    )]
    executor: String,
    /// Use synchronous=FULL: commits survive power loss, not only a crash.
    #[arg(long, env = "ALMANAC_SYNCHRONOUS_FULL")]
    synchronous_full: bool,
    /// Log format: text or json.
    #[arg(long, env = "ALMANAC_LOG_FORMAT", default_value = "text")]
    log_format: telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(args.log_format);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let mut config = Config::new(args.database, args.executor);
    config.synchronous_full = args.synchronous_full;
    server::run(config, listener, telemetry::shutdown_signal()).await?;
    Ok(())
}
