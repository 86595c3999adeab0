//! The PostgreSQL backend of `ExecutorStore`, for production and for several executors on
//! one database. Its tables live in the schema `executor` with their own migration
//! history (every pooled connection sets `search_path=executor`). SQLite serialises
//! writers through one connection; here each write transaction locks the row its
//! decision depends on (`SELECT … FOR UPDATE`) and lets unique constraints decide races,
//! and a transaction that loses a deadlock or serialisation conflict is retried a bounded
//! number of times.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::error::{DatabaseError, ExecutorError, ServerError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/executor/postgres");

/// The schema holding the executor's tables and its migration history.
pub const SCHEMA: &str = "executor";

/// The advisory lock that serialises the executor's start-up migrations ("almexec"):
/// constant, and different from the scheduler's.
const MIGRATION_LOCK: i64 = 0x0061_6c6d_6578_6563;

/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 16;
/// How long a caller waits for a pooled connection before the store is unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of one transaction that keeps losing deadlocks or serialisation conflicts.
pub(crate) const TX_ATTEMPTS: u32 = 5;

/// The executor's tables in the `executor` schema of a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…`), creates the schema if missing
    /// and applies the migrations, once even when several executors start together.
    pub async fn open(url: &str) -> Result<Self, ServerError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| ServerError::Open(e.into()))?
            .options([("search_path", SCHEMA)]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| ServerError::Open(e.into()))?;
        // The service's advisory lock, held on a connection of its own while the pool
        // creates the schema and migrates: executors starting together take turns.
        let mut lock = PgConnection::connect_with(&options)
            .await
            .map_err(|e| ServerError::Open(e.into()))?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut lock)
            .await
            .map_err(migrate_error)?;
        let migrated = migrate(&pool).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut lock)
            .await;
        let _ = lock.close().await;
        migrated?;
        unlocked.map_err(migrate_error)?;
        Ok(Self { pool })
    }
}

fn migrate_error(error: sqlx::Error) -> ServerError {
    ServerError::Migrate(sqlx::migrate::MigrateError::Execute(error))
}

/// The schema, then the migrations (whose history table lands in the schema through the
/// connections' search_path).
async fn migrate(pool: &PgPool) -> Result<(), ServerError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA}"
    )))
    .execute(pool)
    .await
    .map_err(migrate_error)?;
    MIGRATOR.run(pool).await.map_err(ServerError::Migrate)
}

/// Classifies a database error once: a taken unique key, a database that cannot serve us
/// now (unreachable, shutting down, out of connections, a lost deadlock or serialisation
/// conflict), or anything else.
pub(crate) fn classify(error: sqlx::Error) -> ExecutorError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ExecutorError::AlreadyExists(db.message().to_owned())
        }
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08: connection exception; 40001/40P01: serialisation failure, deadlock;
            // 53: insufficient resources; 55P03: lock not available; 57P0x: shutdown.
            let transient = code.starts_with("08")
                || code.starts_with("53")
                || matches!(
                    &*code,
                    "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03"
                );
            if transient {
                ExecutorError::StoreUnavailable(error.into())
            } else {
                ExecutorError::Store(error.into())
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => ExecutorError::StoreUnavailable(error.into()),
        _ => ExecutorError::Store(error.into()),
    }
}

/// Whether a transaction failed only because it lost a deadlock or a serialisation
/// conflict, so running it again may succeed.
pub(crate) fn is_conflict(error: &ExecutorError) -> bool {
    matches!(error, ExecutorError::StoreUnavailable(DatabaseError::Sqlx(sqlx::Error::Database(db)))
        if matches!(db.code().as_deref(), Some("40001" | "40P01")))
}

/// Text PostgreSQL can store: its TEXT cannot hold NUL, which error messages quoting
/// process output or HTTP bodies may contain (SQLite keeps them as they are).
pub(crate) fn pg_text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Runs `$body` (an expression using the transaction `$tx`, which may `return` or `?`
/// an `ExecutorError`) in a transaction of `$store`'s pool and commits it; the whole
/// transaction runs again, up to `TX_ATTEMPTS` times, when it loses a deadlock or a
/// serialisation conflict. `$body` must be re-runnable (borrow, do not move).
macro_rules! transaction {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 1u32;
        loop {
            let mut $tx = $store
                .pool
                .begin()
                .await
                .map_err($crate::store::postgres::classify)?;
            let outcome: Result<_, $crate::error::ExecutorError> = async { $body }.await;
            // Dropping the transaction after an error rolls it back.
            let outcome = match outcome {
                Ok(value) => $tx
                    .commit()
                    .await
                    .map(|()| value)
                    .map_err($crate::store::postgres::classify),
                Err(error) => Err(error),
            };
            match outcome {
                Err(error)
                    if $crate::store::postgres::is_conflict(&error)
                        && attempt < $crate::store::postgres::TX_ATTEMPTS =>
                {
                    tracing::debug!(attempt, %error, "transaction lost a conflict: running it again");
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}

// After the macro, which they use.
mod executions;
mod leases;
mod pipelines;
mod tasks;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn executors_starting_together_migrate_once_into_their_own_schema() {
        let Some(url) = almanac_testkit::fresh_postgres_database().await else {
            return;
        };
        let opens = (0..3).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::open(&url).await.unwrap() })
        });
        let stores: Vec<PostgresStore> = futures::future::join_all(opens)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let pool = &stores[0].pool;
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM executor._sqlx_migrations")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(applied, MIGRATOR.iter().count() as i64);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_schema FROM information_schema.tables
             WHERE table_name IN ('executions', '_sqlx_migrations') ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(tables, ["executor", "executor"], "nothing lands in public");
        // A restart finds everything applied.
        PostgresStore::open(&url).await.unwrap();
        for store in stores {
            store.pool.close().await;
        }
    }

    #[test]
    fn nul_is_replaced_and_other_text_borrowed() {
        assert!(matches!(pg_text("plain"), Cow::Borrowed("plain")));
        assert_eq!(pg_text("a\0b"), "a\u{fffd}b");
    }
}
