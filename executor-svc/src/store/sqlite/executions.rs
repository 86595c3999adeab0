//! The SQLite side of `ExecutorStore` itself: executions, their events and node runs.
//! Each method is one writer transaction or one read; an append reads the execution,
//! checks its lease and state, and writes the event and the rows it implies, all under
//! the single writer.

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::apply::apply;
use super::{SqliteStore, ensure_open, query_all, query_opt};
use crate::error::ExecutorError;
use crate::model::{
    CancelMode, Event, ExecutionRecord, ExecutionStatus, ListQuery, NewExecution, NodeRunRecord,
    Transition,
};
use crate::store::ExecutorStore;
use crate::store::leases::Lease;
use crate::store::rows::{
    EXECUTION_COLUMNS, NODE_RUN_COLUMNS, SqliteRow, creation_payloads, encode_json, event_from_row,
    events_of, execution_from_row, node_run_from_row, numbered,
};

/// One execution by id, on `conn` (a reader, or the writer inside a transaction).
fn fetch_execution(conn: &Connection, id: &str) -> Result<Option<ExecutionRecord>, ExecutorError> {
    let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1");
    query_opt(conn, &sql, [id], |row| {
        execution_from_row(&SqliteRow::new(row))
    })
}

/// What an append checks of its execution: no more than these columns.
struct State {
    status: ExecutionStatus,
    last_seq: u64,
    owner: Option<String>,
    lease_epoch: u64,
}

