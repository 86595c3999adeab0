//! Decoding SQLite rows into the executor's records, and the JSON encoding of the columns
//! that hold JSON. A row that does not decode is `ExecutorError::Corrupt`, never a panic.

use almanac_proto::executor::v1::{Action, Origin};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::error::ExecutorError;
use crate::model::{
    CancelMode, Event, EventKind, ExecutionRecord, ExecutionStatus, NodeRunRecord, NodeStatus,
};

/// The columns `execution_from_row` reads, in a SELECT list.
pub(super) const EXECUTION_COLUMNS: &str = "id, idempotency_key, fingerprint, action, origin, \
     deadline_ms, status, result, error, retryable, cancel_requested, cancel_reason, \
     created_ms, started_ms, finished_ms, last_seq, pipeline";

/// The columns `node_run_from_row` reads, in a SELECT list.
pub(super) const NODE_RUN_COLUMNS: &str =
    "node_id, kind, attempt, status, input, output, error, retryable, started_ms, finished_ms";

/// JSON text of a value (proto messages use their canonical proto3 JSON).
pub(super) fn encode_json<T: Serialize + ?Sized>(value: &T) -> Result<String, ExecutorError> {
    serde_json::to_string(value).map_err(|e| ExecutorError::Corrupt(format!("encode json: {e}")))
}

fn decode_json<T: DeserializeOwned>(column: &str, text: &str) -> Result<T, ExecutorError> {
    serde_json::from_str(text).map_err(|e| ExecutorError::Corrupt(format!("{column}: {e}")))
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, ExecutorError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column)
        .map_err(|e| ExecutorError::Corrupt(format!("{column}: {e}")))
}

fn opt_json<T: DeserializeOwned>(
    row: &SqliteRow,
    column: &str,
) -> Result<Option<T>, ExecutorError> {
    get::<Option<String>>(row, column)?
        .map(|text| decode_json(column, &text))
        .transpose()
}

/// Decodes a stored action (see `json::action_from_json` for the one case pbjson loses).
pub(super) fn decode_action(text: &str) -> Result<Action, ExecutorError> {
    let raw: serde_json::Value = decode_json("action", text)?;
    crate::json::action_from_json(raw)
        .map_err(|e| ExecutorError::Corrupt(format!("column action: {e}")))
}

pub(super) fn execution_from_row(row: &SqliteRow) -> Result<ExecutionRecord, ExecutorError> {
    let status: String = get(row, "status")?;
    let cancel: Option<String> = get(row, "cancel_requested")?;
    let last_seq: i64 = get(row, "last_seq")?;
    Ok(ExecutionRecord {
        id: get(row, "id")?,
        idempotency_key: get(row, "idempotency_key")?,
        fingerprint: get(row, "fingerprint")?,
        action: decode_action(&get::<String>(row, "action")?)?,
        origin: opt_json::<Origin>(row, "origin")?,
        deadline_ms: get(row, "deadline_ms")?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| ExecutorError::Corrupt(format!("execution status {status:?}")))?,
        result: opt_json(row, "result")?,
        error: get(row, "error")?,
        retryable: get(row, "retryable")?,
        cancel_requested: cancel
            .map(|c| {
                CancelMode::parse(&c)
                    .ok_or_else(|| ExecutorError::Corrupt(format!("cancel mode {c:?}")))
            })
            .transpose()?,
        cancel_reason: get(row, "cancel_reason")?,
        created_ms: get(row, "created_ms")?,
        started_ms: get(row, "started_ms")?,
        finished_ms: get(row, "finished_ms")?,
        last_seq: u64::try_from(last_seq)
            .map_err(|_| ExecutorError::Corrupt(format!("last_seq {last_seq}")))?,
        pipeline: opt_json(row, "pipeline")?,
    })
}

pub(super) fn node_run_from_row(row: &SqliteRow) -> Result<NodeRunRecord, ExecutorError> {
    let status: String = get(row, "status")?;
    let attempt: i64 = get(row, "attempt")?;
    Ok(NodeRunRecord {
        node_id: get(row, "node_id")?,
        kind: get(row, "kind")?,
        attempt: u32::try_from(attempt)
            .map_err(|_| ExecutorError::Corrupt(format!("attempt {attempt}")))?,
        status: NodeStatus::parse(&status)
            .ok_or_else(|| ExecutorError::Corrupt(format!("node status {status:?}")))?,
        input: opt_json(row, "input")?,
        output: opt_json(row, "output")?,
        error: get(row, "error")?,
        retryable: get(row, "retryable")?,
        started_ms: get(row, "started_ms")?,
        finished_ms: get(row, "finished_ms")?,
    })
}

pub(super) fn event_from_row(execution_id: &str, row: &SqliteRow) -> Result<Event, ExecutorError> {
    let seq: i64 = get(row, "seq")?;
    let payload: String = get(row, "payload")?;
    Ok(Event {
        execution_id: execution_id.to_owned(),
        seq: u64::try_from(seq).map_err(|_| ExecutorError::Corrupt(format!("seq {seq}")))?,
        at_ms: get(row, "at_ms")?,
        kind: decode_json::<EventKind>("payload", &payload)?,
    })
}
