//! The SQLite side of `TaskStore`. A claim is one `BEGIN IMMEDIATE` transaction (select
//! the oldest available task, lease it): the single writer connection serialises claims,
//! so two pollers never get the same task. (The PostgreSQL backend does the same in one
//! statement with `FOR UPDATE SKIP LOCKED` and the same availability predicate.)

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, query_all, query_opt};
use crate::error::ExecutorError;
use crate::store::rows::{
    PROCESS_GROUP_COLUMNS, SqliteRow, TASK_COLUMNS, encode_json, process_group_from_row,
    task_from_row,
};
use crate::store::tasks::{
    NewTask, ProcessGroupRecord, TaskEnd, TaskGuard, TaskRecord, TaskStore, TaskUpdate,
};

/// A task a poll may take at `?2` from the queues of the JSON array `?1`: QUEUED within
/// its schedule-to-start timeout, or LEASED under an expired lease with deliveries left,
/// within its schedule-to-start timeout counted from the expiry.
const AVAILABLE: &str = "queue IN (SELECT value FROM json_each(?1)) AND (
       (status = 'QUEUED'
        AND (schedule_to_start_ms IS NULL OR created_ms + schedule_to_start_ms > ?2))
    OR (status = 'LEASED' AND lease_expires_ms <= ?2 AND deliveries < max_deliveries
        AND (schedule_to_start_ms IS NULL OR lease_expires_ms + schedule_to_start_ms > ?2)))";

/// A task available now (as `AVAILABLE`) or once its live lease expires.
const AVAILABLE_LATER: &str = "queue IN (SELECT value FROM json_each(?1)) AND (
       (status = 'QUEUED'
        AND (schedule_to_start_ms IS NULL OR created_ms + schedule_to_start_ms > ?2))
    OR (status = 'LEASED' AND deliveries < max_deliveries
        AND (schedule_to_start_ms IS NULL OR lease_expires_ms + schedule_to_start_ms > ?2)))";

