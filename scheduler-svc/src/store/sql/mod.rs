//! The SQL both backends share. The ledger's reads and writes are written once, against
//! `Conn` (a connection or transaction of either database, with parameters and rows in
//! one small vocabulary); each backend supplies only its connections, its transaction
//! boundaries, its error classification and the lock that serialises decisions per
//! schedule (`lock_schedule`: a no-op on SQLite's single writer, `FOR UPDATE` on PostgreSQL).

pub(crate) mod leases;
pub(crate) mod ledger;
pub(crate) mod maintenance;
pub(crate) mod outcomes;
pub(crate) mod rows;
pub(crate) mod schedules;
pub(crate) mod store;

use async_trait::async_trait;
use std::sync::Arc;

use rusqlite::types::{FromSql, Value};
use sqlx::postgres::{PgRow, Postgres};
use sqlx::{Database, Decode, Encode, Type};

use super::StoreError;

/// Which database a connection talks to, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One bound parameter. The SQL uses `$1 … $N` placeholders, which both databases read.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Bool(bool),
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::Text(v)
    }
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<u32> for Param<'_> {
    fn from(v: u32) -> Self {
        Self::Int(Some(i64::from(v)))
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

/// `params![a, b]`: a slice of parameters, each converted with `Param::from`.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$($crate::store::sql::Param::from($p)),*]
    };
}
pub(crate) use params;

/// A row read from either database.
pub enum Row {
    Sqlite(LiteRow),
    Postgres(PgRow),
}

/// A row of SQLite's, its values copied out of the statement.
pub struct LiteRow {
    pub(crate) columns: Arc<[String]>,
    pub(crate) values: Vec<Value>,
}

/// A column type both databases can decode.
pub trait Column: FromSql + for<'r> Decode<'r, Postgres> + Type<Postgres> {}
impl<T: FromSql + for<'r> Decode<'r, Postgres> + Type<Postgres>> Column for T {}

impl Row {
    /// Reads a column, calling a type mismatch corruption rather than a database failure.
    pub fn get<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        let corrupt =
            |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("column {name}: {e}"));
        match self {
            Self::Sqlite(row) => {
                let i = row
                    .columns
                    .iter()
                    .position(|c| c == name)
                    .ok_or_else(|| corrupt(&"no such column"))?;
                T::column_result((&row.values[i]).into()).map_err(|e| corrupt(&e))
            }
            Self::Postgres(row) => {
                use sqlx::Row as _;
                row.try_get(name).map_err(|e| corrupt(&e))
            }
        }
    }
}

