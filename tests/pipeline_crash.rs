//! Crash resume of a pipeline with real processes (DESIGN §5.1): `almanac executor` runs
//! trigger → a → pause (a delay) → b (slow) → c against a counting HTTP target and is
//! SIGKILLed twice — during the delay (between a and b) and while b's request is in
//! flight — then restarted on the same port and database each time. The execution
//! finishes SUCCEEDED; a and c were called exactly once; b's repeated request carries the
//! same Idempotency-Key; a watcher that reconnects with its last seq sees every event
//! exactly once.

mod common;
mod pipeline_support;

use std::collections::BTreeSet;
use std::time::Duration;

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    ExecutionStatus, GetExecutionRequest, NodeStatus,
    executor_service_client::ExecutorServiceClient,
};
use common::procs::Proc;
use common::sink::Sink;
use common::*;
use pipeline_support::*;
use serde_json::json;

const KEY: &str = "crash-resume-1";
/// Long enough that the test sees the delay running and kills the executor in it.
const PAUSE_MS: i64 = 3_000;
/// b's answer takes this long: the executor is killed while b waits for it.
const B_TAKES: Duration = Duration::from_secs(3);

/// The node table's statuses of `node`, by attempt, as the executor at `url` has them.
async fn node_statuses(url: &str, node: &str) -> Vec<NodeStatus> {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
    else {
        return Vec::new();
    };
    let Ok(response) = ExecutorServiceClient::new(channel)
        .get_execution(GetExecutionRequest {
            idempotency_key: KEY.into(),
            ..Default::default()
        })
        .await
    else {
        return Vec::new();
    };
    let mut rows: Vec<_> = response
        .into_inner()
        .execution
        .map(|e| e.nodes)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.node_id == node)
        .collect();
    rows.sort_by_key(|r| r.attempt);
    rows.iter()
        .map(|r| NodeStatus::try_from(r.status).unwrap())
        .collect()
}

/// Restarts the executor where it was: same port, same database.
fn restart(dir: &std::path::Path, port: u16) -> Proc {
    Proc::executor(dir, &format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_survives_sigkill_between_nodes_and_mid_node_with_each_call_once() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.respond("/b", 200, B_TAKES);
    let executor = Proc::executor(dir.path(), "127.0.0.1:0");
    let (url, port) = (executor.url.clone(), executor.port());
    store_pipeline(
        &url,
        pipeline(
            "resumable",
            vec![
                trigger("start"),
                api("a", &sink.url("/a")),
                delay("pause", PAUSE_MS),
                api("b", &sink.url("/b")),
                api("c", &sink.url("/c")),
            ],
            chain(&["start", "a", "pause", "b", "c"]),
        ),
    )
    .await;

    // Start it, and follow it with a watcher of its own that outlives the kills.
    let mut client = executor_client(&url).await;
    let mut stream = client
        .execute(almanac_proto::executor::v1::ExecuteRequest {
            idempotency_key: KEY.into(),
            action: Some(execute_pipeline("resumable", json!({}))),
            ..Default::default()
        })
        .await
        .expect("execute")
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().event.unwrap();
    let Some(EventKind::ExecutionStarted(started)) = first.kind else {
        panic!("the first event is ExecutionStarted: {first:?}")
    };
    drop(stream);
    let (seen, watcher) =
        watch_across_restarts(url.clone(), started.execution_id, Duration::from_secs(90));

    // Kill 1: a has succeeded and the delay is running, b has not started.
    eventually(Duration::from_secs(20), "the delay to run after a", || {
        let url = url.clone();
        async move {
            let ready = node_statuses(&url, "a").await == [NodeStatus::Succeeded]
                && node_statuses(&url, "pause").await == [NodeStatus::Running];
            ready.then_some(())
        }
    })
    .await;
    executor.kill9();
    assert!(sink.hits_on("/b").is_empty(), "b had not started");
    let executor = restart(dir.path(), port);

    // Kill 2: b's request is at the target, unanswered.
    eventually(Duration::from_secs(20), "b's request at the target", || {
        let sink = sink.clone();
        async move { (!sink.hits_on("/b").is_empty()).then_some(()) }
    })
    .await;
    executor.kill9();
    let executor = restart(dir.path(), port);

    tokio::time::timeout(Duration::from_secs(100), watcher)
        .await
        .expect("the watcher ends")
        .expect("the watcher saw the execution finish");
    let events = seen.events();
    let Some(EventKind::ExecutionFinished(finish)) = events.last().unwrap().kind.clone() else {
        unreachable!("the watcher ends on ExecutionFinished")
    };
    assert_eq!(
        finish.status,
        ExecutionStatus::Succeeded as i32,
        "{finish:?}"
    );

    // Every event exactly once, across reconnections.
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let last = *seqs.last().unwrap();
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "dense, in order, once"
    );
    assert!(
        *seen.connections.lock().unwrap() >= 2,
        "the watcher reconnected"
    );

    // Committed nodes ran once; the interrupted ones once more under the same key.
    assert_eq!(sink.hits_on("/a").len(), 1, "a was called exactly once");
    assert_eq!(sink.hits_on("/c").len(), 1, "c was called exactly once");
    let b = sink.hits_on("/b");
    assert_eq!(b.len(), 2, "b: the interrupted call and its repeat");
    let keys: BTreeSet<&str> = b
        .iter()
        .map(|h| h.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        [format!("{KEY}/b").as_str()]
    );
    assert_eq!(
        sink.hits_on("/a")[0].header("idempotency-key"),
        Some(format!("{KEY}/a").as_str())
    );

    let cancelled_then_ok = [NodeStatus::Cancelled, NodeStatus::Succeeded];
    assert_eq!(node_statuses(&url, "a").await, [NodeStatus::Succeeded]);
    assert_eq!(node_statuses(&url, "pause").await, cancelled_then_ok);
    assert_eq!(node_statuses(&url, "b").await, cancelled_then_ok);
    assert_eq!(node_statuses(&url, "c").await, [NodeStatus::Succeeded]);
    assert!(
        executor.terminate() == Some(0),
        "the executor stops cleanly on SIGTERM"
    );
}
