//! Executions on every backend: creation under a unique key (concurrent creates of one
//! key: one wins), dense seqs (also under concurrent appends), the row updates each
//! transition implies, cancellation, listing and its pages, millisecond times,
//! reopening, and retention.

use almanac_proto::executor::v1::call_api_action::Body;
use almanac_proto::executor::v1::{Action, CallApiAction, Origin, action::Kind};
use serde_json::json;

use crate::error::ExecutorError;
use crate::model::{
    CancelMode, EventKind, ExecutionRecord, ExecutionStatus, FirstNode, ListQuery, NewExecution,
    NodeStatus, Transition,
};

pub(super) fn new_execution(id: &str, key: &str, schedule: Option<&str>) -> NewExecution {
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
        owner: "replica-a".into(),
        lease_until_ms: 60_000,
        first_node: None,
    }
}

pub(super) fn started(attempt: u32) -> Transition {
    Transition::NodeStarted {
        node_id: "action".into(),
        kind: "call_api".into(),
        attempt,
        input: json!({"callApi": {}}),
    }
}

conformance! {
async fn a_new_execution_is_running_with_execution_started_as_seq_1(h) {
    let store = h.open().await;
    let new = new_execution("e1", "k1", Some("nightly"));
    let created = store.create_execution(&new).await.unwrap();
    let record = store.get_execution("e1").await.unwrap().expect("stored");
    assert_eq!(created, record, "create returns what is stored");
    assert_eq!(record.status, ExecutionStatus::Running);
    assert_eq!(record.last_seq, 1);
    assert_eq!(
        record.action, new.action,
        "a JSON null body survives storage"
    );
    assert_eq!(record.origin, new.origin);
    assert_eq!(record.owner.as_deref(), Some(new.owner.as_str()));
    assert_eq!(record.lease_epoch, 1);
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

async fn a_first_node_begun_with_its_execution_is_stored_with_it_as_seq_2(h) {
    let store = h.open().await;
    let mut new = new_execution("e1", "k1", None);
    new.first_node = Some(FirstNode {
        node_id: "action".into(),
        kind: "call_api".into(),
        input: json!({"callApi": {"url": "http://127.0.0.1:1/x"}}),
    });
    let created = store.create_execution(&new).await.unwrap();
    let record = store.get_execution("e1").await.unwrap().expect("stored");
    assert_eq!(created, record, "create returns what is stored");
    assert_eq!(record.last_seq, 2);
    let events = store.events_after("e1", 0, 10).await.unwrap();
    assert_eq!(events, new.events(), "both events, as the new execution says");
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        events[1].kind,
        EventKind::NodeStarted {
            node_id: "action".into(),
            attempt: 1
        }
    );
    let runs = store.node_runs("e1").await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, NodeStatus::Running);
    assert_eq!(runs[0].attempt, 1);
    assert_eq!(runs[0].started_ms, Some(1_000));
    assert_eq!(
        runs[0].input,
        Some(json!({"callApi": {"url": "http://127.0.0.1:1/x"}}))
    );
    // The next append follows on.
    let next = store
        .append(
            "e1",
            2_000,
            Transition::NodeSucceeded {
                node_id: "action".into(),
                attempt: 1,
                output: json!(1),
                duration_ms: 1_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(next.seq, 3);
}

async fn a_taken_key_is_already_exists_and_changes_nothing(h) {
    let store = h.open().await;
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

async fn transitions_append_dense_seqs_and_update_rows_and_nothing_follows_the_finish(h) {
    let store = h.open().await;
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

async fn finishing_closes_attempts_left_running(h) {
    let store = h.open().await;
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

async fn cancel_requests_keep_the_stronger_mode_and_the_first_reason(h) {
    let store = h.open().await;
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

async fn listing_is_newest_first_with_filters_and_survives_reopening(h) {
    {
        let store = h.open().await;
        for (id, schedule) in [("a", Some("s1")), ("b", None), ("c", Some("s1"))] {
            store
                .create_execution(&new_execution(id, &format!("k-{id}"), schedule))
                .await
                .unwrap();
        }
        store.close().await;
    }
    let store = h.open().await;
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

async fn retention_deletes_only_finished_executions_older_than_the_cut(h) {
    let store = h.open().await;
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

async fn concurrent_creates_of_one_key_have_one_winner(h) {
    let store = h.open().await;
    let creates = (0..12).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_execution(&new_execution(&format!("e{i:02}"), "shared", None))
                .await
        })
    });
    let results: Vec<_> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let winners: Vec<&ExecutionRecord> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for result in &results {
        if let Err(err) = result {
            assert!(matches!(err, ExecutorError::AlreadyExists(_)), "{err:?}");
        }
    }
    let stored = store.find_by_key("shared").await.unwrap().unwrap();
    assert_eq!(stored.id, winners[0].id);
    let all = ListQuery {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.list_executions(&all).await.unwrap().len(), 1);
}

async fn concurrent_appends_to_one_execution_keep_seqs_dense(h) {
    let store = h.open().await;
    store
        .create_execution(&new_execution("e1", "k1", None))
        .await
        .unwrap();
    let appends = (0..30).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let progress = Transition::Progress {
                node_id: "action".into(),
                percent: f64::from(i),
                message: format!("step {i}"),
            };
            store.append("e1", 2_000 + i64::from(i), progress).await.unwrap().seq
        })
    });
    let mut seqs: Vec<u64> = futures::future::join_all(appends)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=31).collect::<Vec<u64>>(), "each seq once, no gap");
    let stored: Vec<u64> = store
        .events_after("e1", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(stored, (1..=31).collect::<Vec<u64>>());
    assert_eq!(store.get_execution("e1").await.unwrap().unwrap().last_seq, 31);
}

