//! Conversions between the wire (`almanac.executor.v1`) and the engine's records, with
//! request validation: every problem of a request is reported at once, by field.

use almanac_proto::action::{FieldViolation, validate};
use almanac_proto::executor::v1 as pb;
use almanac_proto::time::{ms_to_duration, ms_to_timestamp, timestamp_is_valid, timestamp_to_ms};

use crate::config::{DEFAULT_PAGE_SIZE, MAX_IDEMPOTENCY_KEY_CHARS, MAX_PAGE_SIZE};
use crate::engine::{ExecutionLookup, StartRequest};
use crate::error::ExecutorError;
use crate::json::json_to_pb;
use crate::model::{
    CancelMode, Event, EventKind, ExecutionRecord, ExecutionStatus, ListQuery, NodeRunRecord,
    NodeStatus,
};

/// Prefix of page tokens, so a token from another list is recognised as foreign.
const PAGE_TOKEN_PREFIX: &str = "executions:v1:";

/// A validated `ExecuteRequest` and its `after_seq`.
pub fn start_request(req: pb::ExecuteRequest) -> Result<(StartRequest, u64), ExecutorError> {
    let mut bad = Vec::new();
    if req.idempotency_key.is_empty() {
        bad.push(FieldViolation::new(
            "idempotency_key",
            "an idempotency key is required",
        ));
    } else if req.idempotency_key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
        bad.push(FieldViolation::new(
            "idempotency_key",
            format!("at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
        ));
    }
    bad.extend(validate(req.action.as_ref(), "action"));
    if let Some(deadline) = &req.deadline
        && !timestamp_is_valid(deadline)
    {
        bad.push(FieldViolation::new("deadline", "not a valid timestamp"));
    }
    if let Some(nominal) = req.origin.as_ref().and_then(|o| o.nominal_time.as_ref())
        && !timestamp_is_valid(nominal)
    {
        bad.push(FieldViolation::new(
            "origin.nominal_time",
            "not a valid timestamp",
        ));
    }
    let (Some(action), true) = (req.action, bad.is_empty()) else {
        return Err(ExecutorError::InvalidArgument(bad));
    };
    Ok((
        StartRequest {
            idempotency_key: req.idempotency_key,
            action,
            deadline_ms: req.deadline.as_ref().map(timestamp_to_ms),
            origin: req.origin,
        },
        req.after_seq,
    ))
}

/// The execution a `GetExecutionRequest` names.
pub fn lookup(req: pb::GetExecutionRequest) -> Result<ExecutionLookup, ExecutorError> {
    match (req.execution_id.is_empty(), req.idempotency_key.is_empty()) {
        (false, true) => Ok(ExecutionLookup::Id(req.execution_id)),
        (true, false) => Ok(ExecutionLookup::Key(req.idempotency_key)),
        (true, true) => Err(ExecutorError::invalid(
            "execution_id",
            "an execution id or an idempotency key is required",
        )),
        (false, false) => Err(ExecutorError::invalid(
            "idempotency_key",
            "give an execution id or an idempotency key, not both",
        )),
    }
}

/// A required execution id.
pub fn execution_id(id: String) -> Result<String, ExecutorError> {
    if id.is_empty() {
        return Err(ExecutorError::invalid(
            "execution_id",
            "an execution id is required",
        ));
    }
    Ok(id)
}

/// The query of a `ListExecutionsRequest`: the page size is clamped (never an error).
pub fn list_query(req: &pb::ListExecutionsRequest) -> Result<ListQuery, ExecutorError> {
    let mut bad = Vec::new();
    let limit = match req.page_size {
        n if n <= 0 => DEFAULT_PAGE_SIZE,
        n => (n as u32).min(MAX_PAGE_SIZE),
    };
    let status = match pb::ExecutionStatus::try_from(req.status) {
        Ok(pb::ExecutionStatus::Unspecified) => None,
        Ok(s) => Some(status_from_proto(s)),
        Err(_) => {
            bad.push(FieldViolation::new(
                "status",
                format!("unknown status {}", req.status),
            ));
            None
        }
    };
    let before_id = if req.page_token.is_empty() {
        None
    } else {
        match decode_page_token(&req.page_token) {
            Some(id) => Some(id),
            None => {
                bad.push(FieldViolation::new(
                    "page_token",
                    "not a token from ListExecutions",
                ));
                None
            }
        }
    };
    if !bad.is_empty() {
        return Err(ExecutorError::InvalidArgument(bad));
    }
    Ok(ListQuery {
        before_id,
        status,
        schedule_id: (!req.schedule_id.is_empty()).then(|| req.schedule_id.clone()),
        limit,
    })
}

