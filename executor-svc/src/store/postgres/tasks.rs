//! The PostgreSQL side of `TaskStore`. A claim is one statement, `UPDATE … WHERE id =
//! (SELECT id … ORDER BY created_ms, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING …`:
//! pollers of several executors on one database each take a different task and never
//! wait on each other's. Every other change is one conditional UPDATE, whose condition
//! PostgreSQL re-checks on the row's latest version, so guards hold under concurrency.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{PostgresStore, classify, pg_text};
use crate::error::ExecutorError;
use crate::store::rows::{
    PROCESS_GROUP_COLUMNS, TASK_COLUMNS, encode_json, process_group_from_row, task_from_row,
};
use crate::store::tasks::{
    NewTask, ProcessGroupRecord, TaskEnd, TaskGuard, TaskRecord, TaskStore, TaskUpdate,
};

/// A task a poll may take at `$2` from the queues of the array `$1`: QUEUED within its
/// schedule-to-start timeout, or LEASED under an expired lease with deliveries left,
/// within its schedule-to-start timeout counted from the expiry (as SQLite's).
const AVAILABLE: &str = "queue = ANY($1) AND (
       (status = 'QUEUED'
        AND (schedule_to_start_ms IS NULL OR created_ms + schedule_to_start_ms > $2))
    OR (status = 'LEASED' AND lease_expires_ms <= $2 AND deliveries < max_deliveries
        AND (schedule_to_start_ms IS NULL OR lease_expires_ms + schedule_to_start_ms > $2)))";

/// A task available now (as `AVAILABLE`) or once its live lease expires.
const AVAILABLE_LATER: &str = "queue = ANY($1) AND (
       (status = 'QUEUED'
        AND (schedule_to_start_ms IS NULL OR created_ms + schedule_to_start_ms > $2))
    OR (status = 'LEASED' AND deliveries < max_deliveries
        AND (schedule_to_start_ms IS NULL OR lease_expires_ms + schedule_to_start_ms > $2)))";

