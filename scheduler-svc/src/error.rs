//! `SchedulerError`: every way a scheduler operation can fail, as the API reports it. The
//! gRPC layer maps it to a status in one place (`grpc::status`).

use almanac_proto::action::FieldViolation;

use crate::store::StoreError;

/// The scheduler's one error type.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The request is malformed; every problem is listed with its field.
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// No such schedule or run.
    #[error("{0} not found")]
    NotFound(String),
    /// An id or request id conflicts with something stored.
    #[error("{0}")]
    AlreadyExists(String),
    /// The etag does not match the stored version.
    #[error("{0}")]
    Aborted(String),
    /// The operation is not valid in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The executor's configuration refuses the schedule's action.
    #[error("refused by the executor: {}", join(.0))]
    ActionRefused(Vec<FieldViolation>),
    /// The executor could not be reached to validate an action.
    #[error("{0}")]
    ExecutorUnavailable(String),
    /// The store cannot be reached; the caller may retry.
    #[error("store unavailable")]
    Unavailable(#[source] StoreError),
    /// A bug or corrupt data; details are logged, not returned.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl SchedulerError {
    /// One violation of one field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<StoreError> for SchedulerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(what) => Self::AlreadyExists(what),
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::VersionMismatch { expected, actual } => Self::Aborted(format!(
                "etag mismatch: the schedule is at v{actual}, the request was made against v{expected}; read it again"
            )),
            StoreError::Conflict(why) => Self::FailedPrecondition(why),
            e @ StoreError::Unavailable(_) => Self::Unavailable(e),
            e @ (StoreError::Corrupt(_) | StoreError::Database(_)) => Self::Internal(e),
        }
    }
}
