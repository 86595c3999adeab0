//! Executions run on their own: a client that drops its stream does not stop the
//! execution, and executions beyond `max_concurrent_executions` wait, RUNNING, for a
//! permit instead of calling their target.

mod common;

use almanac_executor::Config;
use almanac_proto::executor::v1::{ExecutionStatus, GetExecutionRequest};
use common::*;

#[tokio::test]
async fn a_dropped_stream_does_not_stop_the_execution() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let mut stream = client
        .execute(execute_request("dropped", call(&target.url("/slow/500"))))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    drop(stream);

    let status = eventually("the execution to finish", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let execution = client
                .get_execution(GetExecutionRequest {
                    execution_id: id,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .execution
                .unwrap();
            (execution.status != ExecutionStatus::Running as i32).then_some(execution.status)
        }
    })
    .await;
    assert_eq!(status, ExecutionStatus::Succeeded as i32);
    assert_eq!(target.requests().len(), 1);
    executor.stop().await;
}

#[tokio::test]
async fn executions_beyond_the_limit_wait_running_for_a_permit() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let mut config = Config::new(dir.path().join("executor.db"));
    config.max_concurrent_executions = 1;
    let executor = Executor::start_with(config).await;
    let mut client = executor.client().await;

    let mut slow = client
        .execute(execute_request(
            "holds-the-permit",
            call(&target.url("/slow/1500")),
        ))
        .await
        .unwrap()
        .into_inner();
    next_event(&mut slow).await.unwrap();
    target.wait_for_requests(1).await;

    let mut waiting = client
        .execute(execute_request("waits", call(&target.url("/ok"))))
        .await
        .unwrap()
        .into_inner();
    next_event(&mut waiting).await.unwrap();
    let parked = client
        .get_execution(GetExecutionRequest {
            idempotency_key: "waits".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(parked.status, ExecutionStatus::Running as i32);
    assert!(parked.nodes.is_empty(), "no node started without a permit");
    assert_eq!(target.requests().len(), 1);

    let slow_events = collect(slow).await;
    let waiting_events = collect(waiting).await;
    assert_eq!(
        finished(&slow_events).status,
        ExecutionStatus::Succeeded as i32
    );
    assert_eq!(
        finished(&waiting_events).status,
        ExecutionStatus::Succeeded as i32
    );
    let paths: Vec<_> = target.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/slow/1500", "/ok"],
        "the second call waited for the first"
    );
    executor.stop().await;
}