/// One task by id, on `conn` (a reader, or the writer inside a transaction).
fn fetch_task(conn: &Connection, id: &str) -> Result<Option<TaskRecord>, ExecutorError> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
    query_opt(conn, &sql, [id], |row| task_from_row(&SqliteRow::new(row)))
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn insert_task(&self, task: &NewTask) -> Result<(TaskRecord, bool), ExecutorError> {
        let payload = encode_json(&task.payload)?;
        let origin = task.origin.as_ref().map(encode_json).transpose()?;
        let (stored, inserted) = self
            .write(|tx| {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO tasks (id, execution_id, node_id, try_number, queue, payload,
                         idempotency_key, origin, deadline_ms, status, max_deliveries,
                         heartbeat_timeout_ms, schedule_to_start_ms, start_to_close_ms, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'QUEUED', ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT (id) DO NOTHING",
                )?;
                let inserted = insert.execute(params![
                    task.id,
                    task.execution_id,
                    task.node_id,
                    i64::from(task.try_number),
                    task.queue,
                    payload,
                    task.idempotency_key,
                    origin,
                    task.deadline_ms,
                    i64::from(task.max_deliveries),
                    task.heartbeat_timeout_ms,
                    task.schedule_to_start_ms,
                    task.start_to_close_ms,
                    task.created_ms,
                ])? == 1;
                Ok((fetch_task(tx, &task.id)?, inserted))
            })
            .await?;
        let stored =
            stored.ok_or_else(|| ExecutorError::Corrupt("inserted task vanished".into()))?;
        Ok((stored, inserted))
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, ExecutorError> {
        self.read(|conn| fetch_task(conn, id)).await
    }

    async fn next_available_ms(
        &self,
        queues: &[String],
        now_ms: i64,
    ) -> Result<Option<i64>, ExecutorError> {
        let sql = format!(
            "SELECT MIN(CASE WHEN status = 'QUEUED' THEN created_ms ELSE lease_expires_ms END)
             FROM tasks WHERE {AVAILABLE_LATER}"
        );
        let queues = encode_json(queues)?;
        self.read(|conn| {
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(params![queues, now_ms], |row| row.get(0))?)
        })
        .await
    }

    async fn claim_task(
        &self,
        queues: &[String],
        worker_id: &str,
        lease_id: &str,
        now_ms: i64,
    ) -> Result<Option<TaskRecord>, ExecutorError> {
        let sql = format!("SELECT id FROM tasks WHERE {AVAILABLE} ORDER BY created_ms, id LIMIT 1");
        let queues = encode_json(queues)?;
        self.write(|tx| {
            let found: Option<String> = tx
                .prepare_cached(&sql)?
                .query_row(params![queues, now_ms], |row| row.get(0))
                .optional()?;
            let Some(id) = found else {
                return Ok(None);
            };
            tx.prepare_cached(
                "UPDATE tasks SET status = 'LEASED', lease_id = ?2, worker_id = ?3,
                     deliveries = deliveries + 1, lease_expires_ms = ?4 + heartbeat_timeout_ms,
                     started_ms = COALESCE(started_ms, ?4), leased_ms = ?4,
                     close_deadline_ms = ?4 + start_to_close_ms
                 WHERE id = ?1",
            )?
            .execute(params![id, lease_id, worker_id, now_ms])?;
            fetch_task(tx, &id)
        })
        .await
    }

    async fn extend_lease(
        &self,
        id: &str,
        lease_id: &str,
        now_ms: i64,
    ) -> Result<TaskUpdate, ExecutorError> {
        self.write(|tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE tasks SET lease_expires_ms = ?3 + heartbeat_timeout_ms
                     WHERE id = ?1 AND status = 'LEASED' AND lease_id = ?2 AND lease_expires_ms > ?3",
                )?
                .execute(params![id, lease_id, now_ms])?;
            Ok(TaskUpdate::from_change(changed as u64, fetch_task(tx, id)?))
        })
        .await
    }

    async fn end_task(
        &self,
        id: &str,
        guard: &TaskGuard,
        end: &TaskEnd,
        now_ms: i64,
    ) -> Result<TaskUpdate, ExecutorError> {
        let (guard_kind, lease) = match guard {
            TaskGuard::Open => ("open", ""),
            TaskGuard::Queued => ("queued", ""),
            TaskGuard::Lease(l) => ("lease", l.as_str()),
            TaskGuard::LiveLease(l) => ("live", l.as_str()),
            TaskGuard::ExpiredLease(l) => ("expired", l.as_str()),
        };
        let (result, error, retryable) = match end {
            TaskEnd::Completed(result) => (Some(encode_json(result)?), "", false),
            TaskEnd::Failed { error, retryable } => (None, error.as_str(), *retryable),
            TaskEnd::TimedOut(error) => (None, error.as_str(), true),
            TaskEnd::Cancelled(error) => (None, error.as_str(), false),
        };
        self.write(|tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE tasks SET status = ?2, result = ?3, error = ?4, ended_ms = ?5, retryable = ?8
                     WHERE id = ?1 AND CASE ?6
                         WHEN 'open' THEN status IN ('QUEUED', 'LEASED')
                         WHEN 'queued' THEN status = 'QUEUED'
                         WHEN 'lease' THEN status = 'LEASED' AND lease_id = ?7
                         WHEN 'live' THEN status = 'LEASED' AND lease_id = ?7 AND lease_expires_ms > ?5
                         WHEN 'expired' THEN status = 'LEASED' AND lease_id = ?7 AND lease_expires_ms <= ?5
                         ELSE 0 END",
                )?
                .execute(params![
                    id,
                    end.status().as_str(),
                    result,
                    error,
                    now_ms,
                    guard_kind,
                    lease,
                    retryable,
                ])?;
            Ok(TaskUpdate::from_change(changed as u64, fetch_task(tx, id)?))
        })
        .await
    }

    async fn cancel_tasks_of_finished_executions(&self, now_ms: i64) -> Result<u64, ExecutorError> {
        self.write(|tx| {
            let changed = tx
                .prepare_cached(
                    "UPDATE tasks SET status = 'CANCELLED', ended_ms = ?1,
                         error = 'cancelled: the execution ended before the task did'
                     WHERE status IN ('QUEUED', 'LEASED') AND execution_id IN (
                         SELECT id FROM executions
                         WHERE status IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'CANCELLED'))",
                )?
                .execute([now_ms])?;
            Ok(changed as u64)
        })
        .await
    }

    async fn record_process_group(&self, group: &ProcessGroupRecord) -> Result<(), ExecutorError> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO process_groups (pgid, start_time, boot_id, execution_id, node_id,
                     program, recorded_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (pgid, start_time) DO NOTHING",
            )?
            .execute(params![
                group.pgid,
                i64::try_from(group.start_time).unwrap_or(i64::MAX),
                group.boot_id,
                group.execution_id,
                group.node_id,
                group.program,
                group.recorded_ms,
            ])?;
            Ok(())
        })
        .await
    }

    async fn forget_process_group(&self, pgid: i32, start_time: u64) -> Result<(), ExecutorError> {
        let start_time = i64::try_from(start_time).unwrap_or(i64::MAX);
        self.write(|tx| {
            tx.prepare_cached("DELETE FROM process_groups WHERE pgid = ?1 AND start_time = ?2")?
                .execute(params![pgid, start_time])?;
            Ok(())
        })
        .await
    }

    async fn process_groups(&self) -> Result<Vec<ProcessGroupRecord>, ExecutorError> {
        let sql =
            format!("SELECT {PROCESS_GROUP_COLUMNS} FROM process_groups ORDER BY recorded_ms");
        self.read(|conn| {
            query_all(conn, &sql, [], |row| {
                process_group_from_row(&SqliteRow::new(row))
            })
        })
        .await
    }
}
