//! Restarts: an execution whose call was in flight when the executor stopped is resumed by
//! the next executor on the same database, the node attempted again with the same
//! Idempotency-Key; a cancel recorded before the stop, or a deadline that passed while
//! the executor was down, finishes it without calling the target again.

mod common;

use almanac_executor::model::CancelMode as StoredCancelMode;
use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    ExecuteRequest, ExecutionStatus, GetExecutionRequest, NodeStatus, WatchExecutionRequest,
};
use almanac_proto::time::ms_to_timestamp;
use common::*;

/// Starts an executor, executes `request`, waits until the target has the call in flight,
/// and stops the executor while it is: the state a crash leaves (execution and node
/// RUNNING). Returns the execution id.
async fn interrupt_in_flight(
    db: &std::path::Path,
    target: &Target,
    request: ExecuteRequest,
) -> String {
    let executor = Executor::start(db).await;
    let mut client = executor.client().await;
    let mut stream = client.execute(request).await.unwrap().into_inner();
    let first = next_event(&mut stream).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    target.wait_for_requests(1).await;
    executor.stop().await;
    // The stream of the stopped executor ends (with UNAVAILABLE) and without a finish.
    while let Ok(Some(m)) = tokio::time::timeout(WAIT, stream.message()).await.unwrap() {
        assert!(!matches!(
            m.event.and_then(|e| e.kind),
            Some(EventKind::ExecutionFinished(_))
        ));
    }
    id
}

async fn watch_to_end(
    executor: &Executor,
    id: &str,
) -> Vec<almanac_proto::executor::v1::ExecutionEvent> {
    let mut client = executor.client().await;
    let stream = client
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
async fn a_call_in_flight_at_shutdown_completes_after_restart_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("executor.db");
    let target = Target::start().await;
    let request = execute_request("resume-me", call(&target.url("/first-slow/60000")));
    let id = interrupt_in_flight(&db, &target, request).await;

    let stored = open_store(&db).await;
    let left = stored.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(
        left.status.as_str(),
        "RUNNING",
        "the stop left it as a crash would"
    );
    stored.close().await;

    let executor = Executor::start(&db).await;
    let events = watch_to_end(&executor, &id).await;
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeFailed",
            "NodeStarted",
            "NodeSucceeded",
            "ExecutionFinished"
        ]
    );
    assert_eq!(seqs(&events), [1, 2, 3, 4, 5, 6]);
    match (&events[2].kind, &events[3].kind) {
        (Some(EventKind::NodeFailed(f)), Some(EventKind::NodeStarted(s))) => {
            assert_eq!((f.attempt, s.attempt), (1, 2));
            assert!(f.error.contains("interrupted"), "{}", f.error);
        }
        other => panic!("NodeFailed then NodeStarted expected, got {other:?}"),
    }
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);

    let seen = target.requests();
    assert_eq!(seen.len(), 2, "the call was made again once");
    assert!(
        seen.iter()
            .all(|r| r.headers["idempotency-key"] == "resume-me")
    );

    let execution = executor
        .client()
        .await
        .get_execution(GetExecutionRequest {
            execution_id: id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    let table: Vec<_> = execution
        .nodes
        .iter()
        .map(|n| (n.attempt, n.status))
        .collect();
    assert_eq!(
        table,
        [
            (1, NodeStatus::Cancelled as i32),
            (2, NodeStatus::Succeeded as i32)
        ]
    );
    executor.stop().await;
}

#[tokio::test]
async fn a_cancel_recorded_before_a_stop_is_honoured_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("executor.db");
    let target = Target::start().await;
    let request = execute_request("cancel-then-crash", call(&target.url("/first-slow/60000")));
    let id = interrupt_in_flight(&db, &target, request).await;

    // The cancel was committed but the process died before acting on it.
    let stored = open_store(&db).await;
    stored
        .request_cancel(&id, StoredCancelMode::Terminate, "asked before the crash")
        .await
        .unwrap();
    stored.close().await;

    let executor = Executor::start(&db).await;
    let events = watch_to_end(&executor, &id).await;
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
    assert_eq!(done.status, ExecutionStatus::Cancelled as i32);
    assert!(
        done.error.contains("asked before the crash"),
        "{}",
        done.error
    );
    assert_eq!(target.requests().len(), 1, "no new call after the cancel");
    executor.stop().await;
}

#[tokio::test]
async fn a_deadline_that_passed_while_down_times_out_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("executor.db");
    let target = Target::start().await;
    let deadline_ms = chrono::Utc::now().timestamp_millis() + 3_000;
    let mut request = execute_request("late-on-restart", call(&target.url("/first-slow/60000")));
    request.deadline = Some(ms_to_timestamp(deadline_ms));
    let id = interrupt_in_flight(&db, &target, request).await;

    eventually("the deadline to pass", || async {
        (chrono::Utc::now().timestamp_millis() > deadline_ms).then_some(())
    })
    .await;
    let executor = Executor::start(&db).await;
    let events = watch_to_end(&executor, &id).await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::TimedOut as i32);
    assert_eq!(target.requests().len(), 1, "no new call after the deadline");
    executor.stop().await;
}

/// The state a client hanging up at the wrong moment used to leave: an execution stored
/// under this executor's own lease, with no runner (the request was dropped between the
/// commit and the runner's start). The scheduler then re-attaches with the same key; the
/// execution must run and finish, not stream nothing forever.
#[tokio::test]
async fn an_execution_stored_without_a_runner_runs_when_its_key_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("executor.db");
    let target = Target::start().await;
    let mut config = almanac_executor::config::Config::new(&db);
    config.replica_id = "solo".into();
    let executor = Executor::start_with(config).await;
    let mut client = executor.client().await;
    client
        .get_execution(GetExecutionRequest {
            idempotency_key: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect_err("serving (and migrated) before the store is opened beside it");

    let request = execute_request("orphan/1", call(&target.url("/ok")));
    let start = almanac_executor::engine::StartRequest {
        idempotency_key: request.idempotency_key.clone(),
        action: request.action.clone().unwrap(),
        deadline_ms: None,
        origin: None,
    };
    let now = chrono::Utc::now().timestamp_millis();
    let store = open_store(&db).await;
    store
        .create_execution(&almanac_executor::model::NewExecution {
            id: uuid::Uuid::now_v7().to_string(),
            idempotency_key: start.idempotency_key.clone(),
            fingerprint: almanac_executor::engine::fingerprint(&start),
            action: start.action.clone(),
            origin: None,
            deadline_ms: None,
            created_ms: now,
            pipeline: None,
            owner: "solo".into(),
            lease_until_ms: now + 600_000,
            first_node: None,
        })
        .await
        .unwrap();

    let stream = client.execute(request).await.unwrap().into_inner();
    let events = collect(stream).await;
    assert_eq!(
        finished(&events).status,
        ExecutionStatus::Succeeded as i32,
        "{events:?}"
    );
    assert_eq!(target.requests().len(), 1, "the action ran once");
    executor.stop().await;
}