/// A connection (or a transaction on one) of either database.
#[async_trait]
pub trait Conn: Send {
    fn dialect(&self) -> Dialect;
    /// Runs a statement; how many rows it changed.
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;
    async fn fetch_all(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError>;
    async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, StoreError>;
}

/// A connection borrowed from a pool, for reads.
pub trait Handle: Send {
    fn conn(&mut self) -> &mut dyn Conn;
}

/// A write transaction; dropped without `commit`, it rolls back.
#[async_trait]
pub trait Tx: Handle {
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// What a backend provides to the shared store.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Begins a write transaction (SQLite: `BEGIN IMMEDIATE` on the one writer).
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError>;
    /// A connection for reads that never wait behind writers.
    async fn reader(&self) -> Result<Box<dyn Handle>, StoreError>;
    /// How many write transactions can make progress at once (SQLite: its one writer).
    fn concurrent_writers(&self) -> usize {
        1
    }
}

/// Builds a query with its parameters bound, for a concrete database.
pub(crate) fn bound<'q, DB: Database>(
    sql: &'q str,
    params: &[Param<'_>],
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    bool: for<'t> Encode<'t, DB> + Type<DB>,
{
    // Every statement is a constant of this module tree; values are always bound.
    let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
    for p in params {
        query = match *p {
            Param::Text(v) => query.bind(v),
            Param::Int(v) => query.bind(v),
            Param::Bool(v) => query.bind(v),
        };
    }
    query
}

/// Implements `Conn`, `Handle` and `Tx` for one database's connection, pooled connection
/// and transaction types, with its error classification.
macro_rules! impl_conn {
    ($db:ty, $conn:ty, $variant:ident, $classify:path) => {
        #[async_trait::async_trait]
        impl $crate::store::sql::Conn for $conn {
            fn dialect(&self) -> $crate::store::sql::Dialect {
                $crate::store::sql::Dialect::$variant
            }

            async fn execute(
                &mut self,
                sql: &str,
                params: &[$crate::store::sql::Param<'_>],
            ) -> Result<u64, $crate::store::StoreError> {
                $crate::store::sql::bound::<$db>(sql, params)
                    .execute(&mut *self)
                    .await
                    .map(|r| r.rows_affected())
                    .map_err($classify)
            }

            async fn fetch_all(
                &mut self,
                sql: &str,
                params: &[$crate::store::sql::Param<'_>],
            ) -> Result<Vec<$crate::store::sql::Row>, $crate::store::StoreError> {
                let rows = $crate::store::sql::bound::<$db>(sql, params)
                    .fetch_all(&mut *self)
                    .await
                    .map_err($classify)?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::sql::Row::$variant)
                    .collect())
            }

            async fn fetch_optional(
                &mut self,
                sql: &str,
                params: &[$crate::store::sql::Param<'_>],
            ) -> Result<Option<$crate::store::sql::Row>, $crate::store::StoreError> {
                let row = $crate::store::sql::bound::<$db>(sql, params)
                    .fetch_optional(&mut *self)
                    .await
                    .map_err($classify)?;
                Ok(row.map($crate::store::sql::Row::$variant))
            }
        }

        impl $crate::store::sql::Handle for sqlx::pool::PoolConnection<$db> {
            fn conn(&mut self) -> &mut dyn $crate::store::sql::Conn {
                &mut **self
            }
        }

        impl $crate::store::sql::Handle for sqlx::Transaction<'static, $db> {
            fn conn(&mut self) -> &mut dyn $crate::store::sql::Conn {
                &mut **self
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::sql::Tx for sqlx::Transaction<'static, $db> {
            async fn commit(self: Box<Self>) -> Result<(), $crate::store::StoreError> {
                (*self).commit().await.map_err($classify)
            }
        }
    };
}
pub(crate) use impl_conn;

/// The outcome of taking a schedule's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// This transaction holds the schedule's row until it ends.
    Held,
    /// There is no such schedule.
    Absent,
    /// Another transaction holds it (only with `skip_locked`).
    Busy,
}

/// Takes the lock under which decisions about one schedule are made (DESIGN §4.3). On
/// SQLite the `BEGIN IMMEDIATE` writer already excludes every other writer; on
/// PostgreSQL it is the schedule's row, `FOR UPDATE` (`SKIP LOCKED` for the timer's
/// claims, which leave a schedule another transaction holds for the next round).
pub async fn lock_schedule(
    conn: &mut dyn Conn,
    id: &str,
    skip_locked: bool,
) -> Result<Lock, StoreError> {
    if conn.dialect() == Dialect::Sqlite {
        return Ok(Lock::Held);
    }
    let sql = if skip_locked {
        "SELECT id FROM schedules WHERE id = $1 FOR UPDATE SKIP LOCKED"
    } else {
        "SELECT id FROM schedules WHERE id = $1 FOR UPDATE"
    };
    if conn.fetch_optional(sql, params![id]).await?.is_some() {
        return Ok(Lock::Held);
    }
    if !skip_locked {
        return Ok(Lock::Absent);
    }
    let exists = conn
        .fetch_optional("SELECT id FROM schedules WHERE id = $1", params![id])
        .await?
        .is_some();
    Ok(if exists { Lock::Busy } else { Lock::Absent })
}

/// Locks the schedule of a run (see `lock_schedule`); the run's schedule id, if the run
/// exists.
pub async fn lock_run_schedule(
    conn: &mut dyn Conn,
    run_id: &str,
) -> Result<Option<String>, StoreError> {
    let Some(row) = conn
        .fetch_optional(
            "SELECT schedule_id FROM runs WHERE id = $1",
            params![run_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let schedule_id: String = row.get("schedule_id")?;
    lock_schedule(conn, &schedule_id, false).await?;
    Ok(Some(schedule_id))
}
