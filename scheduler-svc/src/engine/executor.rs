//! What the engine needs from the executor, as a trait: send an attempt (or re-attach to
//! it) and read its events. The tonic implementation lives in `grpc::executor_client`;
//! the engine never sees a tonic type.

use almanac_proto::action::FieldViolation;
use almanac_proto::executor::v1::Action;
use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::model::{CancelMode, RunStatus};

/// One attempt to send: the executor stores it under `key` and attaches a repeat.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteCall {
    pub key: String,
    pub action: Action,
    pub deadline_ms: Option<i64>,
    pub schedule_id: String,
    pub run_id: String,
    pub nominal_ms: i64,
    pub attempt: u32,
    /// Only events with a greater seq are wanted.
    pub after_seq: u64,
}

/// The events of an execution the scheduler acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// The first event: the executor accepted the attempt.
    Started {
        seq: u64,
        execution_id: String,
        at_ms: i64,
    },
    /// The last event.
    Finished {
        seq: u64,
        at_ms: i64,
        status: RunStatus,
        error: Option<String>,
        result: Option<serde_json::Value>,
        retryable: bool,
    },
    /// Any other event (node progress); only its seq matters here.
    Other { seq: u64 },
}

/// Why a call did not deliver events.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Unreachable, overloaded, or the stream broke: not a failure of the run; the same
    /// attempt is sent again with the same key (DESIGN §4.4).
    #[error("executor unavailable: {0}")]
    Transient(String),
    /// The executor refused the attempt for good (invalid, conflicting key).
    #[error("executor refused the attempt: {0}")]
    Rejected(String),
}

/// A stream of an execution's events.
pub type EventStream = BoxStream<'static, Result<ExecEvent, CallError>>;

/// Why the executor would not run an action.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionRefusal {
    /// The action is malformed (each problem names its field).
    #[error("invalid action")]
    Invalid(Vec<FieldViolation>),
    /// The executor's configuration refuses it (a secret, profile or program it lacks).
    #[error("refused by the executor's configuration")]
    Refused(Vec<FieldViolation>),
    /// The executor could not be asked.
    #[error("executor unavailable: {0}")]
    Unavailable(String),
}

/// The executor, as the engine calls it.
#[async_trait]
pub trait ExecutorClient: Send + Sync + 'static {
    /// Starts or re-attaches to the execution of `call.key`.
    async fn execute(&self, call: ExecuteCall) -> Result<EventStream, CallError>;

    /// Asks whether the executor can run `action` (nothing runs); problems are named
    /// under `prefix`.
    async fn validate_action(&self, action: &Action, prefix: &str) -> Result<(), ActionRefusal>;

    /// Asks the executor to stop the execution stored under `key`.
    async fn cancel(&self, key: &str, mode: CancelMode, reason: &str) -> Result<(), CallError>;
}
