//! The task queues' decisions: which timer a waiting handler enforces when, how a
//! worker's refused call is explained, and the queues end to end over a real store.

use serde_json::json;

use super::*;
use crate::engine::SystemClock;
use crate::model::NewExecution;
use crate::store::SqliteStore;

fn spec() -> NewTask {
    NewTask {
        id: "e/action/1".into(),
        execution_id: "e".into(),
        node_id: "action".into(),
        try_number: 1,
        queue: "agents".into(),
        payload: json!({}),
        idempotency_key: "k".into(),
        origin: None,
        deadline_ms: None,
        max_deliveries: 3,
        heartbeat_timeout_ms: 1_000,
        schedule_to_start_ms: None,
        start_to_close_ms: None,
        created_ms: 0,
    }
}

fn queued(spec: NewTask) -> TaskRecord {
    TaskRecord {
        spec,
        status: TaskStatus::Queued,
        deliveries: 0,
        lease_id: None,
        worker_id: None,
        lease_expires_ms: None,
        started_ms: None,
        leased_ms: None,
        close_deadline_ms: None,
        ended_ms: None,
        result: None,
        error: String::new(),
        retryable: false,
    }
}

fn leased(spec: NewTask, deliveries: u32, expires: i64, close: Option<i64>) -> TaskRecord {
    TaskRecord {
        status: TaskStatus::Leased,
        deliveries,
        lease_id: Some("L".into()),
        worker_id: Some("w1".into()),
        lease_expires_ms: Some(expires),
        close_deadline_ms: close,
        ..queued(spec)
    }
}

fn expire_kind(step: Step) -> (TaskGuard, TaskStatus, String) {
    match step {
        Step::Expire(guard, end) => {
            let message = match &end {
                TaskEnd::Failed { error, .. } | TaskEnd::TimedOut(error) => error.clone(),
                other => format!("{other:?}"),
            };
            (guard, end.status(), message)
        }
        other => panic!("expected an expiry, got {other:?}"),
    }
}

#[test]
fn task_ids_follow_the_try_not_the_attempt() {
    assert_eq!(task_id("exec", "fetch", 2), "exec/fetch/2");
    assert_ne!(task_id("exec", "fetch", 1), task_id("exec", "fetch", 2));
    assert_eq!(human_ms(1_500), "1.5s");
    assert_eq!(human_ms(30_000), "30s");
    assert_eq!(human_ms(120_000), "2m");
    assert_eq!(human_ms(250), "250ms");
}

#[test]
fn a_queued_task_waits_for_its_schedule_to_start_timeout_only() {
    assert_eq!(next_step(&queued(spec()), 1_000_000), Step::Wait(None));
    let mut s = spec();
    s.schedule_to_start_ms = Some(500);
    assert_eq!(next_step(&queued(s.clone()), 499), Step::Wait(Some(500)));
    let (guard, status, message) = expire_kind(next_step(&queued(s), 500));
    assert_eq!((guard, status), (TaskGuard::Queued, TaskStatus::TimedOut));
    assert!(
        message.contains("schedule-to-start timeout of 500ms"),
        "{message}"
    );
}

#[test]
fn a_lease_is_watched_until_it_expires_and_deliveries_run_out() {
    // Live lease: wake at its expiry.
    assert_eq!(
        next_step(&leased(spec(), 1, 2_000, None), 1_000),
        Step::Wait(Some(2_000))
    );
    // Expired with deliveries left: the next poll takes it; nothing to do here.
    assert_eq!(
        next_step(&leased(spec(), 2, 2_000, None), 2_000),
        Step::Wait(None)
    );
    // Expired after the last delivery: the task fails, not retryably.
    let (guard, status, message) = expire_kind(next_step(&leased(spec(), 3, 2_000, None), 2_000));
    assert_eq!(guard, TaskGuard::ExpiredLease("L".into()));
    assert_eq!(status, TaskStatus::Failed);
    assert!(
        message.starts_with("task was delivered 3 times and no worker finished it"),
        "{message}"
    );
}

#[test]
fn start_to_close_and_re_delivery_timeouts_end_a_leased_task() {
    let mut s = spec();
    s.start_to_close_ms = Some(5_000);
    let (guard, status, message) =
        expire_kind(next_step(&leased(s.clone(), 1, 9_000, Some(5_000)), 5_000));
    assert_eq!(
        (guard, status),
        (TaskGuard::Lease("L".into()), TaskStatus::TimedOut)
    );
    assert!(
        message.contains("start-to-close timeout of 5s"),
        "{message}"
    );
    assert_eq!(
        next_step(&leased(s, 1, 9_000, Some(5_000)), 4_000),
        Step::Wait(Some(5_000))
    );

    let mut s = spec();
    s.schedule_to_start_ms = Some(300);
    assert_eq!(
        next_step(&leased(s.clone(), 1, 1_000, None), 1_100),
        Step::Wait(Some(1_300))
    );
    let (guard, status, message) = expire_kind(next_step(&leased(s, 1, 1_000, None), 1_300));
    assert_eq!(
        (guard, status),
        (TaskGuard::ExpiredLease("L".into()), TaskStatus::TimedOut)
    );
    assert!(message.contains("no worker took the task"), "{message}");
}

