//! Real executor processes on one PostgreSQL database (issue 6): a process SIGKILLed in
//! the middle of a pipeline has its execution adopted by another once the lease expires
//! (committed nodes never run again, the node in flight runs again with the same key);
//! and a process frozen with SIGSTOP past its lease, adopted meanwhile, is fenced out
//! when SIGCONT wakes it: its late writes are refused, the log stays the adopter's, and
//! the woken process keeps serving. Skipped (SKIPPED) unless on PostgreSQL.

mod common;
mod pipeline_support;
mod replicas_support;

use almanac_proto::executor::v1::pipeline_service_client::PipelineServiceClient;
use almanac_proto::executor::v1::{
    CreatePipelineRequest, ExecutionStatus, GetExecutionRequest, NodeStatus, Pipeline,
};
use common::*;
use nix::sys::signal::Signal;
use pipeline_support::*;
use replicas_support::*;
use serde_json::json;

async fn create_on(process: &Process, p: Pipeline) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", process.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    PipelineServiceClient::new(channel)
        .create_pipeline(CreatePipelineRequest {
            pipeline_id: p.id.clone(),
            pipeline: Some(p),
        })
        .await
        .expect("create pipeline");
}

async fn node_statuses(process: &Process, id: &str, node: &str) -> Vec<NodeStatus> {
    let execution = process
        .client()
        .await
        .get_execution(GetExecutionRequest {
            execution_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    row_statuses(&execution, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_of_a_killed_process_is_adopted_after_its_lease_and_committed_nodes_run_once() {
    let Some(url) = shared_database("replicas: adoption after SIGKILL").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let a = Process::start(dir.path(), &url, "a", "2s");
    create_on(
        &a,
        pipeline(
            "chain",
            vec![
                trigger("start"),
                api("first", &target.url("/first")),
                api("second", &target.url("/hold/second")),
                api("third", &target.url("/third")),
            ],
            vec![
                edge("start", "first"),
                edge("first", "second"),
                edge("second", "third"),
            ],
        ),
    )
    .await;
    let mut stream = a
        .client()
        .await
        .execute(run_request("chain-1", "chain", json!({})))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    // `first` is committed and `second` in flight: the process dies between the two.
    target.wait_for("/hold/second", 1).await;
    a.kill();

    // B starts after the crash: the lease is not expired yet, so its sweep adopts later.
    let b = Process::start(dir.path(), &url, "b", "2s");
    target.wait_for("/hold/second", 2).await;
    target.release("second");
    let events = watch_all(&mut b.client().await, &id).await;
    assert_whole_log(&events);
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    b.wait_for_log("adopted an execution whose lease had expired")
        .await;

    assert_eq!(
        target.hits_on("/first").len(),
        1,
        "a committed node never runs again"
    );
    let second = target.hits_on("/hold/second");
    assert_eq!(second.len(), 2, "the node in flight ran again");
    assert!(
        second
            .iter()
            .all(|h| h.header("idempotency-key") == Some("chain-1/second")),
        "{second:?}"
    );
    assert_eq!(target.hits_on("/third").len(), 1);
    assert_eq!(
        node_statuses(&b, &id, "second").await,
        [NodeStatus::Cancelled, NodeStatus::Succeeded]
    );
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_process_woken_after_adoption_is_fenced_out_and_keeps_serving() {
    let Some(url) = shared_database("replicas: zombie fencing").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let a = Process::start(dir.path(), &url, "a", "2s");
    let b = Process::start(dir.path(), &url, "b", "2s");
    let mut on_a = a
        .client()
        .await
        .execute(execute_request("zombie", call_once(&target.url("/hold/z"))))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut on_a).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    target.wait_for("/hold/z", 1).await;

    // A freezes mid-node, its call held open; B adopts once A's lease has expired.
    a.signal(Signal::SIGSTOP);
    target.wait_for("/hold/z", 2).await;
    // Both calls are answered now; A's answer waits in its socket while it is frozen.
    target.release("z");
    let adopted = watch_all(&mut b.client().await, &id).await;
    assert_whole_log(&adopted);
    assert_eq!(finished(&adopted).status, ExecutionStatus::Succeeded as i32);

    a.signal(Signal::SIGCONT);
    a.wait_for_log("execution lease lost").await;
    // A's late success was refused: the log is still B's, with one terminal event.
    let after = watch_all(&mut b.client().await, &id).await;
    assert_eq!(seqs(&after), seqs(&adopted));
    assert_eq!(kinds(&after), kinds(&adopted));
    assert_eq!(
        node_statuses(&b, &id, "action").await,
        [NodeStatus::Cancelled, NodeStatus::Succeeded],
        "attempt 1 closed by the adopter as interrupted, attempt 2 the adopter's"
    );
    // A keeps serving: its old stream ends with the adopter's log, and new work runs.
    let mut on_a_rest = vec![first];
    on_a_rest.extend(collect(on_a).await);
    assert_eq!(seqs(&on_a_rest), seqs(&adopted));
    let mut client_a = a.client().await;
    let fresh = execute_all(
        &mut client_a,
        execute_request("after-wake", call_once(&target.url("/ok"))),
    )
    .await;
    assert_eq!(finished(&fresh).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(target.hits_on("/hold/z").len(), 2);
    a.kill();
    b.kill();
}
