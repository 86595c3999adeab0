//! The SQLite store's behaviour on a real file: creation under a unique key, dense seqs,
//! the row updates each transition implies, cancellation, listing, and reopening.

use almanac_proto::executor::v1::call_api_action::Body;
use almanac_proto::executor::v1::{Action, CallApiAction, Origin, action::Kind};
use serde_json::json;

use super::*;

fn new_execution(id: &str, key: &str, schedule: Option<&str>) -> NewExecution {
    NewExecution {
        id: id.into(),
        idempotency_key: key.into(),
        fingerprint: "f".repeat(64),
        action: Action {
            kind: Some(Kind::CallApi(CallApiAction {
                url: "http://127.0.0.1:1/x".into(),
                body: Some(Body::JsonBody(pbjson_types::Value {
                    kind: Some(pbjson_types::value::Kind::NullValue(0)),
                })),
                ..Default::default()
            })),
        },
        origin: schedule.map(|s| Origin {
            schedule_id: s.into(),
            run_id: "r".into(),
            ..Default::default()
        }),
        deadline_ms: Some(9_000),
        created_ms: 1_000,
        pipeline: None,
    }
}

async fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("nested/executor.db"))
        .await
        .unwrap();
    (dir, store)
}

fn started(attempt: u32) -> Transition {
    Transition::NodeStarted {
        node_id: "action".into(),
        kind: "call_api".into(),
        attempt,
        input: json!({"callApi": {}}),
    }
}

#[tokio::test]
async fn a_new_execution_is_running_with_execution_started_as_seq_1() {
    let (_dir, store) = open().await;
    let new = new_execution("e1", "k1", Some("nightly"));
    let record = store.create_execution(&new).await.unwrap();
    assert_eq!(record.status, ExecutionStatus::Running);
    assert_eq!(record.last_seq, 1);
    assert_eq!(
        record.action, new.action,
        "a JSON null body survives storage"
    );
    assert_eq!(record.origin, new.origin);
    let events = store.events_after("e1", 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].kind,
        EventKind::ExecutionStarted {
            execution_id: "e1".into(),
            idempotency_key: "k1".into()
        }
    );
}

#[tokio::test]
async fn a_taken_key_is_already_exists_and_changes_nothing() {
    let (_dir, store) = open().await;
    store
        .create_execution(&new_execution("e1", "k1", None))
        .await
        .unwrap();
    let err = store
        .create_execution(&new_execution("e2", "k1", None))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecutorError::AlreadyExists(_)), "{err:?}");
    assert!(store.get_execution("e2").await.unwrap().is_none());
    assert_eq!(store.find_by_key("k1").await.unwrap().unwrap().id, "e1");
}

#[tokio::test]
async fn transitions_append_dense_seqs_and_update_rows_and_nothing_follows_the_finish() {
    let (_dir, store) = open().await;
    store
        .create_execution(&new_execution("e1", "k1", None))
        .await
        .unwrap();
    let e2 = store.append("e1", 2_000, started(1)).await.unwrap();
    let output = json!({"status": 200});
    let e3 = store
        .append(
            "e1",
            2_500,
            Transition::NodeSucceeded {
                node_id: "action".into(),
                attempt: 1,
                output: output.clone(),
                duration_ms: 500,
            },
        )
        .await
        .unwrap();
    let finish = Transition::ExecutionFinished {
        status: ExecutionStatus::Succeeded,
        result: Some(output.clone()),
        error: String::new(),
        retryable: false,
    };
    let e4 = store.append("e1", 3_000, finish.clone()).await.unwrap();
    assert_eq!([e2.seq, e3.seq, e4.seq], [2, 3, 4]);

    let again = store.append("e1", 3_100, finish).await.unwrap_err();
    assert!(
        matches!(again, ExecutorError::AlreadyFinished(_)),
        "{again:?}"
    );

    let record = store.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(record.status, ExecutionStatus::Succeeded);
    assert_eq!(record.result, Some(output.clone()));
    assert_eq!(record.finished_ms, Some(3_000));
    assert_eq!(record.last_seq, 4);
    let nodes = store.node_runs("e1").await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].status, NodeStatus::Succeeded);
    assert_eq!(nodes[0].output, Some(output));
    assert_eq!(
        (nodes[0].started_ms, nodes[0].finished_ms),
        (Some(2_000), Some(2_500))
    );
    let seqs: Vec<u64> = store
        .events_after("e1", 1, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
}

