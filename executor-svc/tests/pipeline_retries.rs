//! Node retries and circuit breakers through the real API (DESIGN §5.3): transient
//! failures are tried again under ONE Idempotency-Key, a permanent one and a
//! configuration error (a template that cannot render, a condition that is not a bool)
//! fail at once, an attempt over its node timeout is retried; a breaker opens after N
//! failed executions of its node, fails fast without calling the target, half-opens after
//! its cool-down, closes on a success, and keeps its state across an executor restart.

mod common;
mod pipeline_support;

use std::time::Duration;

use almanac_proto::executor::v1::{EdgeWhen, ExecutionStatus, NodeStatus};
use common::*;
use pipeline_support::*;
use serde_json::json;

#[tokio::test]
async fn two_503s_then_a_200_succeed_at_attempt_3_under_one_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    target.script(
        "/flaky",
        vec![Reply::status(503), Reply::status(503), Reply::status(200)],
    );
    create(
        &executor,
        pipeline(
            "flaky",
            vec![
                trigger("start"),
                retrying(api("flaky", &target.url("/flaky")), 5),
            ],
            vec![edge("start", "flaky")],
        ),
    )
    .await;

    let events = run(&executor, "flaky-1", "flaky", json!({})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(nodes_of(&events, "NodeRetrying"), ["flaky", "flaky"]);
    let e = execution(&executor, "flaky-1").await;
    assert_eq!(
        row_statuses(&e, "flaky"),
        [
            NodeStatus::Failed,
            NodeStatus::Failed,
            NodeStatus::Succeeded
        ]
    );
    assert_eq!(rows(&e, "flaky")[2].attempt, 3);
    assert!(rows(&e, "flaky")[0].retryable);
    let keys: Vec<Option<String>> = target
        .hits_on("/flaky")
        .iter()
        .map(|h| h.header("idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys, vec![Some("flaky-1/flaky".to_owned()); 3]);
}

#[tokio::test]
async fn a_400_fails_at_attempt_1_without_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    target.script("/bad", vec![Reply::status(400)]);
    create(
        &executor,
        pipeline(
            "bad",
            vec![
                trigger("start"),
                retrying(api("bad", &target.url("/bad")), 5),
            ],
            vec![edge("start", "bad")],
        ),
    )
    .await;

    let events = run(&executor, "bad-1", "bad", json!({})).await;
    let finish = finished(&events);
    assert_eq!(finish.status, ExecutionStatus::Failed as i32);
    assert!(
        finish.error.starts_with("node bad failed"),
        "{}",
        finish.error
    );
    assert!(nodes_of(&events, "NodeRetrying").is_empty());
    let e = execution(&executor, "bad-1").await;
    assert_eq!(row_statuses(&e, "bad"), [NodeStatus::Failed]);
    assert!(!rows(&e, "bad")[0].retryable);
    assert_eq!(target.hits_on("/bad").len(), 1);
}

#[tokio::test]
async fn configuration_errors_fail_at_once_and_are_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    // `render` refers to a node that is not its ancestor: strict mode fails the render.
    create(
        &executor,
        pipeline(
            "unrenderable",
            vec![
                trigger("start"),
                parallel("before"),
                retrying(
                    api(
                        "render",
                        &format!("{}/r/{{{{ nodes.missing.output }}}}", target.base),
                    ),
                    5,
                ),
            ],
            vec![edge("start", "before"), edge("before", "render")],
        ),
    )
    .await;
    let events = run(&executor, "render-1", "unrenderable", json!({})).await;
    let finish = finished(&events);
    assert_eq!(finish.status, ExecutionStatus::Failed as i32);
    assert!(
        finish.error.contains("node render failed"),
        "{}",
        finish.error
    );
    assert!(nodes_of(&events, "NodeRetrying").is_empty());
    let e = execution(&executor, "render-1").await;
    assert_eq!(row_statuses(&e, "render"), [NodeStatus::Failed]);
    let error = &rows(&e, "render")[0].error;
    assert!(error.contains("template"), "{error}");
    assert!(!rows(&e, "render")[0].retryable);
    assert!(target.hits().is_empty(), "nothing was sent");

    // A condition whose value is not a bool, under a retrying default policy.
    let mut p = pipeline(
        "not-a-bool",
        vec![
            trigger("start"),
            condition("check", "input.label"),
            api("then", &target.url("/then")),
        ],
        vec![
            edge("start", "check"),
            edge_when("check", "then", EdgeWhen::True),
        ],
    );
    p.default_retry = Some(fast_retry(5));
    create(&executor, p).await;
    let events = run(&executor, "bool-1", "not-a-bool", json!({"label": "yes"})).await;
    let finish = finished(&events);
    assert_eq!(finish.status, ExecutionStatus::Failed as i32);
    assert!(finish.error.contains("not a bool"), "{}", finish.error);
    assert!(nodes_of(&events, "NodeRetrying").is_empty());
    let e = execution(&executor, "bool-1").await;
    assert_eq!(row_statuses(&e, "check"), [NodeStatus::Failed]);
    assert_eq!(row_statuses(&e, "then"), [NodeStatus::Cancelled]);
    assert!(target.hits().is_empty());
}

