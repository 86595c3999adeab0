//! One key, one execution: a repeated Execute attaches and replays, a reconnect with a
//! seq sees only what follows it, concurrent Executes with one key start one execution,
//! and the same key with a different request is refused without touching what is stored.

mod common;

use almanac_proto::executor::v1::{GetExecutionRequest, ListExecutionsRequest};
use common::*;
use tonic::Code;

#[tokio::test]
async fn executing_the_same_key_twice_runs_once_and_replays_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let request = execute_request("key-1", call(&target.url("/ok")));

    let first = execute_all(&mut client, request.clone()).await;
    let second = execute_all(&mut client, request.clone()).await;
    assert_eq!(seqs(&first), [1, 2, 3, 4]);
    assert_eq!(first, second, "the second call replays the stored events");
    assert_eq!(target.requests().len(), 1, "the target saw one request");

    let mut resumed = request.clone();
    resumed.after_seq = 2;
    let tail = execute_all(&mut client, resumed).await;
    assert_eq!(seqs(&tail), [3, 4]);
    assert_eq!(tail, first[2..]);

    let before = client
        .get_execution(GetExecutionRequest {
            idempotency_key: "key-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let other = execute_request("key-1", call(&target.url("/status/500")));
    let refused = client.execute(other).await.unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert!(refused.message().contains("key-1"), "{}", refused.message());
    let after = client
        .get_execution(GetExecutionRequest {
            idempotency_key: "key-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before, after, "a refused request changes nothing");
    assert_eq!(target.requests().len(), 1);
    let listed = client
        .list_executions(ListExecutionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.executions.len(), 1);
    executor.stop().await;
}

#[tokio::test]
async fn concurrent_executes_with_one_key_start_one_execution() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let request = execute_request("raced", call(&target.url("/slow/300")));

    let mut calls = Vec::new();
    for _ in 0..6 {
        let mut client = executor.client().await;
        let request = request.clone();
        calls.push(tokio::spawn(async move {
            execute_all(&mut client, request).await
        }));
    }
    let mut streams = Vec::new();
    for call in calls {
        streams.push(call.await.unwrap());
    }
    let id = execution_id(&streams[0]);
    for events in &streams {
        assert_eq!(execution_id(events), id);
        assert_eq!(events, &streams[0], "every caller sees the same log");
    }
    assert_eq!(target.requests().len(), 1);
    executor.stop().await;
}

#[tokio::test]
async fn a_stored_execution_is_attached_to_although_the_configuration_now_refuses_its_action() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("executor.db");
    let target = Target::start().await;
    let request = execute_request("kept", call(&target.url("/ok")));
    let executor = Executor::start(&db).await;
    let first = execute_all(&mut executor.client().await, request.clone()).await;
    executor.stop().await;

    // Started again with loopback no longer let through the egress guard.
    let executor = Executor::start_exact(almanac_executor::Config::new(&db)).await;
    let mut client = executor.client().await;
    let again = execute_all(&mut client, request).await;
    assert_eq!(
        again, first,
        "the stored execution is attached to and replayed"
    );
    let fresh = client
        .execute(execute_request("new", call(&target.url("/ok"))))
        .await
        .unwrap_err();
    assert_eq!(
        fresh.code(),
        Code::FailedPrecondition,
        "{}",
        fresh.message()
    );
    assert_eq!(target.requests().len(), 1, "nothing ran again");
    executor.stop().await;
}
