//! The one shape of `INVALID_ARGUMENT` both services return: a message listing every
//! problem and a `google.rpc.BadRequest` detail with one field violation each, so that
//! clients in any language can point at the field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::action::FieldViolation;

/// `INVALID_ARGUMENT` carrying every violation, in the message and as `BadRequest`.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let message = violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_bad_request_violation(v.field.clone(), v.description.clone());
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `FAILED_PRECONDITION` for a request that is well formed but that this server's
/// configuration refuses (a secret it does not have, a program it does not allow): the
/// message lists every problem, and a `google.rpc.PreconditionFailure` detail carries
/// one violation each (type `CONFIGURATION`, subject the field).
pub fn failed_precondition(violations: &[FieldViolation]) -> Status {
    let message = violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    for v in violations {
        details.add_precondition_failure_violation(
            "CONFIGURATION",
            v.field.clone(),
            v.description.clone(),
        );
    }
    Status::with_error_details(Code::FailedPrecondition, message, details)
}

/// The precondition violations carried by a status, as field violations.
pub fn precondition_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_precondition_failure()
        .map(|pf| {
            pf.violations
                .into_iter()
                .map(|v| FieldViolation::new(v.subject, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// The field violations carried by a status, if any (for clients and tests).
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|br| {
            br.field_violations
                .into_iter()
                .map(|v| FieldViolation::new(v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_survive_the_round_trip_through_a_status() {
        let sent = vec![
            FieldViolation::new("schedule.spec.cron.expression", "bad minute field"),
            FieldViolation::new("schedule.max_runs", "must be at least 1"),
        ];
        let status = invalid_argument(&sent);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("schedule.max_runs: must be at least 1")
        );
        assert_eq!(field_violations(&status), sent);
        let refused = failed_precondition(&sent);
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert_eq!(precondition_violations(&refused), sent);
    }
}
