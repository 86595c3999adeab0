//! Almanac's embedded database: one SQLite file in WAL mode, one writer connection and a
//! few readers, called **in place** on the calling task.
//!
//! Why in place: an SQLite statement on a warm page cache costs one to a few
//! microseconds, while handing each statement to a connection's worker thread and back
//! (what sqlx's SQLite driver does) costs 10–25 µs of CPU and two context switches. A fire
//! runs dozens of statements, so the hop was most of a fire's cost (`BENCHMARKS.md`).
//! Holding a runtime worker for a transaction's few microseconds is cheaper than any
//! hand-off; the writer is a fair async mutex, so writers queue instead of failing with
//! `SQLITE_BUSY`, and readers never wait behind it (WAL).
//!
//! Durability is unchanged: a commit is in the WAL before `commit` returns, so what was
//! acknowledged survives SIGKILL (`synchronous=NORMAL`); `synchronous=FULL` adds an fsync
//! per commit for power loss.
//!
//! Schema migrations still run through sqlx's migrator (the same `_sqlx_migrations` table
//! as before), on a connection opened and closed for that alone.

mod group;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

/// How many prepared statements each connection keeps (both services use fewer).
const STATEMENT_CACHE: usize = 256;

/// How a database is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// `synchronous=FULL` (an fsync per commit: survives power loss) instead of NORMAL
    /// (survives a crash of the process).
    pub synchronous_full: bool,
    /// Connections for reads.
    pub readers: usize,
    /// How long a statement waits for a lock held by another process.
    pub busy_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            synchronous_full: false,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the database directory {path}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database for its migrations")]
    Connect(#[source] sqlx::Error),
    #[error("cannot migrate the database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("cannot open the database")]
    Open(#[source] rusqlite::Error),
}

/// One SQLite database: the writer and the readers. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Db {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Readers>,
    /// Work waiting for a group commit (`write_grouped`).
    queue: group::SharedQueue,
    path: Arc<PathBuf>,
}

