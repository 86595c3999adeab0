//! The PostgreSQL side of `ExecutorStore` proper: executions, their events and node runs.
//! An append locks its execution row (`FOR UPDATE`) before reading `last_seq`, so
//! concurrent appends to one execution queue and seqs stay dense; the unique idempotency
//! key decides concurrent creates.

use async_trait::async_trait;
use sqlx::PgConnection;

use super::{PostgresStore, classify, pg_text};
use crate::error::ExecutorError;
use crate::model::{
    CancelMode, Event, ExecutionRecord, ExecutionStatus, ListQuery, NewExecution, NodeRunRecord,
    NodeStatus, Transition,
};
use crate::store::ExecutorStore;
use crate::store::leases::Lease;
use crate::store::rows::{
    EXECUTION_COLUMNS, NODE_RUN_COLUMNS, creation_payloads, encode_json, event_from_row, events_of,
    execution_from_row, node_run_from_row, numbered,
};

#[async_trait]
impl ExecutorStore for PostgresStore {
    async fn create_execution(&self, new: &NewExecution) -> Result<ExecutionRecord, ExecutorError> {
        let action = encode_json(&new.action)?;
        let origin = new.origin.as_ref().map(encode_json).transpose()?;
        let pipeline = new.pipeline.as_ref().map(encode_json).transpose()?;
        let schedule_id = new
            .origin
            .as_ref()
            .map(|o| o.schedule_id.clone())
            .unwrap_or_default();
        let payloads = creation_payloads(new)?;
        let first_node = new.first_node_started();
        let last_seq = payloads.len() as i64;
        transaction!(self, |tx| {
            let inserted = sqlx::query(
                "INSERT INTO executions (id, idempotency_key, fingerprint, action, origin,
                     schedule_id, deadline_ms, status, created_ms, started_ms, last_seq, pipeline,
                     owner, lease_until_ms, lease_epoch)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'RUNNING', $8, $8, $12, $9, $10, $11, 1)",
            )
            .bind(&new.id)
            .bind(&new.idempotency_key)
            .bind(&new.fingerprint)
            .bind(&action)
            .bind(&origin)
            .bind(&schedule_id)
            .bind(new.deadline_ms)
            .bind(new.created_ms)
            .bind(&pipeline)
            .bind(&new.owner)
            .bind(new.lease_until_ms)
            .bind(last_seq)
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
            if let Some(first_node) = &first_node {
                apply(&mut tx, &new.id, new.created_ms, first_node).await?;
            }
            for (seq, payload) in (1i64..).zip(&payloads) {
                sqlx::query(
                    "INSERT INTO events (execution_id, seq, at_ms, payload) VALUES ($1, $2, $3, $4)",
                )
                .bind(&new.id)
                .bind(seq)
                .bind(new.created_ms)
                .bind(payload)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            }
            // What was inserted is what the record says: no read back.
            Ok(new.record())
        })
    }

    async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, ExecutorError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<ExecutionRecord>, ExecutorError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE idempotency_key = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(&self.pool)
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
             WHERE ($1::text IS NULL OR id < $1) AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR schedule_id = $3)
             ORDER BY id DESC LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.before_id.as_deref())
            .bind(query.status.map(ExecutionStatus::as_str))
            .bind(query.schedule_id.as_deref())
            .bind(i64::from(query.limit))
            .fetch_all(&self.pool)
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
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn node_runs(&self, execution_id: &str) -> Result<Vec<NodeRunRecord>, ExecutorError> {
        // SQLite sorts NULLs first: so do we.
        let sql = format!(
            "SELECT {NODE_RUN_COLUMNS} FROM node_runs WHERE execution_id = $1
             ORDER BY started_ms NULLS FIRST, node_id, attempt"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(execution_id)
            .fetch_all(&self.pool)
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
             WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(execution_id)
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| event_from_row(execution_id, row))
            .collect()
    }

    async fn append_all(
        &self,
        execution_id: &str,
        lease: Option<&Lease>,
        transitions: Vec<(i64, Transition)>,
    ) -> Result<Vec<Event>, ExecutorError> {
        let (events, payloads) = events_of(execution_id, &transitions)?;
        let first = transaction!(self, |tx| {
            // The row lock makes concurrent appends to this execution queue here.
            let Some(current) = fetch_execution(&mut tx, execution_id, true).await? else {
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
            let first = current.last_seq + 1;
            let mut seq = current.last_seq;
            for ((at_ms, transition), payload) in transitions.iter().zip(&payloads) {
                seq += 1;
                apply(&mut tx, execution_id, *at_ms, transition).await?;
                sqlx::query(
                    "INSERT INTO events (execution_id, seq, at_ms, payload) VALUES ($1, $2, $3, $4)",
                )
                .bind(execution_id)
                .bind(seq as i64)
                .bind(*at_ms)
                .bind(payload)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            }
            sqlx::query("UPDATE executions SET last_seq = $2 WHERE id = $1")
                .bind(execution_id)
                .bind(seq as i64)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            Ok(first)
        })?;
        Ok(numbered(events, first))
    }

    async fn request_cancel(
        &self,
        execution_id: &str,
        mode: CancelMode,
        reason: &str,
    ) -> Result<ExecutionRecord, ExecutorError> {
        let updated = transaction!(self, |tx| {
            let Some(current) = fetch_execution(&mut tx, execution_id, true).await? else {
                return Err(ExecutorError::NotFound(format!("execution {execution_id}")));
            };
            if current.status.is_finished() {
                return Ok(Some(current));
            }
            let mode = current.cancel_requested.map_or(mode, |m| m.max(mode));
            let reason = if current.cancel_reason.is_empty() {
                reason
            } else {
                &current.cancel_reason
            };
            sqlx::query(
                "UPDATE executions SET cancel_requested = $2, cancel_reason = $3 WHERE id = $1",
            )
            .bind(execution_id)
            .bind(mode.as_str())
            .bind(pg_text(reason))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            fetch_execution(&mut tx, execution_id, false).await
        })?;
        updated.ok_or_else(|| ExecutorError::Corrupt("cancelled execution vanished".into()))
    }

    async fn prune_finished(&self, before_ms: i64, batch: u32) -> Result<u64, ExecutorError> {
        transaction!(self, |tx| {
            // SKIP LOCKED: executors pruning at once take different executions.
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM executions WHERE finished_ms IS NOT NULL AND finished_ms < $1
                 AND status IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'CANCELLED')
                 ORDER BY finished_ms LIMIT $2 FOR UPDATE SKIP LOCKED",
            )
            .bind(before_ms)
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await
            .map_err(classify)?;
            for sql in [
                "DELETE FROM events WHERE execution_id = ANY($1)",
                "DELETE FROM node_runs WHERE execution_id = ANY($1)",
                "DELETE FROM tasks WHERE execution_id = ANY($1)",
                "DELETE FROM executions WHERE id = ANY($1)",
            ] {
                sqlx::query(sql)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
            Ok(ids.len() as u64)
        })
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

/// One execution read inside a transaction; `lock` takes its row lock (`FOR UPDATE`),
/// held until the transaction ends.
async fn fetch_execution(
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<ExecutionRecord>, ExecutorError> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1{suffix}");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(classify)?;
    row.as_ref().map(execution_from_row).transpose()
}

/// The row updates a transition implies, inside the append's transaction.
async fn apply(
    conn: &mut PgConnection,
    execution_id: &str,
    at_ms: i64,
    transition: &Transition,
) -> Result<(), ExecutorError> {
    let result = match transition {
        Transition::NodeStarted {
            node_id,
            kind,
            attempt,
            input,
        } => {
            sqlx::query(
                "INSERT INTO node_runs (execution_id, node_id, attempt, kind, status, input, started_ms)
                 VALUES ($1, $2, $3, $4, 'RUNNING', $5, $6)",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(i64::from(*attempt))
            .bind(kind)
            .bind(encode_json(input)?)
            .bind(at_ms)
            .execute(&mut *conn)
            .await
        }
        Transition::NodeSucceeded {
            node_id,
            attempt,
            output,
            ..
        } => {
            sqlx::query(
                "UPDATE node_runs SET status = 'SUCCEEDED', output = $4, finished_ms = $5
                 WHERE execution_id = $1 AND node_id = $2 AND attempt = $3",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(i64::from(*attempt))
            .bind(encode_json(output)?)
            .bind(at_ms)
            .execute(&mut *conn)
            .await
        }
        Transition::NodeFailed {
            node_id,
            attempt,
            status,
            error,
            retryable,
        } => {
            sqlx::query(
                "UPDATE node_runs SET status = $4, error = $5, retryable = $6, finished_ms = $7
                 WHERE execution_id = $1 AND node_id = $2 AND attempt = $3",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(i64::from(*attempt))
            .bind(status.as_str())
            .bind(pg_text(error))
            .bind(retryable)
            .bind(at_ms)
            .execute(&mut *conn)
            .await
        }
        // The event is the whole record of these two.
        Transition::NodeRetrying { .. } | Transition::Progress { .. } => return Ok(()),
        Transition::NodeSkipped {
            node_id,
            kind,
            status,
            reason,
        } => {
            sqlx::query(
                "INSERT INTO node_runs (execution_id, node_id, attempt, kind, status, error, started_ms, finished_ms)
                 VALUES ($1, $2, 0, $3, $4, $5, $6, $6)",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(kind)
            .bind(status.as_str())
            .bind(pg_text(reason))
            .bind(at_ms)
            .execute(&mut *conn)
            .await
        }
        Transition::ExecutionFinished {
            status,
            result,
            error,
            retryable,
        } => {
            sqlx::query(
                "UPDATE node_runs SET status = $2, finished_ms = $3
                 WHERE execution_id = $1 AND status IN ('RUNNING', 'PENDING')",
            )
            .bind(execution_id)
            .bind(NodeStatus::Cancelled.as_str())
            .bind(at_ms)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
            sqlx::query(
                "UPDATE executions SET status = $2, result = $3, error = $4, retryable = $5,
                     finished_ms = $6
                 WHERE id = $1",
            )
            .bind(execution_id)
            .bind(status.as_str())
            .bind(result.as_ref().map(encode_json).transpose()?)
            .bind(pg_text(error))
            .bind(retryable)
            .bind(at_ms)
            .execute(&mut *conn)
            .await
        }
    };
    result.map(|_| ()).map_err(classify)
}
