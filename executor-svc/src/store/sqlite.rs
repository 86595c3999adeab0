//! The SQLite backend of `ExecutorStore`: one file in WAL mode (synchronous=NORMAL: what
//! a commit acknowledged survives SIGKILL), one writer connection whose transactions are
//! `BEGIN IMMEDIATE` so writers queue instead of failing with SQLITE_BUSY, and a small
//! read pool so API reads never wait behind writes.

mod apply;
mod leases;
mod pipelines;
mod tasks;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlitePool, SqliteTransaction};

use self::apply::apply;
use super::ExecutorStore;
use super::leases::Lease;
use super::rows::{
    EXECUTION_COLUMNS, NODE_RUN_COLUMNS, encode_json, event_from_row, execution_from_row,
    node_run_from_row,
};
use crate::error::{ExecutorError, ServerError};
use crate::model::{
    CancelMode, Event, EventKind, ExecutionRecord, ExecutionStatus, ListQuery, NewExecution,
    NodeRunRecord, Transition,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/executor/sqlite");

/// How long a connection waits on a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the read pool.
const READERS: u32 = 4;

/// The executor's tables in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) and migrates the database at
    /// `path`.
    pub async fn open(path: &Path) -> Result<Self, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::DatabasePath {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(ServerError::Open)?;
        MIGRATOR.run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await
            .map_err(ServerError::Open)?;
        Ok(Self { writer, readers })
    }

    async fn begin_write(&self) -> Result<SqliteTransaction<'static>, ExecutorError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)
    }

    /// `append`, fenced by `lease` when one is given.
    async fn append_fenced(
        &self,
        execution_id: &str,
        lease: Option<&Lease>,
        at_ms: i64,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        let kind = transition.event_kind();
        let payload = encode_json(&kind)?;
        let mut tx = self.begin_write().await?;
        let Some(current) = fetch_execution(&mut tx, execution_id).await? else {
            return Err(ExecutorError::NotFound(format!("execution {execution_id}")));
        };
        if let Some(lease) = lease
            && !lease.holds(&current)
        {
            return Err(ExecutorError::LeaseLost(execution_id.to_owned()));
        }
        if current.status.is_finished() {
            return Err(ExecutorError::AlreadyFinished(execution_id.to_owned()));
        }
        let seq = current.last_seq + 1;
        apply(&mut tx, execution_id, at_ms, &transition).await?;
        sqlx::query(
            "INSERT INTO events (execution_id, seq, at_ms, payload) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(execution_id)
        .bind(seq as i64)
        .bind(at_ms)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        sqlx::query("UPDATE executions SET last_seq = ?2 WHERE id = ?1")
            .bind(execution_id)
            .bind(seq as i64)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(Event {
            execution_id: execution_id.to_owned(),
            seq,
            at_ms,
            kind,
        })
    }
}

/// Classifies a database error once: a taken unique key, a database that cannot be
/// reached or is busy, or anything else.
pub(crate) fn classify(error: sqlx::Error) -> ExecutorError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ExecutorError::AlreadyExists(db.message().to_owned())
        }
        sqlx::Error::Database(db) => {
            // The primary result code is the low byte of SQLite's extended code.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xff);
            // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL,
            // SQLITE_CANTOPEN: the database is there but cannot serve us now.
            if matches!(primary, Some(5 | 6 | 8 | 10 | 13 | 14)) {
                ExecutorError::StoreUnavailable(error)
            } else {
                ExecutorError::Store(error)
            }
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ExecutorError::StoreUnavailable(error)
        }
        _ => ExecutorError::Store(error),
    }
}

