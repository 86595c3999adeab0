//! Decoding stored rows into the executor's records, shared by both backends: each
//! backend's row type (`SqliteRow`, around rusqlite's `Row`; sqlx's `PgRow`) reads plain
//! columns through `StoreRow`, and the records are built from those once. Also the JSON
//! encoding of the columns that hold JSON (text in both schemas). A row that does not
//! decode is `ExecutorError::Corrupt`, never a panic.

use almanac_proto::executor::v1::{Action, Origin, Pipeline};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;

use super::pipelines::Breaker;
use super::tasks::{NewTask, ProcessGroupRecord, TaskRecord, TaskStatus};
use crate::error::ExecutorError;
use crate::model::{
    CancelMode, Event, EventKind, ExecutionRecord, ExecutionStatus, NewExecution, NodeRunRecord,
    NodeStatus, Transition,
};

/// The columns `execution_from_row` reads, in a SELECT list.
pub(crate) const EXECUTION_COLUMNS: &str = "id, idempotency_key, fingerprint, action, origin, \
     deadline_ms, status, result, error, retryable, cancel_requested, cancel_reason, \
     created_ms, started_ms, finished_ms, last_seq, pipeline, owner, lease_until_ms, lease_epoch";

/// The columns `node_run_from_row` reads, in a SELECT list.
pub(crate) const NODE_RUN_COLUMNS: &str =
    "node_id, kind, attempt, status, input, output, error, retryable, started_ms, finished_ms";

/// The columns `task_from_row` reads, in a SELECT list.
pub(crate) const TASK_COLUMNS: &str = "id, execution_id, node_id, try_number, queue, payload, \
     idempotency_key, origin, deadline_ms, status, deliveries, max_deliveries, lease_id, \
     worker_id, lease_expires_ms, heartbeat_timeout_ms, schedule_to_start_ms, \
     start_to_close_ms, created_ms, started_ms, leased_ms, close_deadline_ms, ended_ms, \
     result, error, retryable";

/// The columns `process_group_from_row` reads, in a SELECT list.
pub(crate) const PROCESS_GROUP_COLUMNS: &str =
    "pgid, start_time, boot_id, execution_id, node_id, program, recorded_ms";

/// The plain column reads the decoders need, implemented by each backend's row type.
pub(crate) trait StoreRow {
    fn text(&self, column: &str) -> Result<String, ExecutorError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, ExecutorError>;
    fn int(&self, column: &str) -> Result<i64, ExecutorError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, ExecutorError>;
    fn int32(&self, column: &str) -> Result<i32, ExecutorError>;
    fn flag(&self, column: &str) -> Result<bool, ExecutorError>;
}

