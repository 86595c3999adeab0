//! The SQLite backend of the scheduler's store: WAL, one writer connection whose
//! transactions are `BEGIN IMMEDIATE` (the schedule's lock of DESIGN §4.3: concurrent
//! writers queue instead of failing), and a pool of readers that never wait behind it.
//! The statements themselves are shared with PostgreSQL (`super::sql`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};

use super::StoreError;
use super::sql::store::SqlStore;
use super::sql::{Backend, Handle, Tx, impl_conn};

/// How long a statement waits for a lock before the store reports itself unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The scheduler's store on SQLite.
pub type SqliteStore = SqlStore<SqliteDb>;

/// SQLite's connections: the one writer and the readers.
#[derive(Debug, Clone)]
pub struct SqliteDb {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqlStore<SqliteDb> {
    /// Opens (creating if needed) the database file and applies the migrations.
    /// `synchronous_full` trades write speed for durability across power loss.
    pub async fn open(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(StoreError::Database)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        sqlx::migrate!("../migrations/scheduler/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(classify)?;
        Ok(Self {
            db: SqliteDb { writer, reader },
        })
    }
}

#[async_trait]
impl Backend for SqliteDb {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)?;
        Ok(Box::new(tx))
    }

    async fn reader(&self) -> Result<Box<dyn Handle>, StoreError> {
        Ok(Box::new(self.reader.acquire().await.map_err(classify)?))
    }
}

impl_conn!(Sqlite, SqliteConnection, Sqlite, classify);

/// Classifies a database error once: constraint violations become typed errors, lost
/// connections and lock timeouts become `Unavailable`.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::AlreadyExists(db.message().to_string())
        }
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("5" | "6" | "261" | "517")) =>
        {
            // SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            StoreError::Unavailable(e)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        _ => StoreError::Database(e),
    }
}