async fn an_append_to_an_unknown_execution_is_not_found(h) {
    let store = h.open().await;
    let err = store.append("nope", 1, started(1)).await.unwrap_err();
    assert!(matches!(err, ExecutorError::NotFound(_)), "{err:?}");
}

async fn events_page_by_seq_and_times_keep_their_milliseconds(h) {
    let store = h.open().await;
    // 2023-11-14T22:13:20.123Z, and a time far beyond 2038.
    let mut new = new_execution("e1", "k1", None);
    new.created_ms = 1_700_000_000_123;
    new.deadline_ms = Some(32_503_680_000_999);
    let record = store.create_execution(&new).await.unwrap();
    assert_eq!(record.created_ms, 1_700_000_000_123);
    assert_eq!(record.started_ms, Some(1_700_000_000_123));
    assert_eq!(record.deadline_ms, Some(32_503_680_000_999));
    for i in 0..5 {
        store
            .append("e1", 1_700_000_000_124 + i, started(u32::try_from(i).unwrap() + 1))
            .await
            .unwrap();
    }
    let page = store.events_after("e1", 2, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(page[0].at_ms, 1_700_000_000_125);
    let nodes = store.node_runs("e1").await.unwrap();
    assert_eq!(nodes.iter().map(|n| n.attempt).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(nodes[4].started_ms, Some(1_700_000_000_128));
    assert!(store.events_after("e1", 6, 10).await.unwrap().is_empty());
}

async fn failed_and_skipped_nodes_keep_their_error_and_retryable(h) {
    let store = h.open().await;
    store
        .create_execution(&new_execution("e1", "k1", None))
        .await
        .unwrap();
    store.append("e1", 2_000, started(1)).await.unwrap();
    store
        .append(
            "e1",
            2_100,
            Transition::NodeFailed {
                node_id: "action".into(),
                attempt: 1,
                status: NodeStatus::Failed,
                error: "HTTP 503 Service Unavailable".into(),
                retryable: true,
            },
        )
        .await
        .unwrap();
    store
        .append(
            "e1",
            2_200,
            Transition::NodeSkipped {
                node_id: "later".into(),
                kind: "call_api".into(),
                status: NodeStatus::Skipped,
                reason: "no incoming edge taken".into(),
            },
        )
        .await
        .unwrap();
    let nodes = store.node_runs("e1").await.unwrap();
    assert_eq!(nodes.len(), 2);
    let failed = &nodes[0];
    assert_eq!(
        (failed.status, failed.error.as_str(), failed.retryable),
        (NodeStatus::Failed, "HTTP 503 Service Unavailable", true)
    );
    let skipped = &nodes[1];
    assert_eq!(
        (skipped.node_id.as_str(), skipped.status, skipped.attempt),
        ("later", NodeStatus::Skipped, 0)
    );
    assert_eq!(
        (skipped.started_ms, skipped.finished_ms),
        (Some(2_200), Some(2_200))
    );
    assert_eq!(skipped.error, "no incoming edge taken");
}
}