/// `StoreRow` for a row type whose by-name getter is `$get` (sqlx's `try_get`,
/// rusqlite's `get`).
macro_rules! store_row {
    ($row:ty, $get:ident) => {
        impl StoreRow for $row {
            fn text(&self, column: &str) -> Result<String, ExecutorError> {
                self.$get(column).map_err(|e| corrupt(column, e))
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, ExecutorError> {
                self.$get(column).map_err(|e| corrupt(column, e))
            }
            fn int(&self, column: &str) -> Result<i64, ExecutorError> {
                self.$get(column).map_err(|e| corrupt(column, e))
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, ExecutorError> {
                self.$get(column).map_err(|e| corrupt(column, e))
            }
            fn int32(&self, column: &str) -> Result<i32, ExecutorError> {
                self.$get(column).map_err(|e| corrupt(column, e))
            }
            fn flag(&self, column: &str) -> Result<bool, ExecutorError> {
                self.$get(column).map_err(|e| corrupt(column, e))
            }
        }
    };
}

store_row!(SqliteRow<'_, '_>, get);
store_row!(sqlx::postgres::PgRow, try_get);

/// A rusqlite row with its column names read once. The decoders look columns up by name,
/// and rusqlite's own lookup asks SQLite for every name it passes, on every lookup: that
/// was half the time an execution row took to decode (10 µs of 19 in a debug build).
pub(crate) struct SqliteRow<'r, 's> {
    row: &'r rusqlite::Row<'s>,
    names: Vec<&'r str>,
}

impl<'r, 's> SqliteRow<'r, 's> {
    pub(crate) fn new(row: &'r rusqlite::Row<'s>) -> Self {
        Self {
            row,
            names: row.as_ref().column_names(),
        }
    }

    /// The value of `column` (named as rusqlite names them: case-insensitively).
    fn get<T: rusqlite::types::FromSql>(&self, column: &str) -> rusqlite::Result<T> {
        let index = self
            .names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(column))
            .ok_or_else(|| rusqlite::Error::InvalidColumnName(column.to_owned()))?;
        self.row.get(index)
    }
}

fn corrupt(column: &str, e: impl std::fmt::Display) -> ExecutorError {
    ExecutorError::Corrupt(format!("{column}: {e}"))
}

/// JSON text of a value (proto messages use their canonical proto3 JSON).
/// The payloads, as stored, of the events a new execution is created with (seq 1 on).
pub(crate) fn creation_payloads(new: &NewExecution) -> Result<Vec<String>, ExecutorError> {
    new.events().iter().map(|e| encode_json(&e.kind)).collect()
}

/// The events `transitions` append to `execution_id` (their seqs still 0: `numbered`
/// gives them once the transaction knows the first), and each event's payload as stored.
pub(crate) fn events_of(
    execution_id: &str,
    transitions: &[(i64, Transition)],
) -> Result<(Vec<Event>, Vec<String>), ExecutorError> {
    let mut events = Vec::with_capacity(transitions.len());
    let mut payloads = Vec::with_capacity(transitions.len());
    for (at_ms, transition) in transitions {
        let kind = transition.event_kind();
        payloads.push(encode_json(&kind)?);
        events.push(Event {
            execution_id: execution_id.to_owned(),
            seq: 0,
            at_ms: *at_ms,
            kind,
        });
    }
    Ok((events, payloads))
}

/// `events` with their seqs, from `first` on.
pub(crate) fn numbered(mut events: Vec<Event>, first: u64) -> Vec<Event> {
    for (event, seq) in events.iter_mut().zip(first..) {
        event.seq = seq;
    }
    events
}

pub(crate) fn encode_json<T: Serialize + ?Sized>(value: &T) -> Result<String, ExecutorError> {
    serde_json::to_string(value).map_err(|e| ExecutorError::Corrupt(format!("encode json: {e}")))
}

fn decode_json<T: DeserializeOwned>(column: &str, text: &str) -> Result<T, ExecutorError> {
    serde_json::from_str(text).map_err(|e| corrupt(column, e))
}

fn opt_json<T: DeserializeOwned>(
    row: &impl StoreRow,
    column: &str,
) -> Result<Option<T>, ExecutorError> {
    row.opt_text(column)?
        .map(|text| decode_json(column, &text))
        .transpose()
}

fn unsigned<T: TryFrom<i64>>(row: &impl StoreRow, column: &str) -> Result<T, ExecutorError> {
    let value = row.int(column)?;
    T::try_from(value).map_err(|_| corrupt(column, value))
}

/// Decodes a stored action (see `json::action_from_json` for the one case pbjson loses).
pub(crate) fn decode_action(text: &str) -> Result<Action, ExecutorError> {
    let raw: serde_json::Value = decode_json("action", text)?;
    crate::json::action_from_json(raw)
        .map_err(|e| ExecutorError::Corrupt(format!("column action: {e}")))
}

/// A stored pipeline definition (the `definition` column).
pub(crate) fn decode_pipeline(text: &str) -> Result<Pipeline, ExecutorError> {
    decode_json("pipelines.definition", text)
}

pub(crate) fn execution_from_row(row: &impl StoreRow) -> Result<ExecutionRecord, ExecutorError> {
    let status = row.text("status")?;
    let cancel = row.opt_text("cancel_requested")?;
    Ok(ExecutionRecord {
        id: row.text("id")?,
        idempotency_key: row.text("idempotency_key")?,
        fingerprint: row.text("fingerprint")?,
        action: decode_action(&row.text("action")?)?,
        origin: opt_json::<Origin>(row, "origin")?,
        deadline_ms: row.opt_int("deadline_ms")?,
        status: ExecutionStatus::parse(&status)
            .ok_or_else(|| ExecutorError::Corrupt(format!("execution status {status:?}")))?,
        result: opt_json(row, "result")?,
        error: row.text("error")?,
        retryable: row.flag("retryable")?,
        cancel_requested: cancel
            .map(|c| {
                CancelMode::parse(&c)
                    .ok_or_else(|| ExecutorError::Corrupt(format!("cancel mode {c:?}")))
            })
            .transpose()?,
        cancel_reason: row.text("cancel_reason")?,
        created_ms: row.int("created_ms")?,
        started_ms: row.opt_int("started_ms")?,
        finished_ms: row.opt_int("finished_ms")?,
        last_seq: unsigned(row, "last_seq")?,
        pipeline: opt_json(row, "pipeline")?,
        owner: row.opt_text("owner")?,
        lease_until_ms: row.opt_int("lease_until_ms")?,
        lease_epoch: unsigned(row, "lease_epoch")?,
    })
}

pub(crate) fn node_run_from_row(row: &impl StoreRow) -> Result<NodeRunRecord, ExecutorError> {
    let status = row.text("status")?;
    Ok(NodeRunRecord {
        node_id: row.text("node_id")?,
        kind: row.text("kind")?,
        attempt: unsigned(row, "attempt")?,
        status: NodeStatus::parse(&status)
            .ok_or_else(|| ExecutorError::Corrupt(format!("node status {status:?}")))?,
        input: opt_json(row, "input")?,
        output: opt_json(row, "output")?,
        error: row.text("error")?,
        retryable: row.flag("retryable")?,
        started_ms: row.opt_int("started_ms")?,
        finished_ms: row.opt_int("finished_ms")?,
    })
}

pub(crate) fn event_from_row(
    execution_id: &str,
    row: &impl StoreRow,
) -> Result<Event, ExecutorError> {
    Ok(Event {
        execution_id: execution_id.to_owned(),
        seq: unsigned(row, "seq")?,
        at_ms: row.int("at_ms")?,
        kind: decode_json::<EventKind>("payload", &row.text("payload")?)?,
    })
}

pub(crate) fn task_from_row(row: &impl StoreRow) -> Result<TaskRecord, ExecutorError> {
    let status = row.text("status")?;
    Ok(TaskRecord {
        spec: NewTask {
            id: row.text("id")?,
            execution_id: row.text("execution_id")?,
            node_id: row.text("node_id")?,
            try_number: unsigned(row, "try_number")?,
            queue: row.text("queue")?,
            payload: decode_json("tasks.payload", &row.text("payload")?)?,
            idempotency_key: row.text("idempotency_key")?,
            origin: opt_json::<Origin>(row, "origin")?,
            deadline_ms: row.opt_int("deadline_ms")?,
            max_deliveries: unsigned(row, "max_deliveries")?,
            heartbeat_timeout_ms: row.int("heartbeat_timeout_ms")?,
            schedule_to_start_ms: row.opt_int("schedule_to_start_ms")?,
            start_to_close_ms: row.opt_int("start_to_close_ms")?,
            created_ms: row.int("created_ms")?,
        },
        status: TaskStatus::parse(&status).ok_or_else(|| corrupt("tasks.status", &status))?,
        deliveries: unsigned(row, "deliveries")?,
        lease_id: row.opt_text("lease_id")?,
        worker_id: row.opt_text("worker_id")?,
        lease_expires_ms: row.opt_int("lease_expires_ms")?,
        started_ms: row.opt_int("started_ms")?,
        leased_ms: row.opt_int("leased_ms")?,
        close_deadline_ms: row.opt_int("close_deadline_ms")?,
        ended_ms: row.opt_int("ended_ms")?,
        result: opt_json(row, "result")?,
        error: row.text("error")?,
        retryable: row.flag("retryable")?,
    })
}

pub(crate) fn process_group_from_row(
    row: &impl StoreRow,
) -> Result<ProcessGroupRecord, ExecutorError> {
    Ok(ProcessGroupRecord {
        pgid: row.int32("pgid")?,
        start_time: unsigned(row, "start_time")?,
        boot_id: row.text("boot_id")?,
        execution_id: row.text("execution_id")?,
        node_id: row.text("node_id")?,
        program: row.text("program")?,
        recorded_ms: row.int("recorded_ms")?,
    })
}

pub(crate) fn breaker_from_row(row: &impl StoreRow) -> Result<Breaker, ExecutorError> {
    Ok(Breaker {
        consecutive_failures: unsigned(row, "consecutive_failures")?,
        opened_ms: row.opt_int("opened_ms")?,
    })
}
