//! What the egress tests share: a call of a URL, the same URL as a template (so that it
//! meets the guard at run time rather than at `Execute`), and the two ways a refusal
//! must look — a FAILED_PRECONDITION naming the URL field, and a run failed for good on
//! its first try with the guard's reason.
#![allow(dead_code)]

use almanac_proto::executor::v1::{
    Action, CallApiAction, ExecutionStatus, ValidateActionRequest, action::Kind,
};

use crate::common::{execute_all, execute_request, finished, kinds};

pub type Client = almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient<
    tonic::transport::Channel,
>;

/// What every refusal says after its reason.
pub const ADVICE: &str = "allow its network in the executor's egress configuration";

pub fn call(url: &str) -> Action {
    Action {
        kind: Some(Kind::CallApi(CallApiAction {
            url: url.into(),
            ..Default::default()
        })),
    }
}

/// The same URL as a template (it renders to itself), so that it passes the check at
/// `Execute` and meets the guard at run time instead.
pub fn templated(url: &str) -> String {
    format!("{url}{{{{ '' }}}}")
}

/// `Execute` and `ValidateAction` refuse a literal URL with FAILED_PRECONDITION naming
/// `…call_api.url`, with `reason`.
pub async fn assert_refused_at_execute(client: &mut Client, key: &str, url: &str, reason: &str) {
    let status = client
        .execute(execute_request(key, call(url)))
        .await
        .expect_err(url);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{url}");
    let violations = almanac_proto::status::precondition_violations(&status);
    assert_eq!(violations.len(), 1, "{url}: {violations:?}");
    assert_eq!(violations[0].field, "action.call_api.url");
    let description = &violations[0].description;
    assert!(
        description.contains(reason) && description.contains(ADVICE),
        "{url}: {description:?} should say {reason:?}"
    );
    let status = client
        .validate_action(ValidateActionRequest {
            action: Some(call(url)),
            field_prefix: "schedule.action".into(),
        })
        .await
        .expect_err(url);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{url}");
    let violations = almanac_proto::status::precondition_violations(&status);
    assert_eq!(violations[0].field, "schedule.action.call_api.url");
}

/// Executes `url` and expects the run to fail for good, on its first try, with the
/// guard's `reason` (not a network error); returns the error.
pub async fn assert_refused_at_run_time(
    client: &mut Client,
    key: &str,
    url: &str,
    reason: &str,
) -> String {
    let events = execute_all(client, execute_request(key, call(url))).await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32, "{url}");
    assert!(
        done.error.contains(reason) && done.error.contains(ADVICE),
        "{url}: {:?} should say {reason:?}",
        done.error
    );
    assert!(!done.retryable, "{url}: a refusal is final");
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "NodeStarted")
            .count(),
        1,
        "{url}: tried once"
    );
    done.error
}

/// Both: the literal URL at `Execute`, the templated one at run time.
pub async fn assert_refused(client: &mut Client, key: &str, url: &str, reason: &str) {
    assert_refused_at_execute(client, &format!("{key}-literal"), url, reason).await;
    assert_refused_at_run_time(client, &format!("{key}-templated"), &templated(url), reason).await;
}
