//! The row updates each transition implies, applied by SQLite's append inside its
//! transaction (the event itself is inserted by the caller).

use rusqlite::{Connection, params};

use crate::error::ExecutorError;
use crate::model::{NodeStatus, Transition};
use crate::store::rows::encode_json;

/// The row updates a transition implies, inside the append's transaction.
pub(super) fn apply(
    tx: &Connection,
    execution_id: &str,
    at_ms: i64,
    transition: &Transition,
) -> Result<(), ExecutorError> {
    match transition {
        Transition::NodeStarted {
            node_id,
            kind,
            attempt,
            input,
        } => {
            tx.prepare_cached(
                "INSERT INTO node_runs (execution_id, node_id, attempt, kind, status, input, started_ms)
                 VALUES (?1, ?2, ?3, ?4, 'RUNNING', ?5, ?6)",
            )?
            .execute(params![
                execution_id,
                node_id,
                i64::from(*attempt),
                kind,
                encode_json(input)?,
                at_ms
            ])?;
        }
        Transition::NodeSucceeded {
            node_id,
            attempt,
            output,
            ..
        } => {
            tx.prepare_cached(
                "UPDATE node_runs SET status = 'SUCCEEDED', output = ?4, finished_ms = ?5
                 WHERE execution_id = ?1 AND node_id = ?2 AND attempt = ?3",
            )?
            .execute(params![
                execution_id,
                node_id,
                i64::from(*attempt),
                encode_json(output)?,
                at_ms
            ])?;
        }
        Transition::NodeFailed {
            node_id,
            attempt,
            status,
            error,
            retryable,
        } => {
            tx.prepare_cached(
                "UPDATE node_runs SET status = ?4, error = ?5, retryable = ?6, finished_ms = ?7
                 WHERE execution_id = ?1 AND node_id = ?2 AND attempt = ?3",
            )?
            .execute(params![
                execution_id,
                node_id,
                i64::from(*attempt),
                status.as_str(),
                error,
                retryable,
                at_ms
            ])?;
        }
        // The event is the whole record of these two.
        Transition::NodeRetrying { .. } | Transition::Progress { .. } => {}
        Transition::NodeSkipped {
            node_id,
            kind,
            status,
            reason,
        } => {
            tx.prepare_cached(
                "INSERT INTO node_runs (execution_id, node_id, attempt, kind, status, error, started_ms, finished_ms)
                 VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?6)",
            )?
            .execute(params![
                execution_id,
                node_id,
                kind,
                status.as_str(),
                reason,
                at_ms
            ])?;
        }
        Transition::ExecutionFinished {
            status,
            result,
            error,
            retryable,
        } => {
            tx.prepare_cached(
                "UPDATE node_runs SET status = ?2, finished_ms = ?3
                 WHERE execution_id = ?1 AND status IN ('RUNNING', 'PENDING')",
            )?
            .execute(params![execution_id, NodeStatus::Cancelled.as_str(), at_ms])?;
            tx.prepare_cached(
                "UPDATE executions SET status = ?2, result = ?3, error = ?4, retryable = ?5,
                     finished_ms = ?6
                 WHERE id = ?1",
            )?
            .execute(params![
                execution_id,
                status.as_str(),
                result.as_ref().map(encode_json).transpose()?,
                error,
                retryable,
                at_ms
            ])?;
        }
    }
    Ok(())
}
