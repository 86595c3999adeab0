//! `run_task` leases and timers driven with a Rust worker: a task nobody takes times out
//! by its schedule-to-start timeout, a terminated execution cancels its task (the worker
//! hears it on its next heartbeat), a restarted executor re-attaches to the task its
//! worker still holds, and worker calls are validated.

mod common;
#[path = "common/run_task.rs"]
mod run_task;

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    CancelExecutionRequest, CancelMode, CompleteTaskRequest, ExecutionStatus, HeartbeatRequest,
    PollTaskRequest, WatchExecutionRequest,
};
use almanac_proto::time::ms_to_duration;
use common::*;
use run_task::*;
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn a_task_no_worker_takes_times_out_by_its_schedule_to_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let events = execute_in_background(
        &executor,
        "nobody-home",
        queue_task("empty-queue", |t| {
            t.schedule_to_start_timeout = Some(ms_to_duration(300));
        }),
    )
    .await
    .unwrap();
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Failed as i32, "{end:?}");
    assert!(
        end.error.contains(
            "no worker took the task from queue \"empty-queue\" within its schedule-to-start timeout of 300ms"
        ),
        "{}",
        end.error
    );
    assert!(
        end.retryable,
        "a timeout may pass: the schedule's retry can act"
    );
    executor.stop().await;
}

#[tokio::test]
async fn terminating_the_execution_cancels_the_task_and_its_worker_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let run = execute_in_background(&executor, "stop-it", queue_task("agents", |_| {}));
    let mut client = workers(&executor).await;
    let task = take(&mut client, "agents").await;

    let mut api = executor.client().await;
    api.cancel_execution(CancelExecutionRequest {
        execution_id: task.execution_id.clone(),
        mode: CancelMode::Terminate as i32,
        reason: "enough".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let end = finished(&run.await.unwrap());
    assert_eq!(end.status, ExecutionStatus::Cancelled as i32);

    let heard = eventually("the heartbeat asks the worker to stop", || {
        let mut client = client.clone();
        let (task_id, lease_id) = (task.task_id.clone(), task.lease_id.clone());
        async move {
            let beat = client
                .heartbeat(HeartbeatRequest {
                    task_id,
                    lease_id,
                    percent: Some(50.0),
                    message: "still going".into(),
                })
                .await
                .unwrap()
                .into_inner();
            beat.cancel_requested.then_some(beat)
        }
    })
    .await;
    assert!(heard.lease_expire_time.is_some());
    let refused = client
        .complete_task(CompleteTaskRequest {
            task_id: task.task_id,
            lease_id: task.lease_id,
            result: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("the task was cancelled"),
        "{refused:?}"
    );
    executor.stop().await;
}

#[tokio::test]
async fn a_restarted_executor_re_attaches_to_the_task_its_worker_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("executor.db");
    let executor = Executor::start(&db).await;
    let action = queue_task("agents", |t| {
        t.heartbeat_timeout = Some(ms_to_duration(10_000))
    });
    let stream = executor
        .client()
        .await
        .execute(execute_request("survives-restart", action))
        .await
        .unwrap();
    let task = take(&mut workers(&executor).await, "agents").await;
    drop(stream);
    executor.stop().await;

    let executor = Executor::start(&db).await;
    let mut client = workers(&executor).await;
    let beat = eventually("the lease is still honoured after the restart", || {
        let mut client = client.clone();
        let (task_id, lease_id) = (task.task_id.clone(), task.lease_id.clone());
        async move {
            client
                .heartbeat(HeartbeatRequest {
                    task_id,
                    lease_id,
                    ..Default::default()
                })
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    assert!(!beat.cancel_requested);
    client
        .complete_task(CompleteTaskRequest {
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            result: Some(almanac_executor::json::json_to_pb(&json!({"done": "once"}))),
        })
        .await
        .unwrap();
    let events = collect(
        executor
            .client()
            .await
            .watch_execution(WatchExecutionRequest {
                execution_id: task.execution_id.clone(),
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Succeeded as i32, "{end:?}");
    assert_eq!(json(end.result.as_ref().unwrap()), json!({"done": "once"}));
    let attempts = events
        .iter()
        .filter(|e| matches!(e.kind, Some(EventKind::NodeStarted(_))))
        .count();
    assert_eq!(attempts, 2, "the interrupted attempt, then the resumed one");
    assert!(
        client
            .poll_task(PollTaskRequest {
                worker_id: "w".into(),
                queues: vec!["agents".into()],
                wait: Some(ms_to_duration(0)),
            })
            .await
            .unwrap()
            .into_inner()
            .task
            .is_none(),
        "the resumed attempt created no second task"
    );
    executor.stop().await;
}

#[tokio::test]
async fn worker_calls_are_validated_and_unknown_tasks_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = workers(&executor).await;
    let bad = client
        .poll_task(PollTaskRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let fields: Vec<String> = almanac_proto::status::field_violations(&bad)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["worker_id", "queues"]);
    let bad = client
        .heartbeat(HeartbeatRequest {
            task_id: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("lease_id"), "{bad:?}");
    let missing = client
        .complete_task(CompleteTaskRequest {
            task_id: "no-such-task".into(),
            lease_id: "l".into(),
            result: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    executor.stop().await;
}
