//! Almanac's scheduler service: schedules (cron with time zones, intervals, one-shots),
//! the durable ledger of every fire, recovery after a crash, and dispatch of each fire
//! to the executor over gRPC. `ARCHITECTURE.md` at the repository root maps it.

pub mod config;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod model;
pub mod server;
pub mod spec;
pub mod standalone;
pub mod store;
pub mod telemetry;