fn fetch_state(conn: &Connection, id: &str) -> Result<Option<State>, ExecutorError> {
    query_opt(
        conn,
        "SELECT status, last_seq, owner, lease_epoch FROM executions WHERE id = ?1",
        [id],
        |row| {
            let status: String = row.get(0)?;
            Ok(State {
                status: ExecutionStatus::parse(&status).ok_or_else(|| {
                    ExecutorError::Corrupt(format!("execution {id}: unknown status {status:?}"))
                })?,
                last_seq: u64::try_from(row.get::<_, i64>(1)?).unwrap_or_default(),
                owner: row.get(2)?,
                lease_epoch: u64::try_from(row.get::<_, i64>(3)?).unwrap_or_default(),
            })
        },
    )
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
        let pipeline = new.pipeline.as_ref().map(encode_json).transpose()?;
        let payloads = creation_payloads(new)?;
        let first_node = new.first_node_started();

        // What is inserted is what the record says: it is returned without a read back.
        let record = new.record();
        let closed = self.closed_flag();
        self.db
            .write_grouped(move |tx| {
                ensure_open(&closed)?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO executions (id, idempotency_key, fingerprint, action, origin, schedule_id,
                         deadline_ms, status, created_ms, started_ms, last_seq, pipeline,
                         owner, lease_until_ms, lease_epoch)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'RUNNING', ?8, ?8, ?12, ?9, ?10, ?11, 1)",
                )?;
                let inserted = insert.execute(params![
                    record.id,
                    record.idempotency_key,
                    record.fingerprint,
                    action,
                    origin,
                    schedule_id,
                    record.deadline_ms,
                    record.created_ms,
                    pipeline,
                    record.owner,
                    record.lease_until_ms,
                    record.last_seq as i64,
                ]);
                match inserted.map_err(ExecutorError::from) {
                    Err(ExecutorError::AlreadyExists(_)) => {
                        return Err(ExecutorError::AlreadyExists(format!(
                            "an execution with idempotency key {:?} already exists",
                            record.idempotency_key
                        )));
                    }
                    other => other?,
                };
                if let Some(first_node) = &first_node {
                    apply(tx, &record.id, record.created_ms, first_node)?;
                }
                for (seq, payload) in (1i64..).zip(&payloads) {
                    tx.prepare_cached(
                        "INSERT INTO events (execution_id, seq, at_ms, payload) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![record.id, seq, record.created_ms, payload])?;
                }
                Ok(record)
            })
            .await
    }

    async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, ExecutorError> {
        self.read(|conn| fetch_execution(conn, id)).await
    }

    async fn find_by_key(&self, key: &str) -> Result<Option<ExecutionRecord>, ExecutorError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE idempotency_key = ?1");
        self.read(|conn| {
            query_opt(conn, &sql, [key], |row| {
                execution_from_row(&SqliteRow::new(row))
            })
        })
        .await
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
        self.read(|conn| {
            let params = params![
                query.before_id.as_deref(),
                query.status.map(ExecutionStatus::as_str),
                query.schedule_id.as_deref(),
                i64::from(query.limit),
            ];
            query_all(conn, &sql, params, |row| {
                execution_from_row(&SqliteRow::new(row))
            })
        })
        .await
    }

    async fn list_unfinished(&self) -> Result<Vec<ExecutionRecord>, ExecutorError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions
             WHERE status IN ('PENDING', 'RUNNING') ORDER BY id"
        );
        self.read(|conn| {
            query_all(conn, &sql, [], |row| {
                execution_from_row(&SqliteRow::new(row))
            })
        })
        .await
    }

    async fn node_runs(&self, execution_id: &str) -> Result<Vec<NodeRunRecord>, ExecutorError> {
        let sql = format!(
            "SELECT {NODE_RUN_COLUMNS} FROM node_runs WHERE execution_id = ?1
             ORDER BY started_ms, node_id, attempt"
        );
        self.read(|conn| {
            query_all(conn, &sql, [execution_id], |row| {
                node_run_from_row(&SqliteRow::new(row))
            })
        })
        .await
    }

    async fn events_after(
        &self,
        execution_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ExecutorError> {
        let after_seq = i64::try_from(after_seq).unwrap_or(i64::MAX);
        self.read(|conn| {
            query_all(
                conn,
                "SELECT seq, at_ms, payload FROM events
                 WHERE execution_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                params![execution_id, after_seq, i64::from(limit)],
                |row| event_from_row(execution_id, &SqliteRow::new(row)),
            )
        })
        .await
    }

    /// Group-committed: the appends of every execution in flight share transactions (see
    /// `almanac_sqlite::group`).
    async fn append_all(
        &self,
        execution_id: &str,
        lease: Option<&Lease>,
        transitions: Vec<(i64, Transition)>,
    ) -> Result<Vec<Event>, ExecutorError> {
        let (events, payloads) = events_of(execution_id, &transitions)?;
        let id = execution_id.to_owned();
        let lease = lease.cloned();
        let closed = self.closed_flag();
        let first = self
            .db
            .write_grouped(move |tx| {
                ensure_open(&closed)?;
                let Some(current) = fetch_state(tx, &id)? else {
                    return Err(ExecutorError::NotFound(format!("execution {id}")));
                };
                if let Some(lease) = &lease
                    && (current.owner.as_deref() != Some(lease.owner.as_str())
                        || current.lease_epoch != lease.epoch)
                {
                    return Err(ExecutorError::LeaseLost(id));
                }
                if current.status.is_finished() {
                    return Err(ExecutorError::AlreadyFinished(id));
                }
                let first = current.last_seq + 1;
                let mut seq = current.last_seq;
                for ((at_ms, transition), payload) in transitions.iter().zip(&payloads) {
                    seq += 1;
                    apply(tx, &id, *at_ms, transition)?;
                    tx.prepare_cached(
                        "INSERT INTO events (execution_id, seq, at_ms, payload) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![id, seq as i64, at_ms, payload])?;
                }
                tx.prepare_cached("UPDATE executions SET last_seq = ?2 WHERE id = ?1")?
                    .execute(params![id, seq as i64])?;
                Ok(first)
            })
            .await?;
        Ok(numbered(events, first))
    }

    async fn request_cancel(
        &self,
        execution_id: &str,
        mode: CancelMode,
        reason: &str,
    ) -> Result<ExecutionRecord, ExecutorError> {
        let updated = self
            .write(|tx| {
                let Some(current) = fetch_execution(tx, execution_id)? else {
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
                tx.prepare_cached(
                    "UPDATE executions SET cancel_requested = ?2, cancel_reason = ?3 WHERE id = ?1",
                )?
                .execute(params![execution_id, mode.as_str(), reason])?;
                fetch_execution(tx, execution_id)
            })
            .await?;
        updated.ok_or_else(|| ExecutorError::Corrupt("cancelled execution vanished".into()))
    }

    async fn prune_finished(&self, before_ms: i64, batch: u32) -> Result<u64, ExecutorError> {
        self.write(|tx| {
            let ids: Vec<String> = query_all(
                tx,
                "SELECT id FROM executions WHERE finished_ms IS NOT NULL AND finished_ms < ?1
                 AND status IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'CANCELLED')
                 ORDER BY finished_ms LIMIT ?2",
                params![before_ms, i64::from(batch)],
                |row| Ok(row.get(0)?),
            )?;
            for id in &ids {
                for sql in [
                    "DELETE FROM events WHERE execution_id = ?1",
                    "DELETE FROM node_runs WHERE execution_id = ?1",
                    "DELETE FROM tasks WHERE execution_id = ?1",
                    "DELETE FROM executions WHERE id = ?1",
                ] {
                    tx.prepare_cached(sql)?.execute([id])?;
                }
            }
            Ok(ids.len() as u64)
        })
        .await
    }

    async fn close(&self) {
        self.shut().await;
    }
}