#[tokio::test]
async fn finishing_closes_attempts_left_running() {
    let (_dir, store) = open().await;
    store
        .create_execution(&new_execution("e1", "k1", None))
        .await
        .unwrap();
    store.append("e1", 2_000, started(1)).await.unwrap();
    store
        .append(
            "e1",
            3_000,
            Transition::ExecutionFinished {
                status: ExecutionStatus::Cancelled,
                result: None,
                error: "cancelled".into(),
                retryable: false,
            },
        )
        .await
        .unwrap();
    let nodes = store.node_runs("e1").await.unwrap();
    assert_eq!(nodes[0].status, NodeStatus::Cancelled);
    assert_eq!(nodes[0].finished_ms, Some(3_000));
}

#[tokio::test]
async fn cancel_requests_keep_the_stronger_mode_and_the_first_reason() {
    let (_dir, store) = open().await;
    store
        .create_execution(&new_execution("e1", "k1", None))
        .await
        .unwrap();
    let r = store
        .request_cancel("e1", CancelMode::Terminate, "first")
        .await
        .unwrap();
    assert_eq!(r.cancel_requested, Some(CancelMode::Terminate));
    let r = store
        .request_cancel("e1", CancelMode::Graceful, "second")
        .await
        .unwrap();
    assert_eq!(r.cancel_requested, Some(CancelMode::Terminate));
    assert_eq!(r.cancel_reason, "first");
    let missing = store
        .request_cancel("nope", CancelMode::Graceful, "")
        .await
        .unwrap_err();
    assert!(matches!(missing, ExecutorError::NotFound(_)));
}

#[tokio::test]
async fn listing_is_newest_first_with_filters_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("executor.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        for (id, schedule) in [("a", Some("s1")), ("b", None), ("c", Some("s1"))] {
            store
                .create_execution(&new_execution(id, &format!("k-{id}"), schedule))
                .await
                .unwrap();
        }
        store.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let ids = |records: Vec<ExecutionRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = ListQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_executions(&all).await.unwrap()),
        ["c", "b", "a"]
    );
    let page = ListQuery {
        before_id: Some("c".into()),
        limit: 1,
        ..Default::default()
    };
    assert_eq!(ids(store.list_executions(&page).await.unwrap()), ["b"]);
    let scheduled = ListQuery {
        schedule_id: Some("s1".into()),
        status: Some(ExecutionStatus::Running),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_executions(&scheduled).await.unwrap()),
        ["c", "a"]
    );
    assert_eq!(ids(store.list_unfinished().await.unwrap()), ["a", "b", "c"]);
}

#[tokio::test]
async fn retention_deletes_only_finished_executions_older_than_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("e.db")).await.unwrap();
    for (id, key) in [("e1", "k1"), ("e2", "k2"), ("e3", "k3")] {
        store
            .create_execution(&new_execution(id, key, None))
            .await
            .unwrap();
    }
    let finish = |status| Transition::ExecutionFinished {
        status,
        result: None,
        error: String::new(),
        retryable: false,
    };
    store
        .append("e1", 2_000, finish(ExecutionStatus::Succeeded))
        .await
        .unwrap();
    store
        .append("e2", 9_000, finish(ExecutionStatus::Failed))
        .await
        .unwrap();
    // e3 is still running.
    assert_eq!(store.prune_finished(5_000, 10).await.unwrap(), 1);
    assert!(store.get_execution("e1").await.unwrap().is_none());
    assert!(store.events_after("e1", 0, 10).await.unwrap().is_empty());
    assert!(
        store.get_execution("e2").await.unwrap().is_some(),
        "finished after the cut"
    );
    assert_eq!(store.prune_finished(i64::MAX, 10).await.unwrap(), 1);
    assert!(
        store.get_execution("e3").await.unwrap().is_some(),
        "never one still running"
    );
}
