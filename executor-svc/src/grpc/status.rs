//! The one place where `ExecutorError` becomes a `tonic::Status`, variant by variant.
//! INTERNAL never carries the internal detail: it is logged here instead.

use tonic::Status;

use crate::error::ExecutorError;

/// The status a client sees for an error.
pub fn to_status(error: ExecutorError) -> Status {
    match error {
        ExecutorError::InvalidArgument(violations) => {
            almanac_proto::status::invalid_argument(&violations)
        }
        ExecutorError::FailedPrecondition(violations) => {
            almanac_proto::status::failed_precondition(&violations)
        }
        ExecutorError::Aborted(why) => Status::aborted(why),
        ExecutorError::NotFound(what) => Status::not_found(format!("{what} not found")),
        ExecutorError::AlreadyExists(message) => Status::already_exists(message),
        ExecutorError::AlreadyFinished(id) => {
            Status::failed_precondition(format!("execution {id} has already finished"))
        }
        ExecutorError::TaskPrecondition(message) => Status::failed_precondition(message),
        // Runners stop on it; should it reach a caller, another replica has the execution.
        ExecutorError::LeaseLost(id) => Status::unavailable(format!(
            "execution {id} is run by another executor replica now; try again"
        )),
        ExecutorError::ShuttingDown => Status::unavailable("the executor is shutting down"),
        ExecutorError::StoreUnavailable(error) => {
            tracing::warn!(%error, "database unavailable");
            Status::unavailable("the executor's database is unavailable; try again")
        }
        ExecutorError::Store(error) => {
            tracing::error!(%error, "database error");
            Status::internal("internal error")
        }
        ExecutorError::Corrupt(detail) => {
            tracing::error!(detail, "corrupt stored data");
            Status::internal("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DatabaseError;
    use tonic::Code;

    #[test]
    fn each_error_has_its_code_and_internal_detail_stays_inside() {
        let rows = [
            (
                ExecutorError::invalid("idempotency_key", "required"),
                Code::InvalidArgument,
            ),
            (
                ExecutorError::NotFound("execution x".into()),
                Code::NotFound,
            ),
            (
                ExecutorError::AlreadyExists("taken".into()),
                Code::AlreadyExists,
            ),
            (
                ExecutorError::TaskPrecondition("lease expired".into()),
                Code::FailedPrecondition,
            ),
            (ExecutorError::ShuttingDown, Code::Unavailable),
            (ExecutorError::LeaseLost("e".into()), Code::Unavailable),
            (
                ExecutorError::StoreUnavailable(sqlx::Error::PoolTimedOut.into()),
                Code::Unavailable,
            ),
            (
                ExecutorError::StoreUnavailable(DatabaseError::Closed),
                Code::Unavailable,
            ),
            (
                ExecutorError::Corrupt("secret detail".into()),
                Code::Internal,
            ),
            (
                ExecutorError::Store(sqlx::Error::RowNotFound.into()),
                Code::Internal,
            ),
            (
                ExecutorError::Store(rusqlite::Error::InvalidColumnName("secret".into()).into()),
                Code::Internal,
            ),
        ];
        for (error, code) in rows {
            let status = to_status(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("secret"));
        }
    }
}
