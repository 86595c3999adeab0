//! `call_api` retries inside one execution: transient statuses are tried again with the
//! same `Idempotency-Key` and `NodeRetrying` events between tries, a `Retry-After` is
//! waited for, and a final status fails at once.

mod call_api_target;
mod common;

use std::time::Duration;

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    Action, CallApiAction, ExecutionStatus, RetryPolicy, action::Kind,
};
use almanac_proto::time::ms_to_duration;
use call_api_target::{Api, gap};
use common::*;

/// A call of `url` with a quick retry policy: `tries` tries, 50 ms apart.
fn quick_retries(url: String, tries: u32) -> Action {
    Action {
        kind: Some(Kind::CallApi(CallApiAction {
            url,
            retry: Some(RetryPolicy {
                max_attempts: tries,
                initial_backoff: Some(ms_to_duration(50)),
                max_backoff: Some(ms_to_duration(100)),
                multiplier: 2.0,
            }),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn two_503s_then_200_succeed_on_attempt_3_with_one_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    let events = execute_all(
        &mut client,
        execute_request("flaky-1", quick_retries(api.url("/flaky/2"), 5)),
    )
    .await;
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeFailed",
            "NodeRetrying",
            "NodeStarted",
            "NodeFailed",
            "NodeRetrying",
            "NodeStarted",
            "NodeSucceeded",
            "ExecutionFinished"
        ]
    );
    for event in &events {
        match &event.kind {
            Some(EventKind::NodeFailed(f)) => {
                assert!(f.retryable);
                assert!(f.error.contains("HTTP 503"), "{}", f.error);
                assert!(f.error.contains("try again later"), "{}", f.error);
            }
            Some(EventKind::NodeRetrying(r)) => assert!(r.backoff.is_some()),
            Some(EventKind::NodeSucceeded(s)) => assert_eq!(s.attempt, 3),
            _ => {}
        }
    }
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Succeeded as i32);
    assert_eq!(
        json(done.result.as_ref().unwrap())["body"]["answered_on"],
        3
    );

    let seen = api.seen_on("/flaky/2");
    assert_eq!(seen.len(), 3);
    let keys: Vec<&str> = seen
        .iter()
        .map(|s| s.headers["idempotency-key"].as_str())
        .collect();
    assert_eq!(keys, ["flaky-1", "flaky-1", "flaky-1"]);
    executor.stop().await;
}

#[tokio::test]
async fn a_404_fails_at_once_with_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    let events = execute_all(
        &mut client,
        execute_request("missing", quick_retries(api.url("/status/404"), 5)),
    )
    .await;
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeFailed",
            "ExecutionFinished"
        ]
    );
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(!done.retryable);
    assert_eq!(done.error, "HTTP 404 Not Found: boom 404");
    assert_eq!(api.seen_on("/status/404").len(), 1);
    executor.stop().await;
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    let events = execute_all(
        &mut client,
        execute_request("throttled", quick_retries(api.url("/throttled/x"), 3)),
    )
    .await;
    let done = finished(&events);
    assert_eq!(
        done.status,
        ExecutionStatus::Succeeded as i32,
        "{}",
        done.error
    );
    let waited = events.iter().find_map(|e| match &e.kind {
        Some(EventKind::NodeRetrying(r)) => r
            .backoff
            .as_ref()
            .and_then(almanac_proto::time::duration_to_ms),
        _ => None,
    });
    assert_eq!(
        waited,
        Some(1_000),
        "the backoff is the asked second, not 50 ms"
    );

    let seen = api.seen_on("/throttled/x");
    assert_eq!(seen.len(), 2);
    let between = gap(&seen[0], &seen[1]);
    assert!(
        between >= Duration::from_millis(950),
        "the second request came {between:?} after the first"
    );
    executor.stop().await;
}
