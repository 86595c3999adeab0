//! Requests and answers of WorkerService: validation (every bad field named at once) and
//! the conversion of stored tasks to the wire's `Task`.

use std::time::Duration;

use almanac_proto::action::FieldViolation;
use almanac_proto::executor::v1 as pb;
use almanac_proto::time::{duration_to_ms, ms_to_duration, ms_to_timestamp};
use serde_json::Value;

use crate::engine::tasks::{DEFAULT_POLL_WAIT, MAX_POLL_WAIT};
use crate::error::ExecutorError;
use crate::json::{json_to_pb, pb_to_json};
use crate::store::tasks::TaskRecord;

/// The longest worker id.
pub const MAX_WORKER_ID_CHARS: usize = 200;
/// The most queues one poll may name.
pub const MAX_POLL_QUEUES: usize = 64;
/// The longest queue name (as for the action's `queue`).
pub const MAX_QUEUE_CHARS: usize = 200;
/// The longest progress message.
pub const MAX_PROGRESS_MESSAGE_CHARS: usize = 1_000;
/// The longest error a worker may report.
pub const MAX_TASK_ERROR_CHARS: usize = 10_000;

/// A validated poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Poll {
    pub worker_id: String,
    pub queues: Vec<String>,
    pub wait: Duration,
}

fn done<T>(value: T, bad: Vec<FieldViolation>) -> Result<T, ExecutorError> {
    if bad.is_empty() {
        Ok(value)
    } else {
        Err(ExecutorError::InvalidArgument(bad))
    }
}

fn required(bad: &mut Vec<FieldViolation>, field: &str, value: &str, max_chars: usize) {
    if value.is_empty() {
        bad.push(FieldViolation::new(field, format!("a {field} is required")));
    } else if value.chars().count() > max_chars {
        bad.push(FieldViolation::new(
            field,
            format!("at most {max_chars} characters"),
        ));
    }
}

/// A validated `PollTaskRequest`: the wait defaults to 30 s and is clamped to 60 s.
pub fn poll(req: pb::PollTaskRequest) -> Result<Poll, ExecutorError> {
    let mut bad = Vec::new();
    required(&mut bad, "worker_id", &req.worker_id, MAX_WORKER_ID_CHARS);
    if req.queues.is_empty() {
        bad.push(FieldViolation::new(
            "queues",
            "at least one queue is required",
        ));
    } else if req.queues.len() > MAX_POLL_QUEUES {
        bad.push(FieldViolation::new(
            "queues",
            format!("at most {MAX_POLL_QUEUES} queues"),
        ));
    }
    for (i, queue) in req.queues.iter().enumerate() {
        let ok = !queue.is_empty()
            && queue.len() <= MAX_QUEUE_CHARS
            && queue
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
        if !ok {
            bad.push(FieldViolation::new(
                format!("queues[{i}]"),
                format!("a queue name is 1 to {MAX_QUEUE_CHARS} letters, digits and - _ . : /"),
            ));
        }
    }
    let wait = match req.wait.as_ref() {
        None => DEFAULT_POLL_WAIT,
        Some(d) => match duration_to_ms(d) {
            Some(ms) if ms >= 0 => Duration::from_millis(ms as u64).min(MAX_POLL_WAIT),
            _ => {
                bad.push(FieldViolation::new(
                    "wait",
                    "not a valid, non-negative duration",
                ));
                DEFAULT_POLL_WAIT
            }
        },
    };
    let mut queues = req.queues;
    queues.sort();
    queues.dedup();
    done(
        Poll {
            worker_id: req.worker_id,
            queues,
            wait,
        },
        bad,
    )
}

fn task_and_lease(bad: &mut Vec<FieldViolation>, task_id: &str, lease_id: &str) {
    required(bad, "task_id", task_id, 1_000);
    required(bad, "lease_id", lease_id, 100);
}

/// A validated heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Beat {
    pub task_id: String,
    pub lease_id: String,
    /// Percent and message, when the worker reports progress.
    pub progress: Option<(f64, String)>,
}

/// A validated `HeartbeatRequest`.
pub fn heartbeat(req: pb::HeartbeatRequest) -> Result<Beat, ExecutorError> {
    let mut bad = Vec::new();
    task_and_lease(&mut bad, &req.task_id, &req.lease_id);
    if let Some(p) = req.percent
        && !(0.0..=100.0).contains(&p)
    {
        bad.push(FieldViolation::new("percent", "from 0 to 100"));
    }
    if req.message.chars().count() > MAX_PROGRESS_MESSAGE_CHARS {
        bad.push(FieldViolation::new(
            "message",
            format!("at most {MAX_PROGRESS_MESSAGE_CHARS} characters"),
        ));
    }
    if req.percent.is_none() && !req.message.is_empty() {
        bad.push(FieldViolation::new(
            "percent",
            "a progress message needs a percent",
        ));
    }
    let progress = req.percent.map(|p| (p, req.message));
    let beat = Beat {
        task_id: req.task_id,
        lease_id: req.lease_id,
        progress,
    };
    done(beat, bad)
}