/// The execution id, mode (unspecified means graceful) and reason of a cancel request.
pub fn cancel_request(
    req: pb::CancelExecutionRequest,
) -> Result<(ExecutionLookup, CancelMode, String), ExecutorError> {
    let mut bad = Vec::new();
    let lookup = match (req.execution_id.is_empty(), req.idempotency_key.is_empty()) {
        (false, true) => ExecutionLookup::Id(req.execution_id),
        (true, false) => ExecutionLookup::Key(req.idempotency_key),
        _ => {
            bad.push(FieldViolation::new(
                "execution_id",
                "give an execution id or an idempotency key (one of them)",
            ));
            ExecutionLookup::Id(String::new())
        }
    };
    let mode = match pb::CancelMode::try_from(req.mode) {
        Ok(pb::CancelMode::Unspecified | pb::CancelMode::Graceful) => CancelMode::Graceful,
        Ok(pb::CancelMode::Terminate) => CancelMode::Terminate,
        Err(_) => {
            bad.push(FieldViolation::new(
                "mode",
                format!("unknown cancel mode {}", req.mode),
            ));
            CancelMode::Graceful
        }
    };
    if !bad.is_empty() {
        return Err(ExecutorError::InvalidArgument(bad));
    }
    Ok((lookup, mode, req.reason))
}

/// An opaque token that continues a listing after the execution `id`.
pub fn encode_page_token(id: &str) -> String {
    hex::encode(format!("{PAGE_TOKEN_PREFIX}{id}"))
}

