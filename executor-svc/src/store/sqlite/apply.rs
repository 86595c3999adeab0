//! The row updates each transition implies, applied by SQLite's append inside its
//! transaction (the event itself is inserted by the caller).

use sqlx::SqliteTransaction;

use super::classify;
use crate::error::ExecutorError;
use crate::model::{NodeStatus, Transition};
use crate::store::rows::encode_json;

/// The row updates a transition implies, inside the append's transaction.
pub(super) async fn apply(
    tx: &mut SqliteTransaction<'static>,
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
                 VALUES (?1, ?2, ?3, ?4, 'RUNNING', ?5, ?6)",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(i64::from(*attempt))
            .bind(kind)
            .bind(encode_json(input)?)
            .bind(at_ms)
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
            sqlx::query(
                "UPDATE executions SET status = 'RUNNING', started_ms = COALESCE(started_ms, ?2)
                 WHERE id = ?1",
            )
            .bind(execution_id)
            .bind(at_ms)
            .execute(&mut **tx)
            .await
        }
        Transition::NodeSucceeded {
            node_id,
            attempt,
            output,
            ..
        } => {
            sqlx::query(
                "UPDATE node_runs SET status = 'SUCCEEDED', output = ?4, finished_ms = ?5
                 WHERE execution_id = ?1 AND node_id = ?2 AND attempt = ?3",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(i64::from(*attempt))
            .bind(encode_json(output)?)
            .bind(at_ms)
            .execute(&mut **tx)
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
                "UPDATE node_runs SET status = ?4, error = ?5, retryable = ?6, finished_ms = ?7
                 WHERE execution_id = ?1 AND node_id = ?2 AND attempt = ?3",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(i64::from(*attempt))
            .bind(status.as_str())
            .bind(error)
            .bind(retryable)
            .bind(at_ms)
            .execute(&mut **tx)
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
                 VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?6)",
            )
            .bind(execution_id)
            .bind(node_id)
            .bind(kind)
            .bind(status.as_str())
            .bind(reason)
            .bind(at_ms)
            .execute(&mut **tx)
            .await
        }
        Transition::ExecutionFinished {
            status,
            result,
            error,
            retryable,
        } => {
            sqlx::query(
                "UPDATE node_runs SET status = ?2, finished_ms = ?3
                 WHERE execution_id = ?1 AND status IN ('RUNNING', 'PENDING')",
            )
            .bind(execution_id)
            .bind(NodeStatus::Cancelled.as_str())
            .bind(at_ms)
            .execute(&mut **tx)
            .await
            .map_err(classify)?;
            sqlx::query(
                "UPDATE executions SET status = ?2, result = ?3, error = ?4, retryable = ?5,
                     finished_ms = ?6
                 WHERE id = ?1",
            )
            .bind(execution_id)
            .bind(status.as_str())
            .bind(result.as_ref().map(encode_json).transpose()?)
            .bind(error)
            .bind(retryable)
            .bind(at_ms)
            .execute(&mut **tx)
            .await
        }
    };
    result.map(|_| ()).map_err(classify)
}
