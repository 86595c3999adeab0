//! Tasks on every backend: insert-if-absent (also under concurrency), claims (oldest
//! first, each task to one poller even under concurrency), expired leases re-leased up to
//! `max_deliveries`, schedule-to-start, the guards of every change, the start-up sweep,
//! and process group records.

use serde_json::json;

use crate::error::ExecutorError;
use crate::model::{ExecutionStatus, NewExecution, Transition};
use crate::store::ExecutorStore;
use crate::store::tasks::{
    NewTask, ProcessGroupRecord, TaskEnd, TaskGuard, TaskRecord, TaskStatus, TaskUpdate,
};

async fn execution(store: &dyn ExecutorStore, id: &str) {
    store
        .create_execution(&NewExecution {
            id: id.into(),
            idempotency_key: format!("key-{id}"),
            fingerprint: "f".into(),
            action: Default::default(),
            origin: None,
            deadline_ms: None,
            created_ms: 0,
            pipeline: None,
            owner: "replica-a".into(),
            lease_until_ms: 60_000,
            first_node: None,
        })
        .await
        .unwrap();
}

fn task(id: &str, execution_id: &str, queue: &str, created_ms: i64) -> NewTask {
    NewTask {
        id: id.into(),
        execution_id: execution_id.into(),
        node_id: "action".into(),
        try_number: 1,
        queue: queue.into(),
        payload: json!({"agent_id": "a1"}),
        idempotency_key: "k".into(),
        origin: None,
        deadline_ms: None,
        max_deliveries: 2,
        heartbeat_timeout_ms: 100,
        schedule_to_start_ms: None,
        start_to_close_ms: Some(1_000),
        created_ms,
    }
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn applied(update: TaskUpdate) -> TaskRecord {
    match update {
        TaskUpdate::Applied(task) => task,
        other => panic!("not applied: {other:?}"),
    }
}

conformance! {
async fn insert_is_if_absent_and_returns_the_stored_task(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    let (first, inserted) = store.insert_task(&task("t", "e", "q", 5)).await.unwrap();
    assert!(inserted);
    assert_eq!(first.status, TaskStatus::Queued);
    assert_eq!(first.spec.payload, json!({"agent_id": "a1"}));
    let mut again = task("t", "e", "other", 9);
    again.payload = json!({});
    let (second, inserted) = store.insert_task(&again).await.unwrap();
    assert!(!inserted);
    assert_eq!(second, first, "the stored task wins");
}

async fn claims_lease_the_oldest_available_task_of_the_polled_queues(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    for (id, queue, at) in [("new", "a", 20), ("old", "a", 10), ("elsewhere", "b", 0)] {
        store.insert_task(&task(id, "e", queue, at)).await.unwrap();
    }
    let q = queues(&["a", "c"]);
    assert_eq!(store.next_available_ms(&q, 50).await.unwrap(), Some(10));
    let first = store.claim_task(&q, "w1", "L1", 50).await.unwrap().unwrap();
    assert_eq!(first.spec.id, "old");
    assert_eq!(
        (first.status, first.deliveries, first.lease_id.as_deref()),
        (TaskStatus::Leased, 1, Some("L1"))
    );
    assert_eq!(first.worker_id.as_deref(), Some("w1"));
    assert_eq!(
        (
            first.lease_expires_ms,
            first.started_ms,
            first.close_deadline_ms
        ),
        (Some(150), Some(50), Some(1_050))
    );
    let second = store.claim_task(&q, "w2", "L2", 50).await.unwrap().unwrap();
    assert_eq!(second.spec.id, "new");
    assert!(
        store
            .claim_task(&q, "w3", "L3", 50)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.next_available_ms(&q, 50).await.unwrap(),
        Some(150),
        "the next chance is the first lease's expiry"
    );
}

async fn concurrent_claims_never_lease_one_task_twice(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    for i in 0..20 {
        store
            .insert_task(&task(&format!("t{i:02}"), "e", "q", i))
            .await
            .unwrap();
    }
    let q = queues(&["q"]);
    let claims = (0..40).map(|i| {
        let (store, q) = (store.clone(), q.clone());
        tokio::spawn(async move {
            store
                .claim_task(&q, &format!("w{i}"), &format!("L{i}"), 100)
                .await
                .unwrap()
        })
    });
    let mut got: Vec<String> = futures::future::join_all(claims)
        .await
        .into_iter()
        .filter_map(|r| r.unwrap().map(|t| t.spec.id))
        .collect();
    got.sort();
    let expected: Vec<String> = (0..20).map(|i| format!("t{i:02}")).collect();
    assert_eq!(got, expected, "each task exactly once");
}

async fn an_expired_lease_is_re_leased_until_max_deliveries(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    store.insert_task(&task("t", "e", "q", 0)).await.unwrap();
    let q = queues(&["q"]);
    store.claim_task(&q, "w1", "A", 0).await.unwrap().unwrap();
    assert!(store.claim_task(&q, "w2", "B", 99).await.unwrap().is_none());
    let again = store.claim_task(&q, "w2", "B", 100).await.unwrap().unwrap();
    assert_eq!(
        (
            again.deliveries,
            again.lease_id.as_deref(),
            again.started_ms
        ),
        (2, Some("B"), Some(0))
    );
    assert_eq!(again.leased_ms, Some(100));
    assert!(
        store
            .claim_task(&q, "w3", "C", 500)
            .await
            .unwrap()
            .is_none(),
        "two deliveries is the maximum"
    );
    assert_eq!(store.next_available_ms(&q, 500).await.unwrap(), None);
}

async fn schedule_to_start_bounds_every_wait_in_the_queue(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    let mut t = task("t", "e", "q", 0);
    t.schedule_to_start_ms = Some(50);
    store.insert_task(&t).await.unwrap();
    let q = queues(&["q"]);
    assert!(
        store
            .claim_task(&q, "w", "late", 50)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.next_available_ms(&q, 50).await.unwrap(), None);
    assert!(store.claim_task(&q, "w", "A", 49).await.unwrap().is_some());
    // The lease (100 ms) expires at 149; the task may wait for a new worker until 199.
    assert!(store.claim_task(&q, "w", "B", 199).await.unwrap().is_none());
    assert!(store.claim_task(&q, "w", "B", 198).await.unwrap().is_some());
}

async fn every_change_is_guarded_by_the_state_its_caller_saw(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    store.insert_task(&task("t", "e", "q", 0)).await.unwrap();
    let q = queues(&["q"]);
    let done = TaskEnd::Completed(json!({"ok": true}));
    assert!(matches!(
        store
            .end_task("t", &TaskGuard::LiveLease("A".into()), &done, 0)
            .await
            .unwrap(),
        TaskUpdate::NotApplied(Some(_))
    ));
    assert!(matches!(
        store
            .end_task("nope", &TaskGuard::Open, &done, 0)
            .await
            .unwrap(),
        TaskUpdate::NotApplied(None)
    ));
    store.claim_task(&q, "w", "A", 0).await.unwrap().unwrap();

    let beat = applied(store.extend_lease("t", "A", 60).await.unwrap());
    assert_eq!(beat.lease_expires_ms, Some(160));
    assert!(matches!(
        store.extend_lease("t", "wrong", 60).await.unwrap(),
        TaskUpdate::NotApplied(Some(_))
    ));
    assert!(
        matches!(
            store.extend_lease("t", "A", 160).await.unwrap(),
            TaskUpdate::NotApplied(Some(_))
        ),
        "an expired lease cannot be extended"
    );
    assert!(matches!(
        store
            .end_task("t", &TaskGuard::LiveLease("A".into()), &done, 160)
            .await
            .unwrap(),
        TaskUpdate::NotApplied(Some(_))
    ));
    assert!(matches!(
        store
            .end_task("t", &TaskGuard::Queued, &done, 100)
            .await
            .unwrap(),
        TaskUpdate::NotApplied(Some(_))
    ));
    assert!(matches!(
        store
            .end_task("t", &TaskGuard::ExpiredLease("A".into()), &done, 159)
            .await
            .unwrap(),
        TaskUpdate::NotApplied(Some(_))
    ));
    let completed = applied(
        store
            .end_task("t", &TaskGuard::LiveLease("A".into()), &done, 159)
            .await
            .unwrap(),
    );
    assert_eq!(
        (completed.status, completed.result, completed.ended_ms),
        (TaskStatus::Completed, Some(json!({"ok": true})), Some(159))
    );
    let cancel = TaskEnd::Cancelled("late".into());
    assert!(matches!(
        store
            .end_task("t", &TaskGuard::Open, &cancel, 200)
            .await
            .unwrap(),
        TaskUpdate::NotApplied(Some(_))
    ));
}

async fn failures_keep_their_retryability_and_timeouts_are_retryable(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    store.insert_task(&task("f", "e", "q", 0)).await.unwrap();
    store.insert_task(&task("t", "e", "q", 1)).await.unwrap();
    let fail = TaskEnd::Failed {
        error: "boom".into(),
        retryable: true,
    };
    let failed = applied(
        store
            .end_task("f", &TaskGuard::Open, &fail, 5)
            .await
            .unwrap(),
    );
    assert_eq!(
        (failed.status, failed.error.as_str(), failed.retryable),
        (TaskStatus::Failed, "boom", true)
    );
    let timeout = TaskEnd::TimedOut("slow".into());
    let timed_out = applied(
        store
            .end_task("t", &TaskGuard::Queued, &timeout, 5)
            .await
            .unwrap(),
    );
    assert_eq!(
        (timed_out.status, timed_out.retryable),
        (TaskStatus::TimedOut, true)
    );
}

async fn the_start_up_sweep_cancels_open_tasks_of_finished_executions_only(h) {
    let store = h.open().await;
    for id in ["done", "running"] {
        execution(&*store, id).await;
    }
    store
        .insert_task(&task("open-of-done", "done", "q", 0))
        .await
        .unwrap();
    store
        .insert_task(&task("ended-of-done", "done", "q", 1))
        .await
        .unwrap();
    store
        .insert_task(&task("open-of-running", "running", "q", 2))
        .await
        .unwrap();
    let end = TaskEnd::Completed(json!(1));
    applied(
        store
            .end_task("ended-of-done", &TaskGuard::Open, &end, 3)
            .await
            .unwrap(),
    );
    let finished = Transition::ExecutionFinished {
        status: ExecutionStatus::Succeeded,
        result: None,
        error: String::new(),
        retryable: false,
    };
    store.append("done", 4, finished).await.unwrap();

    assert_eq!(
        store.cancel_tasks_of_finished_executions(5).await.unwrap(),
        1
    );
    let status = |id: &'static str| {
        let store = store.clone();
        async move { store.get_task(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status("open-of-done").await, TaskStatus::Cancelled);
    assert_eq!(status("ended-of-done").await, TaskStatus::Completed);
    assert_eq!(status("open-of-running").await, TaskStatus::Queued);
}

async fn process_groups_are_recorded_listed_and_forgotten(h) {
    let store = h.open().await;
    let group = ProcessGroupRecord {
        pgid: 4242,
        start_time: 987_654,
        boot_id: "boot".into(),
        execution_id: "e".into(),
        node_id: "action".into(),
        program: "/bin/sh".into(),
        recorded_ms: 7,
    };
    store.record_process_group(&group).await.unwrap();
    store.record_process_group(&group).await.unwrap();
    assert_eq!(store.process_groups().await.unwrap(), [group]);
    store.forget_process_group(4242, 1).await.unwrap();
    assert_eq!(
        store.process_groups().await.unwrap().len(),
        1,
        "another start time is another group"
    );
    store.forget_process_group(4242, 987_654).await.unwrap();
    assert!(store.process_groups().await.unwrap().is_empty());
}

async fn concurrent_inserts_of_one_task_store_it_once(h) {
    let store = h.open().await;
    execution(&*store, "e").await;
    let inserts = (0..10).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut t = task("t", "e", "q", i);
            t.payload = json!({"writer": i});
            store.insert_task(&t).await.unwrap()
        })
    });
    let results: Vec<(TaskRecord, bool)> = futures::future::join_all(inserts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results.iter().filter(|(_, inserted)| *inserted).count(), 1);
    let stored = store.get_task("t").await.unwrap().unwrap();
    assert!(results.iter().all(|(t, _)| *t == stored), "every caller sees the stored task");
}

async fn a_task_of_an_unknown_execution_is_refused(h) {
    let store = h.open().await;
    let err = store.insert_task(&task("t", "missing", "q", 0)).await.unwrap_err();
    assert!(matches!(err, ExecutorError::Store(_)), "{err:?}");
    assert!(store.get_task("t").await.unwrap().is_none());
}
}