fn decode_page_token(token: &str) -> Option<String> {
    let bytes = hex::decode(token).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix(PAGE_TOKEN_PREFIX)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

fn status_from_proto(s: pb::ExecutionStatus) -> ExecutionStatus {
    match s {
        pb::ExecutionStatus::Unspecified | pb::ExecutionStatus::Pending => ExecutionStatus::Pending,
        pb::ExecutionStatus::Running => ExecutionStatus::Running,
        pb::ExecutionStatus::Succeeded => ExecutionStatus::Succeeded,
        pb::ExecutionStatus::Failed => ExecutionStatus::Failed,
        pb::ExecutionStatus::TimedOut => ExecutionStatus::TimedOut,
        pb::ExecutionStatus::Cancelled => ExecutionStatus::Cancelled,
    }
}

fn status_to_proto(s: ExecutionStatus) -> pb::ExecutionStatus {
    match s {
        ExecutionStatus::Pending => pb::ExecutionStatus::Pending,
        ExecutionStatus::Running => pb::ExecutionStatus::Running,
        ExecutionStatus::Succeeded => pb::ExecutionStatus::Succeeded,
        ExecutionStatus::Failed => pb::ExecutionStatus::Failed,
        ExecutionStatus::TimedOut => pb::ExecutionStatus::TimedOut,
        ExecutionStatus::Cancelled => pb::ExecutionStatus::Cancelled,
    }
}

fn node_status_to_proto(s: NodeStatus) -> pb::NodeStatus {
    match s {
        NodeStatus::Pending => pb::NodeStatus::Pending,
        NodeStatus::Running => pb::NodeStatus::Running,
        NodeStatus::Succeeded => pb::NodeStatus::Succeeded,
        NodeStatus::Failed => pb::NodeStatus::Failed,
        NodeStatus::Skipped => pb::NodeStatus::Skipped,
        NodeStatus::Cancelled => pb::NodeStatus::Cancelled,
        NodeStatus::TimedOut => pb::NodeStatus::TimedOut,
    }
}

fn cancel_mode_to_proto(mode: Option<CancelMode>) -> pb::CancelMode {
    match mode {
        None => pb::CancelMode::Unspecified,
        Some(CancelMode::Graceful) => pb::CancelMode::Graceful,
        Some(CancelMode::Terminate) => pb::CancelMode::Terminate,
    }
}

/// An execution on the wire, with its node table when `nodes` is given.
pub fn execution(record: ExecutionRecord, nodes: &[NodeRunRecord]) -> pb::Execution {
    pb::Execution {
        id: record.id,
        idempotency_key: record.idempotency_key,
        action: Some(record.action),
        origin: record.origin,
        deadline: record.deadline_ms.map(ms_to_timestamp),
        status: status_to_proto(record.status).into(),
        result: record.result.as_ref().map(json_to_pb),
        error: record.error,
        retryable: record.retryable,
        create_time: Some(ms_to_timestamp(record.created_ms)),
        finish_time: record.finished_ms.map(ms_to_timestamp),
        last_seq: record.last_seq,
        cancel_requested: cancel_mode_to_proto(record.cancel_requested).into(),
        nodes: nodes.iter().map(node_run).collect(),
    }
}

fn node_run(run: &NodeRunRecord) -> pb::NodeRun {
    let duration = match (run.started_ms, run.finished_ms) {
        (Some(start), Some(end)) => Some(ms_to_duration((end - start).max(0))),
        _ => None,
    };
    pb::NodeRun {
        node_id: run.node_id.clone(),
        kind: run.kind.clone(),
        attempt: run.attempt,
        status: node_status_to_proto(run.status).into(),
        output: run.output.as_ref().map(json_to_pb),
        error: run.error.clone(),
        retryable: run.retryable,
        start_time: run.started_ms.map(ms_to_timestamp),
        finish_time: run.finished_ms.map(ms_to_timestamp),
        duration,
    }
}

/// An event on the wire.
pub fn event(event: Event) -> pb::ExecutionEvent {
    use pb::execution_event::Kind;
    let kind = match event.kind {
        EventKind::ExecutionStarted {
            execution_id,
            idempotency_key,
        } => Kind::ExecutionStarted(pb::ExecutionStarted {
            execution_id,
            idempotency_key,
        }),
        EventKind::NodeStarted { node_id, attempt } => {
            Kind::NodeStarted(pb::NodeStarted { node_id, attempt })
        }
        EventKind::NodeSucceeded {
            node_id,
            attempt,
            output,
            duration_ms,
        } => Kind::NodeSucceeded(pb::NodeSucceeded {
            node_id,
            attempt,
            output: Some(json_to_pb(&output)),
            duration: Some(ms_to_duration(duration_ms)),
        }),
        EventKind::NodeFailed {
            node_id,
            attempt,
            error,
            retryable,
        } => Kind::NodeFailed(pb::NodeFailed {
            node_id,
            attempt,
            error,
            retryable,
        }),
        EventKind::NodeRetrying {
            node_id,
            attempt,
            backoff_ms,
        } => Kind::NodeRetrying(pb::NodeRetrying {
            node_id,
            attempt,
            backoff: Some(ms_to_duration(backoff_ms)),
        }),
        EventKind::NodeSkipped { node_id, reason } => {
            Kind::NodeSkipped(pb::NodeSkipped { node_id, reason })
        }
        EventKind::Progress {
            node_id,
            percent,
            message,
        } => Kind::Progress(pb::Progress {
            node_id,
            percent,
            message,
        }),
        EventKind::ExecutionFinished {
            status,
            result,
            error,
            retryable,
        } => Kind::ExecutionFinished(pb::ExecutionFinished {
            status: status_to_proto(status).into(),
            result: result.as_ref().map(json_to_pb),
            error,
            retryable,
        }),
    };
    pb::ExecutionEvent {
        execution_id: event.execution_id,
        seq: event.seq,
        time: Some(ms_to_timestamp(event.at_ms)),
        kind: Some(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        let token = encode_page_token("0192f0c2-aaaa");
        assert_eq!(decode_page_token(&token).as_deref(), Some("0192f0c2-aaaa"));
        assert_eq!(decode_page_token("zz"), None);
        assert_eq!(decode_page_token(&hex::encode("runs:v1:x")), None);
    }

    #[test]
    fn page_size_is_defaulted_and_clamped_never_refused() {
        let size = |page_size| {
            list_query(&pb::ListExecutionsRequest {
                page_size,
                ..Default::default()
            })
            .unwrap()
            .limit
        };
        assert_eq!(size(0), 50);
        assert_eq!(size(-3), 50);
        assert_eq!(size(7), 7);
        assert_eq!(size(100_000), 1000);
    }

    #[test]
    fn an_empty_request_names_every_missing_field() {
        let err = start_request(pb::ExecuteRequest::default()).unwrap_err();
        let ExecutorError::InvalidArgument(v) = err else {
            panic!("invalid argument expected")
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["idempotency_key", "action"]);
    }
}