async fn fetch_task(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<TaskRecord>, ExecutorError> {
    let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(classify)?;
    row.as_ref().map(task_from_row).transpose()
}

#[async_trait]
impl TaskStore for PostgresStore {
    async fn insert_task(&self, task: &NewTask) -> Result<(TaskRecord, bool), ExecutorError> {
        let payload = encode_json(&task.payload)?;
        let origin = task.origin.as_ref().map(encode_json).transpose()?;
        let (stored, inserted) = transaction!(self, |tx| {
            // A concurrent insert of the same id waits for the other and then does nothing.
            let inserted = sqlx::query(
                "INSERT INTO tasks (id, execution_id, node_id, try_number, queue, payload,
                     idempotency_key, origin, deadline_ms, status, max_deliveries,
                     heartbeat_timeout_ms, schedule_to_start_ms, start_to_close_ms, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'QUEUED', $10, $11, $12, $13, $14)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&task.id)
            .bind(&task.execution_id)
            .bind(&task.node_id)
            .bind(i64::from(task.try_number))
            .bind(&task.queue)
            .bind(&payload)
            .bind(&task.idempotency_key)
            .bind(&origin)
            .bind(task.deadline_ms)
            .bind(i64::from(task.max_deliveries))
            .bind(task.heartbeat_timeout_ms)
            .bind(task.schedule_to_start_ms)
            .bind(task.start_to_close_ms)
            .bind(task.created_ms)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected()
                == 1;
            Ok((fetch_task(&mut tx, &task.id).await?, inserted))
        })?;
        let stored =
            stored.ok_or_else(|| ExecutorError::Corrupt("inserted task vanished".into()))?;
        Ok((stored, inserted))
    }

    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, ExecutorError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        fetch_task(&mut conn, id).await
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
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(queues)
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)
    }

    async fn claim_task(
        &self,
        queues: &[String],
        worker_id: &str,
        lease_id: &str,
        now_ms: i64,
    ) -> Result<Option<TaskRecord>, ExecutorError> {
        let sql = format!(
            "UPDATE tasks SET status = 'LEASED', lease_id = $3, worker_id = $4,
                 deliveries = deliveries + 1, lease_expires_ms = $2 + heartbeat_timeout_ms,
                 started_ms = COALESCE(started_ms, $2), leased_ms = $2,
                 close_deadline_ms = $2 + start_to_close_ms
             WHERE id = (SELECT id FROM tasks WHERE {AVAILABLE}
                         ORDER BY created_ms, id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING {TASK_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(queues)
            .bind(now_ms)
            .bind(lease_id)
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn extend_lease(
        &self,
        id: &str,
        lease_id: &str,
        now_ms: i64,
    ) -> Result<TaskUpdate, ExecutorError> {
        transaction!(self, |tx| {
            let changed = sqlx::query(
                "UPDATE tasks SET lease_expires_ms = $3 + heartbeat_timeout_ms
                 WHERE id = $1 AND status = 'LEASED' AND lease_id = $2 AND lease_expires_ms > $3",
            )
            .bind(id)
            .bind(lease_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            Ok(TaskUpdate::from_change(
                changed,
                fetch_task(&mut tx, id).await?,
            ))
        })
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
        let error = pg_text(error);
        transaction!(self, |tx| {
            let changed = sqlx::query(
                "UPDATE tasks SET status = $2, result = $3, error = $4, ended_ms = $5, retryable = $8
                 WHERE id = $1 AND CASE $6
                     WHEN 'open' THEN status IN ('QUEUED', 'LEASED')
                     WHEN 'queued' THEN status = 'QUEUED'
                     WHEN 'lease' THEN status = 'LEASED' AND lease_id = $7
                     WHEN 'live' THEN status = 'LEASED' AND lease_id = $7 AND lease_expires_ms > $5
                     WHEN 'expired' THEN status = 'LEASED' AND lease_id = $7
                         AND lease_expires_ms <= $5
                     ELSE FALSE END",
            )
            .bind(id)
            .bind(end.status().as_str())
            .bind(&result)
            .bind(&*error)
            .bind(now_ms)
            .bind(guard_kind)
            .bind(lease)
            .bind(retryable)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            Ok(TaskUpdate::from_change(
                changed,
                fetch_task(&mut tx, id).await?,
            ))
        })
    }

    async fn cancel_tasks_of_finished_executions(&self, now_ms: i64) -> Result<u64, ExecutorError> {
        let changed = sqlx::query(
            "UPDATE tasks SET status = 'CANCELLED', ended_ms = $1,
                 error = 'cancelled: the execution ended before the task did'
             WHERE status IN ('QUEUED', 'LEASED') AND execution_id IN (
                 SELECT id FROM executions
                 WHERE status IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'CANCELLED'))",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(classify)?
        .rows_affected();
        Ok(changed)
    }

    async fn record_process_group(&self, group: &ProcessGroupRecord) -> Result<(), ExecutorError> {
        sqlx::query(
            "INSERT INTO process_groups (pgid, start_time, boot_id, execution_id, node_id,
                 program, recorded_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (pgid, start_time) DO NOTHING",
        )
        .bind(group.pgid)
        .bind(i64::try_from(group.start_time).unwrap_or(i64::MAX))
        .bind(&group.boot_id)
        .bind(&group.execution_id)
        .bind(&group.node_id)
        .bind(&group.program)
        .bind(group.recorded_ms)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn forget_process_group(&self, pgid: i32, start_time: u64) -> Result<(), ExecutorError> {
        sqlx::query("DELETE FROM process_groups WHERE pgid = $1 AND start_time = $2")
            .bind(pgid)
            .bind(i64::try_from(start_time).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn process_groups(&self) -> Result<Vec<ProcessGroupRecord>, ExecutorError> {
        let sql =
            format!("SELECT {PROCESS_GROUP_COLUMNS} FROM process_groups ORDER BY recorded_ms");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(process_group_from_row).collect()
    }
}