#[async_trait]
impl ExecutorStore for SqliteStore {
    async fn create_execution(&self, new: &NewExecution) -> Result<ExecutionRecord, ExecutorError> {
        let action = encode_json(&new.action)?;
        let origin = new.origin.as_ref().map(encode_json).transpose()?;
        let schedule_id = new
            .origin
            .as_ref()
            .map(|o| o.schedule_id.clone())
            .unwrap_or_default();
        let started = encode_json(&EventKind::ExecutionStarted {
            execution_id: new.id.clone(),
            idempotency_key: new.idempotency_key.clone(),
        })?;

        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO executions (id, idempotency_key, fingerprint, action, origin, schedule_id,
                 deadline_ms, status, created_ms, started_ms, last_seq, pipeline,
                 owner, lease_until_ms, lease_epoch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'RUNNING', ?8, ?8, 1, ?9, ?10, ?11, 1)",
        )
        .bind(&new.id)
        .bind(&new.idempotency_key)
        .bind(&new.fingerprint)
        .bind(action)
        .bind(origin)
        .bind(schedule_id)
        .bind(new.deadline_ms)
        .bind(new.created_ms)
        .bind(new.pipeline.as_ref().map(encode_json).transpose()?)
        .bind(&new.owner)
        .bind(new.lease_until_ms)
        .execute(&mut *tx)
        .await;
        match inserted.map_err(classify) {
            Err(ExecutorError::AlreadyExists(_)) => {
                return Err(ExecutorError::AlreadyExists(format!(
                    "an execution with idempotency key {:?} already exists",
                    new.idempotency_key
                )));
            }
            other => other?,
        };
        sqlx::query(
            "INSERT INTO events (execution_id, seq, at_ms, payload) VALUES (?1, 1, ?2, ?3)",
        )
        .bind(&new.id)
        .bind(new.created_ms)
        .bind(started)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let record = fetch_execution(&mut tx, &new.id).await?;
        tx.commit().await.map_err(classify)?;
        record.ok_or_else(|| ExecutorError::Corrupt("inserted execution not found".into()))
    }

    async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, ExecutorError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.readers)
            .await
            .map_err(classify)?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<ExecutionRecord>, ExecutorError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE idempotency_key = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(&self.readers)
            .await
            .map_err(classify)?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn list_executions(
        &self,
        query: &ListQuery,
    ) -> Result<Vec<ExecutionRecord>, ExecutorError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions
             WHERE (?1 IS NULL OR id < ?1) AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR schedule_id = ?3)
             ORDER BY id DESC LIMIT ?4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.before_id.as_deref())
            .bind(query.status.map(ExecutionStatus::as_str))
            .bind(query.schedule_id.as_deref())
            .bind(i64::from(query.limit))
            .fetch_all(&self.readers)
            .await
            .map_err(classify)?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn list_unfinished(&self) -> Result<Vec<ExecutionRecord>, ExecutorError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions
             WHERE status IN ('PENDING', 'RUNNING') ORDER BY id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.readers)
            .await
            .map_err(classify)?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn node_runs(&self, execution_id: &str) -> Result<Vec<NodeRunRecord>, ExecutorError> {
        let sql = format!(
            "SELECT {NODE_RUN_COLUMNS} FROM node_runs WHERE execution_id = ?1
             ORDER BY started_ms, node_id, attempt"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(execution_id)
            .fetch_all(&self.readers)
            .await
            .map_err(classify)?;
        rows.iter().map(node_run_from_row).collect()
    }

    async fn events_after(
        &self,
        execution_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ExecutorError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, payload FROM events
             WHERE execution_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(execution_id)
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| event_from_row(execution_id, row))
            .collect()
    }

    async fn append(
        &self,
        execution_id: &str,
        at_ms: i64,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        self.append_fenced(execution_id, None, at_ms, transition)
            .await
    }

    async fn append_as(
        &self,
        execution_id: &str,
        lease: &Lease,
        at_ms: i64,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        self.append_fenced(execution_id, Some(lease), at_ms, transition)
            .await
    }

    async fn request_cancel(
        &self,
        execution_id: &str,
        mode: CancelMode,
        reason: &str,
    ) -> Result<ExecutionRecord, ExecutorError> {
        let mut tx = self.begin_write().await?;
        let Some(current) = fetch_execution(&mut tx, execution_id).await? else {
            return Err(ExecutorError::NotFound(format!("execution {execution_id}")));
        };
        if current.status.is_finished() {
            return Ok(current);
        }
        let mode = current.cancel_requested.map_or(mode, |m| m.max(mode));
        let reason = if current.cancel_reason.is_empty() {
            reason
        } else {
            &current.cancel_reason
        };
        sqlx::query(
            "UPDATE executions SET cancel_requested = ?2, cancel_reason = ?3 WHERE id = ?1",
        )
        .bind(execution_id)
        .bind(mode.as_str())
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let updated = fetch_execution(&mut tx, execution_id).await?;
        tx.commit().await.map_err(classify)?;
        updated.ok_or_else(|| ExecutorError::Corrupt("cancelled execution vanished".into()))
    }

    async fn prune_finished(&self, before_ms: i64, batch: u32) -> Result<u64, ExecutorError> {
        let mut tx = self.begin_write().await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM executions WHERE finished_ms IS NOT NULL AND finished_ms < ?1
             AND status IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'CANCELLED')
             ORDER BY finished_ms LIMIT ?2",
        )
        .bind(before_ms)
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        for id in &ids {
            for sql in [
                "DELETE FROM events WHERE execution_id = ?1",
                "DELETE FROM node_runs WHERE execution_id = ?1",
                "DELETE FROM tasks WHERE execution_id = ?1",
                "DELETE FROM executions WHERE id = ?1",
            ] {
                sqlx::query(sql)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
        }
        tx.commit().await.map_err(classify)?;
        Ok(ids.len() as u64)
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

async fn fetch_execution(
    tx: &mut SqliteTransaction<'static>,
    id: &str,
) -> Result<Option<ExecutionRecord>, ExecutorError> {
    let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(classify)?;
    row.as_ref().map(execution_from_row).transpose()
}
