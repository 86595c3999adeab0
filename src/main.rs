//! `almanac`: the command-line client of the scheduler and the executor, and `almanac dev`,
//! which runs both in one process. Parses, dispatches, and turns failures into stderr lines
//! and an exit code (2: the request was wrong; 1: anything else).

/// mimalloc: measured cheaper than glibc's malloc for the services' many small, short-lived
/// allocations (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod client;
mod dev;
mod error;
mod execution;
mod live;
mod output;
mod pipeline;
mod pipeline_file;
mod pipeline_view;
mod proto_fields;
mod run;
mod schedule;
mod schedule_view;
mod spec_args;
mod watch_view;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Scheduler(args) => almanac_scheduler::standalone::serve(args, cli.executor)
            .await
            .map_err(|e| anyhow::Error::new(e).context("the scheduler failed").into()),
        Command::Executor(args) => almanac_executor::standalone::serve(args)
            .await
            .map_err(|e| anyhow::Error::new(e).context("the executor failed").into()),
        Command::Schedule(cmd) => schedule::run(cmd, &cli.scheduler, cli.output).await,
        Command::Run(cmd) => run::run(cmd, &cli.scheduler, cli.output).await,
        Command::Pipeline(cmd) => pipeline::run(cmd, &cli.executor, cli.output).await,
        Command::Execution(cmd) => execution::run(cmd, &cli.executor, cli.output).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            for line in error.report() {
                eprintln!("{line}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}
