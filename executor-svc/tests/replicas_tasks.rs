//! `run_task` queues with several executors on one PostgreSQL database (issue 6): the
//! queue is the table, so a task queued by the replica running the execution is leased
//! by a worker polling another replica, whose heartbeats (with progress) and completion
//! through that replica end the node where it runs. Skipped (SKIPPED) unless on
//! PostgreSQL.

mod common;
mod replicas_support;
#[path = "common/run_task.rs"]
mod run_task;

use std::time::Duration;

use almanac_proto::executor::v1::{CompleteTaskRequest, ExecutionStatus, HeartbeatRequest};
use common::*;
use replicas_support::*;
use run_task::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_queued_on_one_replica_is_leased_and_completed_through_another() {
    let Some(url) = shared_database("replicas: run_task across replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = replica(dir.path(), &url, "a", Duration::from_secs(2)).await;
    let b = replica(dir.path(), &url, "b", Duration::from_secs(2)).await;
    let running = execute_in_background(&a, "task-across", queue_task("agents", |_| {}));

    let mut worker = workers(&b).await;
    let task = take(&mut worker, "agents").await;
    assert_eq!(task.node_id, "action");
    worker
        .heartbeat(HeartbeatRequest {
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            percent: Some(50.0),
            message: "half way".into(),
        })
        .await
        .unwrap();
    worker
        .complete_task(CompleteTaskRequest {
            task_id: task.task_id.clone(),
            lease_id: task.lease_id.clone(),
            result: Some(almanac_executor::json::json_to_pb(
                &json!({"summary": "done"}),
            )),
        })
        .await
        .unwrap();

    let events = tokio::time::timeout(WAIT, running).await.unwrap().unwrap();
    assert_whole_log(&events);
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Succeeded as i32, "{done:?}");
    assert_eq!(
        json(done.result.as_ref().unwrap()),
        json!({"summary": "done"})
    );
    assert_eq!(
        progress(&events),
        [("action".to_owned(), 50.0, "half way".to_owned())]
    );
    a.stop().await;
    b.stop().await;
}
