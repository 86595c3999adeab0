//! What can make a command fail, how each failure is reported on stderr, and the exit code
//! it maps to: 2 when the request itself is wrong (bad argument, unknown or existing id,
//! refused precondition), 1 for everything else.

use tonic::{Code, Status};

/// A failed command.
#[derive(Debug)]
pub enum CliError {
    /// The server answered with an error status.
    Rpc(Status),
    /// The server could not be reached at all.
    Connect {
        /// "scheduler" or "executor".
        service: &'static str,
        /// The endpoint tried.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The command line or an input file is wrong in a way the server never saw.
    Usage(String),
    /// A watched execution ended without succeeding (already printed).
    Unsuccessful(String),
    /// The server checked the input and found problems (already printed).
    Invalid(String),
    /// Anything else local (I/O, the dev servers).
    Local(anyhow::Error),
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        Self::Local(error)
    }
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Rpc(status) => match status.code() {
                Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::FailedPrecondition
                | Code::Aborted => 2,
                _ => 1,
            },
            Self::Usage(_) | Self::Invalid(_) => 2,
            Self::Connect { .. } | Self::Unsuccessful(_) | Self::Local(_) => 1,
        }
    }

    /// The lines to print on stderr.
    pub fn report(&self) -> Vec<String> {
        match self {
            Self::Rpc(status) => {
                let mut lines = vec![format!(
                    "error: {}: {}",
                    code_name(status.code()),
                    status.message()
                )];
                for v in almanac_proto::status::field_violations(status) {
                    lines.push(format!("  - {}: {}", v.field, v.description));
                }
                if status.code() == Code::Unimplemented {
                    lines.push(
                        "hint: the service at this endpoint does not offer this call \
                         (an older version?)"
                            .to_owned(),
                    );
                }
                if status.code() == Code::Unavailable {
                    lines.push(
                        "hint: is the service running? `almanac dev` starts both on loopback"
                            .to_owned(),
                    );
                }
                lines
            }
            Self::Connect {
                service,
                endpoint,
                source,
            } => vec![
                format!(
                    "error: cannot reach the {service} at {endpoint}: {}",
                    error_chain(source)
                ),
                format!(
                    "hint: start both services with `almanac dev`, or point --{service} \
                     (ALMANAC_{}) at a running one",
                    service.to_uppercase()
                ),
            ],
            Self::Usage(message) => vec![format!("error: {message}")],
            Self::Unsuccessful(message) | Self::Invalid(message) => {
                vec![format!("error: {message}")]
            }
            Self::Local(error) => vec![format!("error: {error:#}")],
        }
    }
}

/// A source chain on one line: `transport error: connection refused`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// The canonical name of a gRPC code, as grpcurl prints it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::action::FieldViolation;

    #[test]
    fn request_errors_exit_2_and_others_exit_1() {
        let check = |code: Code, expected: u8| {
            assert_eq!(
                CliError::Rpc(Status::new(code, "x")).exit_code(),
                expected,
                "{code:?}"
            );
        };
        check(Code::InvalidArgument, 2);
        check(Code::NotFound, 2);
        check(Code::AlreadyExists, 2);
        check(Code::FailedPrecondition, 2);
        check(Code::Aborted, 2);
        check(Code::Internal, 1);
        check(Code::Unavailable, 1);
        check(Code::DeadlineExceeded, 1);
    }

    #[test]
    fn invalid_argument_lists_every_field_violation() {
        let status = almanac_proto::status::invalid_argument(&[
            FieldViolation::new("schedule.spec.cron.expression", "bad minute field"),
            FieldViolation::new("schedule.max_runs", "must be at least 1"),
        ]);
        let lines = CliError::Rpc(status).report();
        assert!(
            lines[0].starts_with("error: INVALID_ARGUMENT: "),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "  - schedule.spec.cron.expression: bad minute field"
        );
        assert_eq!(lines[2], "  - schedule.max_runs: must be at least 1");
    }
}
