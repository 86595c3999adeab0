//! `scheduler-svc`: the scheduler as a standalone process (see `standalone`).

/// mimalloc: measured cheaper than glibc's malloc for the services' many small, short-lived
/// allocations (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use almanac_scheduler::standalone::{ServeArgs, serve};
use clap::Parser;

/// Almanac's scheduler service.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
    /// The executor's gRPC endpoint.
    #[arg(
        long,
        env = "ALMANAC_EXECUTOR",
        default_value = "http://127.0.0.1:50052"
    )]
    executor: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    serve(args.serve, args.executor).await?;
    Ok(())
}
