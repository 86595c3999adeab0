//! The SQLite backend of the scheduler's store: WAL, one writer connection whose
//! transactions are `BEGIN IMMEDIATE` (the schedule's lock of DESIGN §4.3: concurrent
//! writers queue instead of failing), and readers that never wait behind it — all
//! `almanac_sqlite`'s, called in place on the calling task (rusqlite, no per-statement
//! thread hop). The statements themselves are shared with PostgreSQL (`super::sql`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, Value};
use rusqlite::{Connection, ToSql};

use super::StoreError;
use super::sql::store::SqlStore;
use super::sql::{Backend, Conn, Dialect, Handle, LiteRow, Param, Row, Tx};

/// How long a statement waits for a lock (another process on the same file) before the
/// store reports itself unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/scheduler/sqlite");

/// The scheduler's store on SQLite.
pub type SqliteStore = SqlStore<SqliteDb>;

/// SQLite's connections: the one writer and the readers.
#[derive(Debug, Clone)]
pub struct SqliteDb {
    db: almanac_sqlite::Db,
}

impl SqlStore<SqliteDb> {
    /// Opens (creating if needed) the database file and applies the migrations.
    /// `synchronous_full` trades write speed for durability across power loss.
    pub async fn open(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        let options = almanac_sqlite::Options {
            synchronous_full,
            readers: 4,
            busy_timeout: BUSY_TIMEOUT,
        };
        let db = almanac_sqlite::Db::open(path, &options, &MIGRATOR)
            .await
            .map_err(|e| match e {
                almanac_sqlite::OpenError::Directory { .. } => StoreError::Unavailable(e.into()),
                other => StoreError::Database(other.into()),
            })?;
        Ok(Self {
            db: SqliteDb { db },
        })
    }
}

#[async_trait]
impl Backend for SqliteDb {
    async fn begin(&self) -> Result<Box<dyn Tx>, StoreError> {
        let tx = self.db.begin().await.map_err(classify)?;
        Ok(Box::new(Writer(Some(tx))))
    }

    async fn reader(&self) -> Result<Box<dyn Handle>, StoreError> {
        Ok(Box::new(Reader(self.db.reader().await)))
    }
}

/// The writer, inside a transaction (taken by `commit`).
struct Writer(Option<almanac_sqlite::WriteTx>);
/// A reader connection.
struct Reader(almanac_sqlite::ReadConn);

impl Writer {
    fn connection(&self) -> Result<&Connection, StoreError> {
        self.0
            .as_deref()
            .ok_or_else(|| StoreError::Corrupt("the transaction is already committed".into()))
    }
}

#[async_trait]
impl Conn for Writer {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        execute(self.connection()?, sql, params)
    }
    async fn fetch_all(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        fetch(self.connection()?, sql, params, usize::MAX)
    }
    async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(fetch(self.connection()?, sql, params, 1)?.pop())
    }
}

#[async_trait]
impl Conn for Reader {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        execute(&self.0, sql, params)
    }
    async fn fetch_all(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        fetch(&self.0, sql, params, usize::MAX)
    }
    async fn fetch_optional(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(fetch(&self.0, sql, params, 1)?.pop())
    }
}

impl Handle for Writer {
    fn conn(&mut self) -> &mut dyn Conn {
        self
    }
}

impl Handle for Reader {
    fn conn(&mut self) -> &mut dyn Conn {
        self
    }
}

#[async_trait]
impl Tx for Writer {
    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        match self.0.take() {
            Some(tx) => tx.commit().map_err(classify),
            None => Ok(()),
        }
    }
}

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::ValueRef;
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Text(Some(v)) => ValueRef::Text(v.as_bytes()),
            Param::Int(Some(v)) => ValueRef::Integer(v),
            Param::Bool(v) => ValueRef::Integer(i64::from(v)),
            Param::Text(None) | Param::Int(None) => ValueRef::Null,
        }))
    }
}

/// Prepares (cached) `sql` and binds `params`: the shared statements name their
/// parameters `$1 … $N`, which SQLite numbers in order of first appearance, so each is
/// bound by its name.
fn prepare<'c>(
    conn: &'c Connection,
    sql: &str,
    params: &[Param<'_>],
) -> Result<rusqlite::CachedStatement<'c>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(classify)?;
    for index in 1..=stmt.parameter_count() {
        let name = stmt.parameter_name(index).unwrap_or_default();
        let param = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| params.get(n.wrapping_sub(1)))
            .ok_or_else(|| {
                StoreError::Corrupt(format!("statement parameter {name:?} has no value"))
            })?;
        stmt.raw_bind_parameter(index, param).map_err(classify)?;
    }
    Ok(stmt)
}

fn execute(conn: &Connection, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
    let mut stmt = prepare(conn, sql, params)?;
    let changed = stmt.raw_execute().map_err(classify)?;
    Ok(changed as u64)
}

/// Runs a query and copies out at most `limit` rows.
fn fetch(
    conn: &Connection,
    sql: &str,
    params: &[Param<'_>],
    limit: usize,
) -> Result<Vec<Row>, StoreError> {
    let mut stmt = prepare(conn, sql, params)?;
    let columns: Arc<[String]> = stmt.column_names().into_iter().map(String::from).collect();
    let width = columns.len();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(row) = rows.next().map_err(classify)? else {
            break;
        };
        let values = (0..width)
            .map(|i| row.get_ref(i).map(owned))
            .collect::<Result<Vec<_>, _>>()
            .map_err(classify)?;
        out.push(Row::Sqlite(LiteRow {
            columns: Arc::clone(&columns),
            values,
        }));
    }
    Ok(out)
}

fn owned(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Real(f),
        // Invalid UTF-8 stays bytes, so that reading it as text is an error, not a guess.
        ValueRef::Text(t) => match String::from_utf8(t.to_vec()) {
            Ok(text) => Value::Text(text),
            Err(e) => Value::Blob(e.into_bytes()),
        },
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Classifies a database error once: constraint violations become typed errors, busy
/// and unreadable databases become `Unavailable`.
pub(crate) fn classify(e: rusqlite::Error) -> StoreError {
    if almanac_sqlite::is_unique_violation(&e) {
        let message = match &e {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
            other => other.to_string(),
        };
        StoreError::AlreadyExists(message)
    } else if almanac_sqlite::is_unavailable(&e) {
        StoreError::Unavailable(e.into())
    } else {
        StoreError::Database(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::outcomes::{BUFFERED_RUNS, RUNS_IN_FLIGHT};

    /// The statements every fire runs that look up one schedule's runs go through their
    /// partial indexes, never through `runs_by_schedule`: that would walk every run the
    /// schedule keeps, a cost that grows with its history (SQLite has no statistics here
    /// to tell it better).
    #[tokio::test]
    async fn per_fire_lookups_of_a_schedules_runs_use_their_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler.db");
        drop(SqliteStore::open(&path, false).await.unwrap());
        let conn = Connection::open(&path).unwrap();
        for (sql, index) in [
            (BUFFERED_RUNS, "runs_buffered"),
            (RUNS_IN_FLIGHT, "runs_in_flight"),
        ] {
            let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let steps: Vec<String> = plan
                .query_map(["s"], |row| row.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let probe = format!("SEARCH runs USING INDEX {index} (schedule_id=?");
            assert!(
                steps.len() == 1 && steps[0].starts_with(&probe),
                "{sql}: {steps:?}"
            );
        }
    }
}
