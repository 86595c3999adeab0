//! Resuming pipelines on the next executor over the same database (DESIGN §5.1), from
//! the state a stop in the middle leaves (nodes RUNNING, execution RUNNING): an attempt
//! cut short uses no try of its node's retry policy, and a node failure committed just
//! before the stop still fails the execution, with the failure's own `retryable`.

mod common;
mod pipeline_support;

use almanac_executor::model::{NodeStatus as StoredNodeStatus, Transition};
use almanac_proto::executor::v1::{ExecutionStatus, NodeStatus, WatchExecutionRequest};
use common::*;
use pipeline_support::*;
use serde_json::json;

/// Runs pipeline `id` under `key` on a fresh executor, waits until `path` has received
/// `hits` requests, and stops the executor with the last one in flight. Returns the
/// execution id.
async fn stop_in_flight(
    db: &std::path::Path,
    target: &Scripted,
    (key, id): (&str, &str),
    (path, hits): (&str, usize),
) -> String {
    let executor = Executor::start(db).await;
    let mut client = executor.client().await;
    let mut stream = client
        .execute(run_request(key, id, json!({})))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await.unwrap();
    let execution = execution_id(std::slice::from_ref(&first));
    target.wait_for(path, hits).await;
    executor.stop().await;
    execution
}

async fn watch_to_end(
    executor: &Executor,
    id: &str,
) -> Vec<almanac_proto::executor::v1::ExecutionEvent> {
    let stream = executor
        .client()
        .await
        .watch_execution(WatchExecutionRequest {
            execution_id: id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    collect(stream).await
}

#[tokio::test]
async fn an_attempt_cut_by_a_stop_uses_no_try_of_the_retry_policy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let target = Scripted::start().await;
    // Try 1 fails (503); try 2 is in flight when the executor stops; after the restart
    // the node still has its second try, which succeeds.
    target.script(
        "/flaky",
        vec![
            Reply::status(503),
            Reply::status(200).after(60_000),
            Reply::status(200),
        ],
    );
    let setup = Executor::start(&db).await;
    create(
        &setup,
        pipeline(
            "two-tries",
            vec![
                trigger("start"),
                retrying(api("flaky", &target.url("/flaky")), 2),
            ],
            vec![edge("start", "flaky")],
        ),
    )
    .await;
    setup.stop().await;

    let id = stop_in_flight(&db, &target, ("two-tries-1", "two-tries"), ("/flaky", 2)).await;

    let executor = Executor::start(&db).await;
    let events = watch_to_end(&executor, &id).await;
    let finish = finished(&events);
    assert_eq!(
        finish.status,
        ExecutionStatus::Succeeded as i32,
        "{finish:?}"
    );
    let e = execution(&executor, "two-tries-1").await;
    assert_eq!(
        row_statuses(&e, "flaky"),
        [
            NodeStatus::Failed,
            NodeStatus::Cancelled,
            NodeStatus::Succeeded
        ]
    );
    let hits = target.hits_on("/flaky");
    assert_eq!(hits.len(), 3);
    assert!(
        hits.iter()
            .all(|h| h.header("idempotency-key") == Some("two-tries-1/flaky")),
        "{hits:?}"
    );
    executor.stop().await;
}

#[tokio::test]
async fn a_failure_committed_before_a_stop_fails_the_execution_with_its_own_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let target = Scripted::start().await;
    let setup = Executor::start(&db).await;
    create(
        &setup,
        pipeline(
            "committed",
            vec![
                trigger("start"),
                api("bad", &target.url("/hold/never")),
                api("next", &target.url("/next")),
            ],
            vec![edge("start", "bad"), edge("bad", "next")],
        ),
    )
    .await;
    setup.stop().await;
    let id = stop_in_flight(
        &db,
        &target,
        ("committed-1", "committed"),
        ("/hold/never", 1),
    )
    .await;

    // The process wrote the node's final, permanent failure and died before it could
    // finish the execution.
    let store = open_store(&db).await;
    store
        .append(
            &id,
            chrono::Utc::now().timestamp_millis(),
            Transition::NodeFailed {
                node_id: "bad".into(),
                attempt: 1,
                status: StoredNodeStatus::Failed,
                error: "HTTP 400 Bad Request".into(),
                retryable: false,
            },
        )
        .await
        .unwrap();
    store.close().await;

    let executor = Executor::start(&db).await;
    let events = watch_to_end(&executor, &id).await;
    let finish = finished(&events);
    assert_eq!(finish.status, ExecutionStatus::Failed as i32, "{finish:?}");
    assert!(
        finish.error.starts_with("node bad failed") && finish.error.contains("400"),
        "{}",
        finish.error
    );
    assert!(
        !finish.retryable,
        "a permanent failure stays permanent across a restart"
    );
    let e = execution(&executor, "committed-1").await;
    assert_eq!(row_statuses(&e, "bad"), [NodeStatus::Failed]);
    assert_eq!(row_statuses(&e, "next"), [NodeStatus::Cancelled]);
    assert!(target.hits_on("/next").is_empty());
    assert_eq!(
        target.hits_on("/hold/never").len(),
        1,
        "bad never ran again"
    );
    executor.stop().await;
}
