//! The scheduler's configuration, built by `main` from flags and environment variables.

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::EngineConfig;

/// Where the scheduler keeps its ledger and how it reaches the executor.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite file (created with its folder if missing), used unless `database_url`
    /// is set.
    pub database_path: PathBuf,
    /// A PostgreSQL URL (`postgres://…`): the store lives in its schema `scheduler`.
    pub database_url: Option<String>,
    /// The executor's gRPC endpoint, e.g. `http://127.0.0.1:50052`.
    pub executor_endpoint: String,
    /// `synchronous=FULL`: survive power loss, not only a process crash.
    pub synchronous_full: bool,
    /// Engine tunables.
    pub engine: EngineConfig,
    /// How long shutdown waits for dispatches and ledger writes.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Defaults for everything but the two places.
    pub fn new(database_path: impl Into<PathBuf>, executor_endpoint: impl Into<String>) -> Self {
        Self {
            database_path: database_path.into(),
            database_url: None,
            executor_endpoint: executor_endpoint.into(),
            synchronous_full: false,
            engine: EngineConfig::default(),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
