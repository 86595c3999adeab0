//! `SchedulerError` → `tonic::Status`, variant by variant (DESIGN §6). Internal details
//! are logged here and never sent.

use almanac_proto::status::invalid_argument;
use tonic::Status;

use crate::error::SchedulerError;

impl From<SchedulerError> for Status {
    fn from(e: SchedulerError) -> Self {
        match e {
            SchedulerError::InvalidArgument(violations) => invalid_argument(&violations),
            SchedulerError::NotFound(what) => Status::not_found(format!("{what} not found")),
            SchedulerError::AlreadyExists(what) => Status::already_exists(what),
            SchedulerError::Aborted(why) => Status::aborted(why),
            SchedulerError::FailedPrecondition(why) => Status::failed_precondition(why),
            SchedulerError::ActionRefused(violations) => {
                almanac_proto::status::failed_precondition(&violations)
            }
            SchedulerError::ExecutorUnavailable(why) => {
                tracing::warn!(error = %why, "executor unavailable for validation");
                Status::unavailable(
                    "the executor cannot be reached to validate the action; retry later",
                )
            }
            SchedulerError::Unavailable(source) => {
                tracing::warn!(error = %source, error_detail = ?source, "store unavailable");
                Status::unavailable("the scheduler's store is unavailable; retry later")
            }
            SchedulerError::Internal(source) => {
                tracing::error!(error = %source, error_detail = ?source, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use tonic::Code;

    #[test]
    fn each_error_maps_to_its_code_and_internals_do_not_leak() {
        let cases = [
            (
                SchedulerError::invalid("schedule.max_runs", "must be at least 1"),
                Code::InvalidArgument,
            ),
            (
                SchedulerError::NotFound("schedule \"x\"".into()),
                Code::NotFound,
            ),
            (
                SchedulerError::AlreadyExists("schedule \"x\"".into()),
                Code::AlreadyExists,
            ),
            (SchedulerError::Aborted("etag".into()), Code::Aborted),
            (
                SchedulerError::FailedPrecondition("completed".into()),
                Code::FailedPrecondition,
            ),
            (
                SchedulerError::Internal(StoreError::Corrupt("secret detail".into())),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("secret detail"));
        }
    }
}
