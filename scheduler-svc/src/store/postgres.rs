//! The PostgreSQL backend of the scheduler's store: the schema `scheduler` with its own
//! migration history, one pool whose connections all set `search_path=scheduler`, and
//! READ COMMITTED transactions in which every decision first locks its schedule's row
//! (`SELECT … FOR UPDATE`, `SKIP LOCKED` for the timer's claims): the guarantees SQLite
//! gets from its single writer, here from row locks, so several processes may share one
//! database. The statements themselves are shared with SQLite (`super::sql`).

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres};

use super::StoreError;
use super::sql::store::SqlStore;
use super::sql::{Backend, Handle, Tx, impl_conn};

/// The schema holding the scheduler's tables and its `_sqlx_migrations`.
pub const SCHEMA: &str = "scheduler";

/// The session advisory lock serialising the scheduler's schema creation and migrations
/// across processes starting at once ("ALMANAC" and 1; the executor uses its own).
const MIGRATION_LOCK: i64 = 0x414C_4D41_4E41_4301;

/// Connections in the pool: API reads, the timer's claims, the ledger writer and
/// maintenance each hold one at a time.
const POOL_SIZE: u32 = 16;

/// Claim transactions the timer may run at once (each over different schedules, half
/// the pool): a claim is a few round trips per schedule, so claiming a batch of hundreds
/// in one transaction would make its last fires late by the whole batch.
const CONCURRENT_CLAIMS: usize = 8;

/// The scheduler's store on PostgreSQL.
pub type PostgresStore = SqlStore<PostgresDb>;

/// The pool of connections to the scheduler's schema.
#[derive(Debug, Clone)]
pub struct PostgresDb {
    pool: PgPool,
}

impl SqlStore<PostgresDb> {
    /// Connects to `url` (`postgres://…`), creates the schema `scheduler` if needed and
    /// applies its migrations under an advisory lock, then opens the pool.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Database(e.into()))?;
        migrate(&options).await?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options.options([
                ("search_path", SCHEMA),
                // A replica frozen (SIGSTOP, a stalled VM) inside a transaction would hold
                // its schedules' rows and stop every other replica firing them: the server
                // ends such a transaction. No transaction of ours waits between statements.
                ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
            ]))
            .await
            .map_err(classify)?;
        Ok(Self {
            db: PostgresDb { pool },
        })
    }
}

/// How long a session may sit idle inside a transaction before PostgreSQL ends it.
const IDLE_IN_TRANSACTION: &str = "5s";

/// The scheduler's migrations.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/scheduler/postgres");

/// Creates the schema and runs the migrations in one session (a pool of one connection)
/// holding the advisory lock; closing the pool releases the lock even when a step failed.
/// (The migrator runs on a pool rather than a `&mut PgConnection`: that borrow makes the
/// server's future not `Send`.)
async fn migrate(options: &PgConnectOptions) -> Result<(), StoreError> {
    let session = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().options([("search_path", SCHEMA)]))
        .await
        .map_err(classify)?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&session)
        .await
        .map_err(classify)?;
    let migrated = async {
        sqlx::query("CREATE SCHEMA IF NOT EXISTS scheduler")
            .execute(&session)
            .await
            .map_err(classify)?;
        MIGRATOR
            .run(&session)
            .await
            .map_err(|e| StoreError::Database(e.into()))
    }
    .await;
    if migrated.is_ok() {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&session)
            .await
            .map_err(classify)?;
    }
    session.close().await;
    migrated
}

#[async_trait]
impl Backend for PostgresDb {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        Ok(Box::new(self.pool.begin().await.map_err(classify)?))
    }

    async fn reader(&self) -> Result<Box<dyn Handle>, StoreError> {
        Ok(Box::new(self.pool.acquire().await.map_err(classify)?))
    }

    fn concurrent_writers(&self) -> usize {
        CONCURRENT_CLAIMS
    }
}

impl_conn!(Postgres, PgConnection, Postgres, classify);

/// Classifies a database error once, with the SQLSTATE: a unique violation (23505) is
/// `AlreadyExists` as on SQLite; deadlocks and serialization failures (40P01, 40001, which
/// the store retries), lock timeouts, shutdowns and lost connections are `Unavailable`.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::AlreadyExists(db.message().to_string())
        }
        sqlx::Error::Database(db)
            if db.code().as_deref().is_some_and(|code| {
                matches!(code, "40001" | "40P01" | "55P03" | "57014" | "53300")
                    || code.starts_with("08")
                    || code.starts_with("57P")
            }) =>
        {
            StoreError::Unavailable(e.into())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.into()),
        _ => StoreError::Database(e.into()),
    }
}

/// `url` with its password removed, for logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(None);
            }
            parsed.to_string()
        }
        Err(_) => "<unparsable database url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_logged_url_never_shows_the_password() {
        assert_eq!(
            redacted("postgres://almanac:s3cret@db:5432/almanac?sslmode=require"),
            "postgres://almanac@db:5432/almanac?sslmode=require"
        );
        assert_eq!(
            redacted("postgresql://db/almanac"),
            "postgresql://db/almanac"
        );
        assert!(!redacted("postgres://u:p@h/d").contains(":p@"));
    }
}
