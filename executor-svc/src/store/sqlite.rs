//! The SQLite backend of `ExecutorStore`: one file in WAL mode (synchronous=NORMAL: what
//! a commit acknowledged survives SIGKILL) served by `almanac_sqlite::Db`, whose rusqlite
//! connections run each statement in place on the calling task (no hop to a worker
//! thread). Every write is one `BEGIN IMMEDIATE` transaction on its single writer
//! connection, behind a fair async mutex, so writers queue instead of failing with
//! SQLITE_BUSY; reads go to a few query-only reader connections and never wait behind
//! writes. The closures given to `write` and `read` are synchronous: SQL and cheap
//! encoding only, never an await.

mod apply;
mod executions;
mod leases;
mod pipelines;
mod tasks;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use almanac_sqlite::{Db, OpenError, Options};
use rusqlite::{Connection, ErrorCode, Params, Row, Transaction};

use crate::error::{DatabaseError, ExecutorError, ServerError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/executor/sqlite");

/// How long a connection waits on a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections.
const READERS: usize = 4;

/// The executor's tables in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Db,
    /// Set by `close`: later statements fail as `StoreUnavailable`, as on a closed pool,
    /// so a runner outliving its server's shutdown writes nothing more.
    closed: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) and migrates the database at
    /// `path`.
    pub async fn open(path: &Path) -> Result<Self, ServerError> {
        let options = Options {
            synchronous_full: false,
            readers: READERS,
            busy_timeout: BUSY_TIMEOUT,
        };
        let db = Db::open(path, &options, &MIGRATOR)
            .await
            .map_err(open_error)?;
        Ok(Self {
            db,
            closed: Arc::default(),
        })
    }

    /// Runs `f` in one write transaction, committed if it returns `Ok` and rolled back
    /// otherwise.
    async fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, ExecutorError>,
    ) -> Result<T, ExecutorError> {
        self.db
            .write(|tx| {
                // Checked under the writer, so nothing is written once `close` returned.
                self.ensure_open()?;
                f(tx)
            })
            .await
    }

    /// Runs `f` on a reader connection.
    async fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, ExecutorError>,
    ) -> Result<T, ExecutorError> {
        self.ensure_open()?;
        self.db.read(f).await
    }

    fn ensure_open(&self) -> Result<(), ExecutorError> {
        ensure_open(&self.closed)
    }

    /// The flag `close` sets, for work that runs where `self` is not at hand (a group
    /// commit's leader).
    fn closed_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.closed)
    }

    /// Refuses every later statement and waits for the write in progress, if any. (The
    /// connections themselves close when the last clone of the store is dropped.)
    async fn shut(&self) {
        self.closed.store(true, Ordering::Release);
        // The writer is a fair mutex: once this empty transaction has it, every write
        // that was waiting before has ended.
        let _ = self
            .db
            .write(|_| Ok::<_, rusqlite::Error>(()))
            .await
            .inspect_err(|error| tracing::warn!(%error, "closing the executor's database"));
    }
}

/// `StoreUnavailable` once the store is closed.
fn ensure_open(closed: &AtomicBool) -> Result<(), ExecutorError> {
    if closed.load(Ordering::Acquire) {
        Err(ExecutorError::StoreUnavailable(DatabaseError::Closed))
    } else {
        Ok(())
    }
}

fn open_error(error: OpenError) -> ServerError {
    match error {
        OpenError::Directory { path, source } => ServerError::DatabasePath { path, source },
        OpenError::Connect(e) => ServerError::Open(e.into()),
        OpenError::Migrate(e) => ServerError::Migrate(e),
        OpenError::Open(e) => ServerError::Open(e.into()),
    }
}

/// Classifies a SQLite error once: a taken unique key, a database that cannot serve us
/// now (busy or locked past the busy timeout, read-only, an I/O error, a full disk, a file
/// that cannot be opened), or anything else (a foreign key violation among them).
impl From<rusqlite::Error> for ExecutorError {
    fn from(error: rusqlite::Error) -> Self {
        if almanac_sqlite::is_unique_violation(&error) {
            let message = match &error {
                rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
                other => other.to_string(),
            };
            ExecutorError::AlreadyExists(message)
        } else if almanac_sqlite::is_unavailable(&error)
            || error.sqlite_error_code() == Some(ErrorCode::ReadOnly)
        {
            ExecutorError::StoreUnavailable(error.into())
        } else {
            ExecutorError::Store(error.into())
        }
    }
}

/// Runs the cached statement `sql` and decodes its first row, if there is one.
fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    decode: impl FnOnce(&Row<'_>) -> Result<T, ExecutorError>,
) -> Result<Option<T>, ExecutorError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    rows.next()?.map(decode).transpose()
}

/// Runs the cached statement `sql` and decodes every row.
fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    mut decode: impl FnMut(&Row<'_>) -> Result<T, ExecutorError>,
) -> Result<Vec<T>, ExecutorError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut decoded = Vec::new();
    while let Some(row) = rows.next()? {
        decoded.push(decode(row)?);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;

    use super::*;

    fn failure(extended_code: i32, message: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(extended_code), Some(message.into()))
    }

    #[test]
    fn sqlite_errors_are_classified_once() {
        let taken = ExecutorError::from(failure(
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            "UNIQUE constraint failed: executions.idempotency_key",
        ));
        assert!(
            matches!(&taken, ExecutorError::AlreadyExists(m) if m.contains("idempotency_key")),
            "{taken:?}"
        );
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_READONLY,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_FULL,
            ffi::SQLITE_CANTOPEN,
        ] {
            let error = ExecutorError::from(failure(code, "x"));
            assert!(
                matches!(error, ExecutorError::StoreUnavailable(_)),
                "{code}: {error:?}"
            );
        }
        for error in [
            failure(
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY,
                "FOREIGN KEY constraint failed",
            ),
            rusqlite::Error::InvalidColumnName("x".into()),
        ] {
            let error = ExecutorError::from(error);
            assert!(matches!(error, ExecutorError::Store(_)), "{error:?}");
        }
    }

    #[tokio::test]
    async fn a_closed_store_refuses_statements_and_its_file_opens_again() {
        use crate::store::ExecutorStore;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("executor.db");
        let store = SqliteStore::open(&path).await.unwrap();
        store.close().await;
        let read = store.get_execution("e").await.unwrap_err();
        assert!(
            matches!(read, ExecutorError::StoreUnavailable(DatabaseError::Closed)),
            "{read:?}"
        );
        let write = store.prune_finished(i64::MAX, 10).await.unwrap_err();
        assert!(
            matches!(
                write,
                ExecutorError::StoreUnavailable(DatabaseError::Closed)
            ),
            "{write:?}"
        );
        let again = SqliteStore::open(&path).await.unwrap();
        assert!(again.get_execution("e").await.unwrap().is_none());
    }
}
