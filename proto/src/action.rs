//! What makes an `Action` valid, decided once for both services: the scheduler checks a
//! schedule's action when it is created or updated, the executor checks it again on
//! `Execute`. Kinds that this version cannot run are refused here, never accepted.

use crate::executor::v1::{Action, CallApiAction, action::Kind, call_api_action::Body};
use crate::time::duration_to_ms;

/// One problem with one field of a request, as in `google.rpc.BadRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's path, e.g. `schedule.action.call_api.url`.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl std::fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// The longest `call_api` timeout accepted.
pub const MAX_CALL_API_TIMEOUT_MS: i64 = 3_600_000;
/// The `call_api` timeout when none is given.
pub const DEFAULT_CALL_API_TIMEOUT_MS: i64 = 30_000;

/// Headers the executor sets itself; an action may not set them.
pub const RESERVED_HEADERS: &[&str] = &[
    "idempotency-key",
    "x-almanac-schedule-id",
    "x-almanac-run-id",
    "x-almanac-nominal-time",
];

/// The name of an action's kind, as used in node tables and messages.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::RunTask(_) => "run_task",
        Kind::ExecutePipeline(_) => "execute_pipeline",
        Kind::SendNotification(_) => "send_notification",
        Kind::CallApi(_) => "call_api",
    }
}

/// Every problem with `action`, each named by its path under `prefix` (e.g. `action` or
/// `schedule.action`). An empty list means the action can run.
pub fn validate(action: Option<&Action>, prefix: &str) -> Vec<FieldViolation> {
    let Some(kind) = action.and_then(|a| a.kind.as_ref()) else {
        return vec![FieldViolation::new(
            prefix,
            "an action is required: one of run_task, execute_pipeline, send_notification, call_api",
        )];
    };
    match kind {
        Kind::CallApi(call) => validate_call_api(call, &format!("{prefix}.call_api")),
        other => vec![FieldViolation::new(
            format!("{prefix}.{}", kind_name(other)),
            format!(
                "the {} action is not available in this version of almanac; call_api is",
                kind_name(other)
            ),
        )],
    }
}

fn validate_call_api(call: &CallApiAction, prefix: &str) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let mut bad = |field: &str, description: String| {
        out.push(FieldViolation::new(
            format!("{prefix}.{field}"),
            description,
        ))
    };

    if !call.method.is_empty() && http::Method::from_bytes(call.method.as_bytes()).is_err() {
        bad("method", format!("{:?} is not an HTTP method", call.method));
    }
    if call.url.is_empty() {
        bad("url", "a URL is required".into());
    } else {
        match url::Url::parse(&call.url) {
            Err(e) => bad("url", format!("{:?} is not a URL: {e}", call.url)),
            Ok(u) if !matches!(u.scheme(), "http" | "https") => bad(
                "url",
                format!("scheme {:?} is not allowed: use http or https", u.scheme()),
            ),
            Ok(u) if u.host().is_none() => bad("url", "the URL has no host".into()),
            Ok(u) if !u.username().is_empty() || u.password().is_some() => bad(
                "url",
                "credentials in the URL are not allowed: use headers".into(),
            ),
            Ok(_) => {}
        }
    }
    for (name, value) in &call.headers {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => bad("headers", format!("{name:?} is not a valid header name")),
            Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => bad(
                "headers",
                format!("{name:?} is set by the executor and cannot be overridden"),
            ),
            Ok(_) => {}
        }
        if http::HeaderValue::from_str(value).is_err() {
            bad(
                "headers",
                format!("the value of {name:?} is not a valid header value"),
            );
        }
    }
    if let Some(Body::JsonBody(v)) = &call.body
        && v.kind.is_none()
    {
        bad(
            "json_body",
            "a JSON body must have a value (use null explicitly)".into(),
        );
    }
    if let Some(t) = &call.timeout {
        match duration_to_ms(t) {
            Some(ms) if ms > 0 && ms <= MAX_CALL_API_TIMEOUT_MS => {}
            _ => bad(
                "timeout",
                format!(
                    "must be more than 0 and at most {}s",
                    MAX_CALL_API_TIMEOUT_MS / 1000
                ),
            ),
        }
    }
    for s in &call.accepted_statuses {
        if !(100..=599).contains(s) {
            bad(
                "accepted_statuses",
                format!("{s} is not an HTTP status (100-599)"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::v1::RunTaskAction;

    fn call(url: &str) -> Action {
        Action {
            kind: Some(Kind::CallApi(CallApiAction {
                url: url.into(),
                ..Default::default()
            })),
        }
    }

    fn fields(action: Option<&Action>) -> Vec<String> {
        validate(action, "action")
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn a_plain_https_call_is_valid() {
        assert!(validate(Some(&call("https://example.com/x")), "action").is_empty());
    }

    #[test]
    fn each_problem_names_its_field() {
        assert_eq!(fields(None), ["action"]);
        assert_eq!(fields(Some(&Action { kind: None })), ["action"]);
        assert_eq!(
            fields(Some(&call("ftp://example.com"))),
            ["action.call_api.url"]
        );
        assert_eq!(fields(Some(&call("not a url"))), ["action.call_api.url"]);
        assert_eq!(fields(Some(&call(""))), ["action.call_api.url"]);
        let task = Action {
            kind: Some(Kind::RunTask(RunTaskAction::default())),
        };
        assert_eq!(fields(Some(&task)), ["action.run_task"]);
    }

    #[test]
    fn reserved_headers_and_bad_statuses_are_refused() {
        let mut action = call("http://127.0.0.1:1/");
        if let Some(Kind::CallApi(c)) = &mut action.kind {
            c.headers.insert("Idempotency-Key".into(), "x".into());
            c.accepted_statuses = vec![200, 999];
            c.method = "GE T".into();
        }
        let got = fields(Some(&action));
        assert_eq!(
            got,
            [
                "action.call_api.method",
                "action.call_api.headers",
                "action.call_api.accepted_statuses"
            ]
        );
    }
}