#[derive(Debug)]
struct Readers {
    free: StdMutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Db {
    /// Opens (creating the file and its directory if missing) and migrates the database
    /// at `path`.
    pub async fn open(
        path: &Path,
        options: &Options,
        migrator: &sqlx::migrate::Migrator,
    ) -> Result<Self, OpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
                path: dir.display().to_string(),
                source,
            })?;
        }
        migrate(path, options, migrator).await?;
        let writer = connect(path, options, true).map_err(OpenError::Open)?;
        let readers = (0..options.readers.max(1))
            .map(|_| connect(path, options, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(OpenError::Open)?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(Readers {
                permits: Arc::new(Semaphore::new(readers.len())),
                free: StdMutex::new(readers),
            }),
            queue: Arc::default(),
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE` on the one writer) and commits
    /// it if `f` returns `Ok`; an `Err` rolls it back.
    pub async fn write<T, E>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<rusqlite::Error>,
    {
        let mut conn = self.writer.lock().await;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Begins a write transaction that lives across awaits (for code written against an
    /// async connection); dropped without `commit`, it rolls back.
    pub async fn begin(&self) -> Result<WriteTx, rusqlite::Error> {
        let conn = Arc::clone(&self.writer).lock_owned().await;
        step(&conn, "BEGIN IMMEDIATE")?;
        Ok(WriteTx { conn, open: true })
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        let reader = self.reader().await;
        f(&reader)
    }

    /// A reader connection, returned to the pool when dropped.
    pub async fn reader(&self) -> ReadConn {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .expect("the readers' semaphore is never closed");
        let conn = lock(&self.readers.free)
            .pop()
            .expect("a permit guarantees a free reader");
        ReadConn {
            conn: Some(conn),
            readers: Arc::clone(&self.readers),
            _permit: permit,
        }
    }
}

/// A write transaction holding the writer; rolls back on drop unless committed.
#[derive(Debug)]
pub struct WriteTx {
    conn: OwnedMutexGuard<Connection>,
    open: bool,
}

impl WriteTx {
    /// Commits the transaction.
    pub fn commit(mut self) -> Result<(), rusqlite::Error> {
        self.open = false;
        if let Err(e) = step(&self.conn, "COMMIT") {
            // A failed COMMIT can leave the transaction open: close it before the writer
            // is handed on.
            let _ = step(&self.conn, "ROLLBACK");
            return Err(e);
        }
        Ok(())
    }
}

impl Deref for WriteTx {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            let _ = step(&self.conn, "ROLLBACK");
        }
    }
}

/// A reader connection from the pool.
#[derive(Debug)]
pub struct ReadConn {
    conn: Option<Connection>,
    readers: Arc<Readers>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for ReadConn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.is_autocommit() {
                // A read transaction left open would pin the WAL.
                let _ = conn.execute_batch("ROLLBACK");
            }
            lock(&self.readers.free).push(conn);
        }
    }
}

/// Runs the cached statement `sql`, which takes no parameters (a transaction's bounds and
/// savepoints: prepared once per connection, not parsed again at every transaction).
fn step(conn: &Connection, sql: &str) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]).map(drop))
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The critical sections only push and pop; a panic inside one cannot break the Vec.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Applies the migrations with sqlx's migrator, on a connection of its own.
async fn migrate(
    path: &Path,
    options: &Options,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), OpenError> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let connect = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(options.busy_timeout)
        .foreign_keys(true);
    // A pool of one, not a bare connection: the migrator's future over a connection is
    // not `Send`, and a server that opens its store is spawned.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(connect)
        .await
        .map_err(OpenError::Connect)?;
    let migrated = migrator.run(&pool).await.map_err(OpenError::Migrate);
    pool.close().await;
    migrated
}

fn connect(path: &Path, options: &Options, writer: bool) -> Result<Connection, rusqlite::Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "foreign_keys", true)?;
    // Statement and savepoint journals in memory, never in a temporary file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Plans never depend on bound values. Without this, a statement on a table with a
    // partial index is re-prepared whenever a parameter changes (SQLite checks each bound
    // value against the index's WHERE), and re-parsing was a tenth of a fire's CPU. The
    // partial indexes' conditions are literals in the statements that use them.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.pragma_update(
        None,
        "synchronous",
        if options.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        },
    )?;
    if !writer {
        // Reads only: a statement that would write fails instead of taking the lock.
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(conn)
}

/// Whether `e` is a violated UNIQUE or PRIMARY KEY constraint.
pub fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// Whether `e` means the database is busy or locked past the busy timeout, or cannot be
/// read or written at all (full disk, I/O error, file gone): unavailable, not wrong.
pub fn is_unavailable(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                ErrorCode::DatabaseBusy
                    | ErrorCode::DatabaseLocked
                    | ErrorCode::SystemIoFailure
                    | ErrorCode::DiskFull
                    | ErrorCode::CannotOpen
            )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./test-migrations");

    pub(crate) async fn db(dir: &tempfile::TempDir) -> Db {
        Db::open(&dir.path().join("sub/t.db"), &Options::default(), &MIGRATOR)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_failed_body_rolls_back_and_the_writer_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir).await;
        let err = db
            .write(|tx| {
                tx.execute("INSERT INTO t VALUES ('a', 1)", [])?;
                tx.execute("INSERT INTO t VALUES ('a', 2)", []).map(|_| ())
            })
            .await
            .unwrap_err();
        assert!(is_unique_violation(&err), "{err:?}");
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(
            n, 0,
            "the first insert was rolled back with the transaction"
        );
        db.write(|tx| tx.execute("INSERT INTO t VALUES ('b', 3)", []))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_dropped_guard_rolls_back_and_a_committed_one_persists_for_a_new_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir).await;
        {
            let tx = db.begin().await.unwrap();
            tx.execute("INSERT INTO t VALUES ('gone', 1)", []).unwrap();
        }
        let tx = db.begin().await.unwrap();
        tx.execute("INSERT INTO t VALUES ('kept', 2)", []).unwrap();
        tx.commit().unwrap();
        drop(db);
        let again = Db::open(&dir.path().join("sub/t.db"), &Options::default(), &MIGRATOR)
            .await
            .unwrap();
        let keys: Vec<String> = again
            .read(|c| {
                let mut s = c.prepare("SELECT k FROM t ORDER BY k")?;
                s.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap();
        assert_eq!(keys, ["kept"]);
    }

    #[tokio::test]
    async fn readers_refuse_writes_and_see_only_committed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir).await;
        let writing = db.begin().await.unwrap();
        writing
            .execute("INSERT INTO t VALUES ('x', 1)", [])
            .unwrap();
        let seen: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(seen, 0, "a reader does not wait for, or see, an open write");
        writing.commit().unwrap();
        let refused = db
            .read(|c| c.execute("INSERT INTO t VALUES ('y', 2)", []))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
    }
}
