//! Time in pipelines through the real API (DESIGN §5.1, §5.3): a delay's deadline is
//! stored, so an executor restart in the middle of it ends the delay at the original
//! deadline; a whole-pipeline `timeout` ends the execution TIMED_OUT; CancelExecution
//! GRACEFUL lets the running node finish and starts nothing new, TERMINATE cuts it.

mod common;
mod pipeline_support;

use std::time::{Duration, Instant};

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    CancelExecutionRequest, CancelMode, ExecutionStatus, NodeStatus, WatchExecutionRequest,
};
use almanac_proto::time::timestamp_to_ms;
use common::*;
use pipeline_support::*;
use serde_json::json;

const DELAY_MS: i64 = 4_000;
/// How long the executor stays down in the middle of the delay.
const DOWN_MS: u64 = 2_000;

#[tokio::test]
async fn a_delay_ends_at_its_original_deadline_after_an_executor_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let target = Scripted::start().await;
    let executor = Executor::start(&db).await;
    create(
        &executor,
        pipeline(
            "later",
            vec![
                trigger("start"),
                delay("wait", DELAY_MS),
                api("after", &target.url("/after")),
            ],
            vec![edge("start", "wait"), edge("wait", "after")],
        ),
    )
    .await;

    let mut client = executor.client().await;
    let mut stream = client
        .execute(run_request("later-1", "later", json!({})))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let wait_started_ms = loop {
        let event = next_event(&mut stream).await.expect("the delay starts");
        seen.push(event.clone());
        if let Some(EventKind::NodeStarted(n)) = &event.kind
            && n.node_id == "wait"
        {
            break timestamp_to_ms(event.time.as_ref().unwrap());
        }
        assert!(seen.len() < 100, "no NodeStarted for wait in {seen:?}");
    };
    let id = execution_id(&seen);
    executor.stop().await;
    // The executor must stay down across part of the delay: a delay restarted from zero
    // at the next start would then end at least DOWN_MS after the original deadline.
    tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;

    let executor = Executor::start(&db).await;
    let events = collect(
        executor
            .client()
            .await
            .watch_execution(WatchExecutionRequest {
                execution_id: id,
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    let e = execution(&executor, "later-1").await;
    assert_eq!(
        row_statuses(&e, "wait"),
        [NodeStatus::Cancelled, NodeStatus::Succeeded],
        "the interrupted attempt is closed, the next one waits out the rest"
    );
    let output = json(rows(&e, "wait")[1].output.as_ref().unwrap());
    let deadline = chrono::DateTime::parse_from_rfc3339(output["until"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert!(
        (deadline - (wait_started_ms + DELAY_MS)).abs() < 500,
        "the deadline {deadline} is the first attempt's start {wait_started_ms} plus the delay"
    );
    let ended = succeeded_at(&events, "wait");
    assert!(
        ended >= deadline,
        "ended {ended} before the deadline {deadline}"
    );
    assert!(
        ended < deadline + 1_500,
        "ended {} ms after the deadline: the delay started over",
        ended - deadline
    );
    assert_eq!(target.hits_on("/after").len(), 1);
    executor.stop().await;
}

#[tokio::test]
async fn a_pipeline_past_its_timeout_ends_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    target.script("/slow", vec![Reply::status(200).after(10_000)]);
    let mut p = pipeline(
        "bounded",
        vec![
            trigger("start"),
            api("slow", &target.url("/slow")),
            api("after", &target.url("/after")),
        ],
        vec![edge("start", "slow"), edge("slow", "after")],
    );
    p.timeout = Some(almanac_proto::time::ms_to_duration(500));
    create(&executor, p).await;

    let started = Instant::now();
    let events = run(&executor, "bounded-1", "bounded", json!({})).await;
    assert!(started.elapsed() < Duration::from_secs(8), "not waited out");
    let finish = finished(&events);
    assert_eq!(
        finish.status,
        ExecutionStatus::TimedOut as i32,
        "{finish:?}"
    );
    let e = execution(&executor, "bounded-1").await;
    assert_eq!(row_statuses(&e, "slow"), [NodeStatus::TimedOut]);
    assert_eq!(row_statuses(&e, "after"), [NodeStatus::Cancelled]);
    assert!(target.hits_on("/after").is_empty());
}

/// trigger → a (held at the target until released) → b.
async fn held_pipeline(executor: &Executor, target: &Scripted, id: &str, hold: &str) {
    create(
        executor,
        pipeline(
            id,
            vec![
                trigger("start"),
                api("a", &target.url(&format!("/hold/{hold}"))),
                api("b", &target.url(&format!("/{id}/b"))),
            ],
            vec![edge("start", "a"), edge("a", "b")],
        ),
    )
    .await;
}

async fn cancel(executor: &Executor, key: &str, mode: CancelMode) {
    let id = execution(executor, key).await.id;
    executor
        .client()
        .await
        .cancel_execution(CancelExecutionRequest {
            execution_id: id,
            mode: mode as i32,
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .expect("cancel");
}

#[tokio::test]
async fn a_graceful_cancel_lets_the_running_node_finish_and_starts_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    held_pipeline(&executor, &target, "graceful", "g").await;

    let mut client = executor.client().await;
    let stream = client
        .execute(run_request("graceful-1", "graceful", json!({})))
        .await
        .unwrap()
        .into_inner();
    target.wait_for("/hold/g", 1).await;
    cancel(&executor, "graceful-1", CancelMode::Graceful).await;
    target.release("g");

    let events = collect(stream).await;
    let finish = finished(&events);
    assert_eq!(
        finish.status,
        ExecutionStatus::Cancelled as i32,
        "{finish:?}"
    );
    let e = execution(&executor, "graceful-1").await;
    assert_eq!(row_statuses(&e, "a"), [NodeStatus::Succeeded]);
    assert_eq!(row_statuses(&e, "b"), [NodeStatus::Cancelled]);
    assert_eq!(rows(&e, "b")[0].attempt, 0, "b never started");
    assert!(target.hits_on("/graceful/b").is_empty());
}

#[tokio::test]
async fn a_terminate_cuts_the_running_node_and_cancels_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    held_pipeline(&executor, &target, "terminate", "t").await;

    let mut client = executor.client().await;
    let stream = client
        .execute(run_request("terminate-1", "terminate", json!({})))
        .await
        .unwrap()
        .into_inner();
    target.wait_for("/hold/t", 1).await;
    let asked = Instant::now();
    cancel(&executor, "terminate-1", CancelMode::Terminate).await;

    let events = collect(stream).await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the held call was cut, not waited for"
    );
    let finish = finished(&events);
    assert_eq!(
        finish.status,
        ExecutionStatus::Cancelled as i32,
        "{finish:?}"
    );
    let e = execution(&executor, "terminate-1").await;
    assert_eq!(row_statuses(&e, "a"), [NodeStatus::Cancelled]);
    assert!(
        rows(&e, "a")[0].error.contains("terminated"),
        "{}",
        rows(&e, "a")[0].error
    );
    assert_eq!(row_statuses(&e, "b"), [NodeStatus::Cancelled]);
    assert_eq!(rows(&e, "b")[0].attempt, 0);
    assert!(target.hits_on("/terminate/b").is_empty());
}