#[tokio::test]
async fn an_attempt_over_its_node_timeout_fails_retryably_and_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    // The first answer takes 5 s; the node allows 300 ms per attempt.
    target.script(
        "/sluggish",
        vec![Reply::status(200).after(5_000), Reply::status(200)],
    );
    create(
        &executor,
        pipeline(
            "sluggish",
            vec![
                trigger("start"),
                timed(retrying(api("sluggish", &target.url("/sluggish")), 3), 300),
            ],
            vec![edge("start", "sluggish")],
        ),
    )
    .await;

    let events = run(&executor, "sluggish-1", "sluggish", json!({})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(nodes_of(&events, "NodeRetrying"), ["sluggish"]);
    let e = execution(&executor, "sluggish-1").await;
    assert_eq!(
        row_statuses(&e, "sluggish"),
        [NodeStatus::Failed, NodeStatus::Succeeded]
    );
    let first = rows(&e, "sluggish")[0];
    assert!(first.retryable);
    assert!(first.error.contains("node's timeout"), "{}", first.error);
    let hits = target.hits_on("/sluggish");
    assert_eq!(hits.len(), 2);
    assert_eq!(
        hits[0].header("idempotency-key"),
        hits[1].header("idempotency-key")
    );
}

/// Runs the breaker pipeline once under `key`: its status and error.
async fn attempt(executor: &Executor, key: &str) -> (ExecutionStatus, String) {
    let events = run(executor, key, "guarded", json!({})).await;
    let finish = finished(&events);
    (
        ExecutionStatus::try_from(finish.status).unwrap(),
        finish.error,
    )
}

#[tokio::test]
async fn a_circuit_breaker_opens_fails_fast_half_opens_and_closes_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let target = Scripted::start().await;
    let mut executor = Executor::start(&db).await;
    const COOL_DOWN_MS: u64 = 1_000;
    target.script("/down", vec![Reply::status(500)]);
    // Two tries per execution while closed; the breaker counts failed executions.
    create(
        &executor,
        pipeline(
            "guarded",
            vec![
                trigger("start"),
                breaker(
                    retrying(api("call", &target.url("/down")), 2),
                    2,
                    COOL_DOWN_MS as i64,
                ),
            ],
            vec![edge("start", "call")],
        ),
    )
    .await;
    let hits = || target.hits_on("/down").len();

    // Two failed executions reach the threshold; each called the target (twice).
    for (n, key) in ["b1", "b2"].into_iter().enumerate() {
        let (status, error) = attempt(&executor, key).await;
        assert_eq!(status, ExecutionStatus::Failed);
        assert!(error.contains("500"), "{error}");
        assert_eq!(hits(), 2 * (n + 1));
    }

    // Open, and still open after a restart on the same database: fail fast.
    executor.stop().await;
    executor = Executor::start(&db).await;
    let (status, error) = attempt(&executor, "b3").await;
    assert_eq!(status, ExecutionStatus::Failed);
    assert!(error.contains("circuit breaker open"), "{error}");
    assert_eq!(hits(), 4, "an open breaker does not call the target");
    let e = execution(&executor, "b3").await;
    assert_eq!(row_statuses(&e, "call"), [NodeStatus::Failed]);

    // The cool-down must pass in real time (the breaker reads the executor's clock).
    tokio::time::sleep(Duration::from_millis(COOL_DOWN_MS + 200)).await;
    // Half-open: ONE attempt goes through (no retry); its failure opens it again.
    let (status, error) = attempt(&executor, "b4").await;
    assert_eq!(status, ExecutionStatus::Failed);
    assert!(error.contains("500"), "{error}");
    assert_eq!(hits(), 5, "the half-open trial is one attempt");
    let (_, error) = attempt(&executor, "b5").await;
    assert!(error.contains("circuit breaker open"), "{error}");
    assert_eq!(hits(), 5);

    // Half-open again after a restart and the cool-down; a success closes it.
    executor.stop().await;
    executor = Executor::start(&db).await;
    target.script("/down", vec![Reply::status(200)]);
    tokio::time::sleep(Duration::from_millis(COOL_DOWN_MS + 200)).await;
    let (status, error) = attempt(&executor, "b6").await;
    assert_eq!(status, ExecutionStatus::Succeeded, "{error}");
    assert_eq!(hits(), 6);

    // Closed: retries again, and the count starts over, so one failed execution does
    // not open it; the second does.
    target.script("/down", vec![Reply::status(500)]);
    for (n, key) in ["b7", "b8"].into_iter().enumerate() {
        let (status, error) = attempt(&executor, key).await;
        assert_eq!(status, ExecutionStatus::Failed);
        assert!(error.contains("500"), "{key}: {error}");
        assert_eq!(hits(), 6 + 2 * (n + 1));
    }
    let (_, error) = attempt(&executor, "b9").await;
    assert!(error.contains("circuit breaker open"), "{error}");
    assert_eq!(hits(), 10);
    executor.stop().await;
}
