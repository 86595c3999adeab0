//! What makes an `Action` valid, decided once for both services: the scheduler checks a
//! schedule's action when it is created or updated, the executor checks it again on
//! `Execute`. Kinds that this version cannot run are refused here, never accepted.

mod call_api;
mod notify;
mod task;

use crate::executor::v1::{Action, RetryPolicy, action::Kind};
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

/// The most tries a retry policy may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;
/// The longest backoff a retry policy may ask for.
pub const MAX_BACKOFF_MS: i64 = 3_600_000;

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
/// `schedule.action`). An empty list means the action is well formed; whether a given
/// executor can run it (its secrets, allow-lists) is `ValidateAction`'s question.
pub fn validate(action: Option<&Action>, prefix: &str) -> Vec<FieldViolation> {
    let Some(kind) = action.and_then(|a| a.kind.as_ref()) else {
        return vec![FieldViolation::new(
            prefix,
            "an action is required: one of run_task, execute_pipeline, send_notification, call_api",
        )];
    };
    let mut out = Problems::new(format!("{prefix}.{}", kind_name(kind)));
    match kind {
        Kind::CallApi(call) => call_api::check_call_api(call, &mut out),
        Kind::SendNotification(n) => notify::check_notification(n, &mut out),
        Kind::RunTask(task) => task::check_run_task(task, &mut out),
        Kind::ExecutePipeline(run) => {
            out.required("pipeline_id", &run.pipeline_id);
            if run.version < 0 {
                out.bad("version", "must not be negative (0: the latest version)");
            }
        }
    }
    out.list
}

/// Collects violations under a prefix.
pub(crate) struct Problems {
    prefix: String,
    list: Vec<FieldViolation>,
}

impl Problems {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            list: Vec::new(),
        }
    }

    /// A violation of `field` (relative to the prefix; "" is the prefix itself).
    pub(crate) fn bad(&mut self, field: &str, description: impl Into<String>) {
        let path = if field.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{field}", self.prefix)
        };
        self.list.push(FieldViolation::new(path, description));
    }

    /// Checks a required, non-empty string field.
    pub(crate) fn required(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.bad(field, "required");
        }
    }

    /// Checks an optional duration: whole, positive, at most `max_ms`.
    pub(crate) fn duration(
        &mut self,
        field: &str,
        d: Option<&pbjson_types::Duration>,
        max_ms: i64,
    ) {
        if let Some(d) = d {
            match duration_to_ms(d) {
                Some(ms) if ms > 0 && ms <= max_ms => {}
                _ => self.bad(
                    field,
                    format!("must be more than 0 and at most {}s", max_ms / 1000),
                ),
            }
        }
    }

    /// Checks a retry policy.
    pub(crate) fn retry(&mut self, field: &str, retry: Option<&RetryPolicy>) {
        let Some(r) = retry else { return };
        if r.max_attempts > MAX_RETRY_ATTEMPTS {
            self.bad(
                &format!("{field}.max_attempts"),
                format!("at most {MAX_RETRY_ATTEMPTS}"),
            );
        }
        self.duration(
            &format!("{field}.initial_backoff"),
            r.initial_backoff.as_ref(),
            MAX_BACKOFF_MS,
        );
        self.duration(
            &format!("{field}.max_backoff"),
            r.max_backoff.as_ref(),
            MAX_BACKOFF_MS,
        );
        if let (Some(i), Some(m)) = (
            r.initial_backoff.as_ref().and_then(duration_to_ms),
            r.max_backoff.as_ref().and_then(duration_to_ms),
        ) && i > m
        {
            self.bad(
                &format!("{field}.max_backoff"),
                "must not be less than initial_backoff",
            );
        }
        if r.multiplier != 0.0 && !(1.0..=10.0).contains(&r.multiplier) {
            self.bad(
                &format!("{field}.multiplier"),
                "must be between 1 and 10 (0: the default, 2)",
            );
        }
    }
}

/// Whether a string field holds template syntax (rendered per run; checked then).
pub fn is_template(value: &str) -> bool {
    value.contains("{{") || value.contains("{%")
}