/// A validated `CompleteTaskRequest`: (task, lease, result).
pub fn complete(req: pb::CompleteTaskRequest) -> Result<(String, String, Value), ExecutorError> {
    let mut bad = Vec::new();
    task_and_lease(&mut bad, &req.task_id, &req.lease_id);
    let result = req.result.as_ref().map_or(Value::Null, pb_to_json);
    done((req.task_id, req.lease_id, result), bad)
}

/// A validated `FailTaskRequest`: (task, lease, error, retryable).
pub fn fail(req: pb::FailTaskRequest) -> Result<(String, String, String, bool), ExecutorError> {
    let mut bad = Vec::new();
    task_and_lease(&mut bad, &req.task_id, &req.lease_id);
    required(&mut bad, "error", &req.error, MAX_TASK_ERROR_CHARS);
    done((req.task_id, req.lease_id, req.error, req.retryable), bad)
}

/// A leased task as a worker receives it. Its deadline is the sooner of the execution's
/// deadline and this delivery's start-to-close deadline.
pub fn task(task: TaskRecord) -> pb::Task {
    let payload = match json_to_pb(&task.spec.payload).kind {
        Some(pbjson_types::value::Kind::StructValue(s)) => s,
        _ => pbjson_types::Struct::default(),
    };
    let deadline = [task.spec.deadline_ms, task.close_deadline_ms]
        .into_iter()
        .flatten()
        .min();
    pb::Task {
        lease_id: task.lease_id.clone().unwrap_or_default(),
        queue: task.spec.queue,
        payload: Some(payload),
        execution_id: task.spec.execution_id,
        node_id: task.spec.node_id,
        delivery: task.deliveries,
        lease_expire_time: task.lease_expires_ms.map(ms_to_timestamp),
        heartbeat_timeout: Some(ms_to_duration(task.spec.heartbeat_timeout_ms)),
        deadline: deadline.map(ms_to_timestamp),
        idempotency_key: task.spec.idempotency_key,
        origin: task.spec.origin,
        task_id: task.spec.id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(error: ExecutorError) -> Vec<String> {
        match error {
            ExecutorError::InvalidArgument(v) => v.into_iter().map(|v| v.field).collect(),
            other => panic!("not invalid argument: {other:?}"),
        }
    }

    #[test]
    fn a_poll_names_every_bad_field() {
        let bad = poll(pb::PollTaskRequest {
            worker_id: String::new(),
            queues: vec!["ok".into(), "not ok!".into()],
            wait: Some(ms_to_duration(-5)),
        })
        .unwrap_err();
        assert_eq!(fields(bad), ["worker_id", "queues[1]", "wait"]);
        let none = poll(pb::PollTaskRequest {
            worker_id: "w".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(fields(none), ["queues"]);
    }

    #[test]
    fn a_poll_wait_defaults_to_30s_and_is_clamped_to_60s() {
        let p = |wait| {
            poll(pb::PollTaskRequest {
                worker_id: "w".into(),
                queues: vec!["q".into(), "q".into()],
                wait,
            })
            .unwrap()
        };
        assert_eq!(p(None).wait, Duration::from_secs(30));
        assert_eq!(
            p(Some(ms_to_duration(600_000))).wait,
            Duration::from_secs(60)
        );
        assert_eq!(p(Some(ms_to_duration(0))).wait, Duration::ZERO);
        assert_eq!(p(None).queues, ["q"]);
    }

    #[test]
    fn worker_calls_need_a_task_a_lease_and_sane_progress() {
        let bad = heartbeat(pb::HeartbeatRequest {
            percent: Some(101.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(fields(bad), ["task_id", "lease_id", "percent"]);
        let nan = heartbeat(pb::HeartbeatRequest {
            task_id: "t".into(),
            lease_id: "l".into(),
            percent: Some(f64::NAN),
            ..Default::default()
        });
        assert!(nan.is_err());
        let bad = fail(pb::FailTaskRequest {
            task_id: "t".into(),
            lease_id: "l".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(fields(bad), ["error"]);
    }
}
