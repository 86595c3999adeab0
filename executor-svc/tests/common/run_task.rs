//! Helpers of the `run_task` queue tests (included with `#[path]` by `run_task_queue.rs`
//! and `run_task_leases.rs`): a queue action with an agent's payload, an execution
//! collected in the background, and a Rust worker's client.
#![allow(dead_code)]

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::worker_service_client::WorkerServiceClient;
use almanac_proto::executor::v1::{
    Action, ExecutionEvent, PollTaskRequest, RetryPolicy, RunTaskAction, Task, action::Kind,
    run_task_action::Target,
};
use almanac_proto::time::ms_to_duration;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::common::*;

pub fn payload(value: Value) -> pbjson_types::Struct {
    match almanac_executor::json::json_to_pb(&value).kind {
        Some(pbjson_types::value::Kind::StructValue(s)) => s,
        other => panic!("not an object: {other:?}"),
    }
}

pub fn queue_task(queue: &str, change: impl FnOnce(&mut RunTaskAction)) -> Action {
    let mut task = RunTaskAction {
        target: Some(Target::Queue(queue.into())),
        payload: Some(payload(
            json!({"agent_id": "a-7", "goal": "summarise the news", "max_steps": 5}),
        )),
        heartbeat_timeout: Some(ms_to_duration(5_000)),
        retry: Some(RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    change(&mut task);
    Action {
        kind: Some(Kind::RunTask(task)),
    }
}

/// Starts an execution and collects its events in the background.
pub fn execute_in_background(
    executor: &Executor,
    key: &str,
    action: Action,
) -> tokio::task::JoinHandle<Vec<ExecutionEvent>> {
    let request = execute_request(key, action);
    let addr = executor.addr;
    tokio::spawn(async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        execute_all(&mut ExecutorServiceClient::new(channel), request).await
    })
}

pub async fn workers(executor: &Executor) -> WorkerServiceClient<Channel> {
    WorkerServiceClient::new(executor.channel().await)
}

/// A Rust worker's poll: the next task of `queue` within the wait.
pub async fn take(client: &mut WorkerServiceClient<Channel>, queue: &str) -> Task {
    eventually(&format!("a task on {queue}"), || {
        let mut client = client.clone();
        let queue = queue.to_owned();
        async move {
            client
                .poll_task(PollTaskRequest {
                    worker_id: "rust-worker".into(),
                    queues: vec![queue],
                    wait: Some(ms_to_duration(1_000)),
                })
                .await
                .unwrap()
                .into_inner()
                .task
        }
    })
    .await
}

pub fn progress(events: &[ExecutionEvent]) -> Vec<(String, f64, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(EventKind::Progress(p)) => Some((p.node_id.clone(), p.percent, p.message.clone())),
            _ => None,
        })
        .collect()
}