/// Checks a URL that is not a template: absolute http(s), with a host, no credentials.
pub(crate) fn check_url(out: &mut Problems, field: &str, value: &str) {
    if value.is_empty() {
        out.bad(field, "a URL is required");
        return;
    }
    if is_template(value) {
        return;
    }
    match url::Url::parse(value) {
        Err(e) => out.bad(field, format!("{value:?} is not a URL: {e}")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => out.bad(
            field,
            format!("scheme {:?} is not allowed: use http or https", u.scheme()),
        ),
        Ok(u) if u.host().is_none() => out.bad(field, "the URL has no host"),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => out.bad(
            field,
            "credentials in the URL are not allowed: use auth or a secret",
        ),
        Ok(_) => {}
    }
}

/// Checks extra request headers: valid names and values, none the executor sets itself.
pub(crate) fn check_headers<'a>(
    out: &mut Problems,
    field: &str,
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (name, value) in headers {
        match ::http::HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => out.bad(field, format!("{name:?} is not a valid header name")),
            Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => out.bad(
                field,
                format!("{name:?} is set by the executor and cannot be overridden"),
            ),
            Ok(_) => {}
        }
        if !is_template(value) && ::http::HeaderValue::from_str(value).is_err() {
            out.bad(
                field,
                format!("the value of {name:?} is not a valid header value"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::v1::{
        CallApiAction, ChatWebhookChannel, EmailChannel, NotificationMessage, RunTaskAction,
        SendNotificationAction, chat_webhook_channel, run_task_action, send_notification_action,
    };

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
        let pipeline = Action {
            kind: Some(Kind::ExecutePipeline(Default::default())),
        };
        assert_eq!(
            fields(Some(&pipeline)),
            ["action.execute_pipeline.pipeline_id"]
        );
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

    #[test]
    fn templates_are_not_checked_as_urls_before_they_are_rendered() {
        assert!(validate(Some(&call("http://127.0.0.1/{{ run.id }}")), "a").is_empty());
        assert!(validate(Some(&call("{{ base }}/x")), "a").is_empty());
    }

    #[test]
    fn retry_policies_are_bounded() {
        let mut action = call("http://127.0.0.1/");
        if let Some(Kind::CallApi(c)) = &mut action.kind {
            c.retry = Some(RetryPolicy {
                max_attempts: 1_000,
                initial_backoff: Some(crate::time::ms_to_duration(5_000)),
                max_backoff: Some(crate::time::ms_to_duration(1_000)),
                multiplier: 0.5,
            });
        }
        assert_eq!(
            fields(Some(&action)),
            [
                "action.call_api.retry.max_attempts",
                "action.call_api.retry.max_backoff",
                "action.call_api.retry.multiplier"
            ]
        );
    }

    #[test]
    fn notifications_need_a_channel_and_a_message() {
        let notify = |channel, message| Action {
            kind: Some(Kind::SendNotification(SendNotificationAction {
                channel,
                message,
                retry: None,
            })),
        };
        let message = Some(NotificationMessage {
            title: "t".into(),
            ..Default::default()
        });
        assert_eq!(
            fields(Some(&notify(None, None))),
            [
                "action.send_notification",
                "action.send_notification.message"
            ]
        );
        let slack = send_notification_action::Channel::Slack(ChatWebhookChannel {
            target: Some(chat_webhook_channel::Target::Url("ftp://x".into())),
        });
        assert_eq!(
            fields(Some(&notify(Some(slack), message.clone()))),
            ["action.send_notification.slack.url"]
        );
        let email = send_notification_action::Channel::Email(EmailChannel {
            to: vec!["ops@example.com".into(), "nobody".into()],
            ..Default::default()
        });
        assert_eq!(
            fields(Some(&notify(Some(email), message))),
            ["action.send_notification.email.to"]
        );
    }

    #[test]
    fn tasks_need_a_queue_or_a_command() {
        let task = |target| Action {
            kind: Some(Kind::RunTask(RunTaskAction {
                target,
                ..Default::default()
            })),
        };
        assert_eq!(fields(Some(&task(None))), ["action.run_task"]);
        assert_eq!(
            fields(Some(&task(Some(run_task_action::Target::Queue(
                "has space".into()
            ))))),
            ["action.run_task.queue"]
        );
        assert!(
            fields(Some(&task(Some(run_task_action::Target::Queue(
                "agents".into()
            )))))
            .is_empty()
        );
        assert_eq!(
            fields(Some(&task(Some(run_task_action::Target::Command(
                Default::default()
            ))))),
            ["action.run_task.command.argv"]
        );
    }
}
