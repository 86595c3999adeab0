//! The executor's configuration: what `server::run` needs to know, and the fixed limits
//! that later issues will make configurable.

use std::path::PathBuf;
use std::time::Duration;

/// How long `server::run` waits, after the shutdown signal, for in-flight event writes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;

/// `ListExecutions` page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// `ListExecutions` page sizes above this are clamped to it.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// How many events a watcher reads from the store at once.
pub const EVENT_BATCH: u32 = 256;

/// How often a watcher re-reads the store even without a signal, so that no stream ever
/// depends on the in-memory notification alone.
pub const WATCH_RECHECK: Duration = Duration::from_secs(1);

/// The executor's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite file path (created with its parent directory if missing).
    pub database_path: PathBuf,
    /// How many executions may run their actions at once (default 256).
    pub max_concurrent_executions: usize,
}

impl Config {
    /// A configuration with the database at `database_path` and the defaults otherwise.
    pub fn new(database_path: impl Into<PathBuf>) -> Self {
        Self {
            database_path: database_path.into(),
            max_concurrent_executions: 256,
        }
    }
}
