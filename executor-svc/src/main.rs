//! `executor-svc`: the executor as a standalone process (see `standalone`).

/// mimalloc: measured cheaper than glibc's malloc for the services' many small, short-lived
/// allocations (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use almanac_executor::standalone::{ServeArgs, serve};
use clap::Parser;

/// Almanac's executor: runs actions and records their events.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    serve(Args::parse().serve).await?;
    Ok(())
}
