//! Stopping executions: a deadline that passes during a slow call ends it TIMED_OUT, one
//! already past never calls the action, TERMINATE aborts a slow call promptly, GRACEFUL
//! lets it end first, and cancelling a finished execution changes nothing.

mod common;

use std::time::{Duration, Instant};

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    CancelExecutionRequest, CancelMode, ExecutionStatus, GetExecutionRequest, NodeStatus,
};
use almanac_proto::time::ms_to_timestamp;
use common::*;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test]
async fn a_deadline_passing_during_a_slow_call_ends_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let mut request = execute_request("deadline", call(&target.url("/slow/30000")));
    request.deadline = Some(ms_to_timestamp(now_ms() + 1_000));

    let started = Instant::now();
    let events = execute_all(&mut client, request).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
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
    assert_eq!(done.status, ExecutionStatus::TimedOut as i32);
    assert!(done.retryable);
    let execution = client
        .get_execution(GetExecutionRequest {
            idempotency_key: "deadline".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::TimedOut as i32);
    assert_eq!(execution.nodes[0].status, NodeStatus::TimedOut as i32);
    executor.stop().await;
}

#[tokio::test]
async fn a_deadline_already_past_times_out_without_calling_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let mut request = execute_request("too-late", call(&target.url("/ok")));
    request.deadline = Some(ms_to_timestamp(now_ms() - 1_000));

    let events = execute_all(&mut client, request).await;
    assert_eq!(kinds(&events), ["ExecutionStarted", "ExecutionFinished"]);
    assert_eq!(finished(&events).status, ExecutionStatus::TimedOut as i32);
    assert!(target.requests().is_empty());
    executor.stop().await;
}

#[tokio::test]
async fn terminate_during_a_slow_call_cancels_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let mut stream = client
        .execute(execute_request(
            "terminate-me",
            call(&target.url("/slow/30000")),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    let node_started = next_event(&mut stream).await.unwrap();
    assert!(matches!(node_started.kind, Some(EventKind::NodeStarted(_))));
    target.wait_for_requests(1).await;

    let asked = Instant::now();
    let response = client
        .cancel_execution(CancelExecutionRequest {
            execution_id: id.clone(),
            mode: CancelMode::Terminate as i32,
            reason: "operator said stop".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(response.cancel_requested, CancelMode::Terminate as i32);

    let mut rest = vec![first, node_started];
    rest.extend(collect(stream).await);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        kinds(&rest),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeFailed",
            "ExecutionFinished"
        ]
    );
    let done = finished(&rest);
    assert_eq!(done.status, ExecutionStatus::Cancelled as i32);
    assert!(done.error.contains("operator said stop"), "{}", done.error);
    assert!(!done.retryable);

    // Cancelling a finished execution returns it unchanged.
    let again = client
        .cancel_execution(CancelExecutionRequest {
            execution_id: id.clone(),
            mode: CancelMode::Graceful as i32,
            reason: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(again.status, ExecutionStatus::Cancelled as i32);
    assert_eq!(again.last_seq, 4);
    let execution = client
        .get_execution(GetExecutionRequest {
            execution_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(execution.nodes[0].status, NodeStatus::Cancelled as i32);
    executor.stop().await;
}

#[tokio::test]
async fn graceful_cancel_lets_the_call_end_then_ends_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let mut stream = client
        .execute(execute_request("graceful", call(&target.url("/slow/1000"))))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    target.wait_for_requests(1).await;
    client
        .cancel_execution(CancelExecutionRequest {
            execution_id: id,
            mode: CancelMode::Graceful as i32,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();

    let mut events = vec![first];
    events.extend(collect(stream).await);
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeSucceeded",
            "ExecutionFinished"
        ],
        "the call in flight was allowed to end"
    );
    assert_eq!(finished(&events).status, ExecutionStatus::Cancelled as i32);
    executor.stop().await;
}