#[test]
fn refused_calls_say_why() {
    let message = |task: Option<TaskRecord>, lease: &str| match refusal(task, "t", lease) {
        ExecutorError::TaskPrecondition(m) => m,
        ExecutorError::NotFound(m) => format!("not found: {m}"),
        other => panic!("{other:?}"),
    };
    assert_eq!(message(None, "L"), "not found: task t");
    assert_eq!(
        message(Some(leased(spec(), 2, 0, None)), "old"),
        "lease expired: the task was re-leased"
    );
    assert_eq!(
        message(Some(leased(spec(), 1, 0, None)), "L"),
        "lease expired: no heartbeat came within 1s"
    );
    let cancelled = TaskRecord {
        status: TaskStatus::Cancelled,
        error: "stop".into(),
        ..leased(spec(), 1, 0, None)
    };
    assert_eq!(
        message(Some(cancelled), "L"),
        "the task was cancelled: stop"
    );
}

async fn queues_over_a_store() -> (tempfile::TempDir, Arc<TaskQueues>, CancellationToken) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("executor.db"))
        .await
        .unwrap();
    store
        .create_execution(&NewExecution {
            id: "e".into(),
            idempotency_key: "k".into(),
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
    let shutdown = CancellationToken::new();
    let queues = TaskQueues::new(Arc::new(store), Arc::new(SystemClock), shutdown.clone());
    (dir, queues, shutdown)
}

#[tokio::test]
async fn a_waiting_handler_gets_the_result_a_worker_completes_with() {
    let (_dir, queues, _shutdown) = queues_over_a_store().await;
    let mut s = spec();
    s.created_ms = SystemClock.now_ms();
    queues.submit(s.clone()).await.unwrap();
    let waiter = {
        let queues = Arc::clone(&queues);
        tokio::spawn(async move {
            queues
                .wait(
                    "e/action/1",
                    CancellationToken::new(),
                    CancellationToken::new(),
                )
                .await
        })
    };
    let q = vec!["agents".to_owned()];
    let task = queues
        .poll("w1", &q, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a task");
    let lease = task.lease_id.clone().unwrap();
    let beat = queues.heartbeat(task.id(), &lease).await.unwrap();
    assert!(!beat.cancel_requested);
    queues
        .complete(task.id(), &lease, json!({"answer": 42}))
        .await
        .unwrap();
    queues
        .complete(task.id(), &lease, json!({"answer": 42}))
        .await
        .expect("repeating the completing call is accepted");
    let ended = waiter.await.unwrap().unwrap();
    assert_eq!(ended.result, Some(json!({"answer": 42})));
    let again = queues.heartbeat(task.id(), &lease).await.unwrap_err();
    assert!(
        matches!(again, ExecutorError::TaskPrecondition(_)),
        "{again:?}"
    );
    assert!(
        queues
            .poll("w2", &q, Duration::ZERO)
            .await
            .unwrap()
            .is_none(),
        "an ended task is never delivered again"
    );
}

#[tokio::test]
async fn a_dropped_waiter_cancels_its_task_but_not_at_shutdown() {
    let (_dir, queues, shutdown) = queues_over_a_store().await;
    let status = |id: String| {
        let queues = Arc::clone(&queues);
        async move { queues.store.get_task(&id).await.unwrap().unwrap().status }
    };
    // The runner drops the handler's future, then fires its cancel token.
    let drop_waiter = |id: String| {
        let queues = Arc::clone(&queues);
        async move {
            let cancel = CancellationToken::new();
            let wait = queues.wait(&id, cancel.clone(), CancellationToken::new());
            assert!(
                tokio::time::timeout(Duration::from_millis(20), wait)
                    .await
                    .is_err()
            );
            cancel.cancel();
        }
    };

    let first = task_id("e", "action", 1);
    queues
        .submit(NewTask {
            id: first.clone(),
            ..spec()
        })
        .await
        .unwrap();
    drop_waiter(first.clone()).await;
    let mut cancelled = false;
    for _ in 0..200 {
        if status(first.clone()).await == TaskStatus::Cancelled {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cancelled,
        "terminated or past its deadline: the task is cancelled"
    );

    let second = task_id("e", "action", 2);
    queues
        .submit(NewTask {
            id: second.clone(),
            ..spec()
        })
        .await
        .unwrap();
    shutdown.cancel();
    drop_waiter(second.clone()).await;
    assert!(queues.shut_down(Duration::from_secs(5)).await);
    assert_eq!(
        status(second).await,
        TaskStatus::Queued,
        "at shutdown the task stays for the next process to re-attach to"
    );
}
