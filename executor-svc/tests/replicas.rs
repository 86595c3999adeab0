//! Several executors on one PostgreSQL database (issue 6): a watcher connected to one
//! replica sees, live, every event of an execution another replica runs, each seq once
//! and in order; `Execute` with the same key on the other replica attaches instead of
//! running it again; a cancel through any replica stops the execution where it runs; and
//! executors starting at the same instant on a fresh database migrate it once. Skipped
//! (SKIPPED) unless the tests run on PostgreSQL.

mod common;
mod pipeline_support;
mod replicas_support;

use std::time::Duration;

use almanac_proto::executor::v1::{
    CancelExecutionRequest, CancelMode, ExecutionStatus, GetExecutionRequest,
    ListExecutionsRequest, WatchExecutionRequest,
};
use common::*;
use pipeline_support::*;
use replicas_support::*;
use serde_json::json;

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_another_replica_sees_every_live_event_once_and_execute_attaches() {
    let Some(url) = shared_database("replicas: watch across replicas").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = replica(dir.path(), &url, "a", TTL).await;
    let b = replica(dir.path(), &url, "b", TTL).await;
    let target = Scripted::start().await;
    create(
        &a,
        pipeline(
            "steps",
            vec![
                trigger("start"),
                api("one", &target.url("/hold/one")),
                api("two", &target.url("/hold/two")),
                api("three", &target.url("/three")),
            ],
            vec![
                edge("start", "one"),
                edge("one", "two"),
                edge("two", "three"),
            ],
        ),
    )
    .await;

    let mut on_a = a
        .client()
        .await
        .execute(run_request("steps-1", "steps", json!({})))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut on_a).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    target.wait_for("/hold/one", 1).await;

    // B does not run it: its watcher and its Execute by key read what A writes.
    let mut watch_b = b
        .client()
        .await
        .watch_execution(WatchExecutionRequest {
            execution_id: id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let attach_b = b
        .client()
        .await
        .execute(run_request("steps-1", "steps", json!({})))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    // Live: B's watcher gets the events up to node two's start while node two is held.
    target.release("one");
    let two_started = |events: &[almanac_proto::executor::v1::ExecutionEvent]| {
        nodes_of(events, "NodeStarted").contains(&"two".to_owned())
    };
    for _ in 0..100 {
        if two_started(&seen) {
            break;
        }
        seen.push(next_event(&mut watch_b).await.expect("the stream goes on"));
    }
    assert!(two_started(&seen), "{:?}", kinds(&seen));
    assert!(
        target.hits_on("/three").is_empty(),
        "seen while the execution still runs"
    );
    target.release("two");
    for _ in 0..100 {
        match next_event(&mut watch_b).await {
            Some(event) => seen.push(event),
            None => break,
        }
    }
    assert_whole_log(&seen);
    assert_eq!(finished(&seen).status, ExecutionStatus::Succeeded as i32);

    let attached = collect(attach_b).await;
    assert_eq!(
        seqs(&attached),
        seqs(&seen),
        "the attach streams the same log"
    );
    assert_eq!(execution_id(&attached), id);
    let mut rest_a = vec![first];
    rest_a.extend(collect(on_a).await);
    assert_eq!(seqs(&rest_a), seqs(&seen));
    for path in ["/hold/one", "/hold/two", "/three"] {
        assert_eq!(target.hits_on(path).len(), 1, "{path} ran once");
    }
    let listed = b
        .client()
        .await
        .list_executions(ListExecutionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.executions.len(), 1, "no second execution");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_through_another_replica_stops_the_execution_where_it_runs() {
    let Some(url) = shared_database("replicas: cancel through another replica").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = replica(dir.path(), &url, "a", TTL).await;
    let b = replica(dir.path(), &url, "b", TTL).await;
    let target = Scripted::start().await;
    let mut on_a = a
        .client()
        .await
        .execute(execute_request(
            "held",
            call_once(&target.url("/hold/never")),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut on_a).await.unwrap();
    let id = execution_id(std::slice::from_ref(&first));
    target.wait_for("/hold/never", 1).await;

    let asked = std::time::Instant::now();
    b.client()
        .await
        .cancel_execution(CancelExecutionRequest {
            execution_id: id.clone(),
            mode: CancelMode::Terminate as i32,
            reason: "asked through b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut events = vec![first];
    events.extend(collect(on_a).await);
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Cancelled as i32, "{done:?}");
    assert!(done.error.contains("asked through b"), "{}", done.error);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "A noticed within its cancel poll: {:?}",
        asked.elapsed()
    );
    assert_whole_log(&events);
    let stored = b
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
    assert_eq!(stored.status, ExecutionStatus::Cancelled as i32);
    assert_eq!(target.hits_on("/hold/never").len(), 1, "nothing ran again");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_executors_starting_at_once_migrate_a_fresh_database_once_and_all_serve() {
    let Some(url) = shared_database("replicas: three starting at once").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let processes: Vec<Process> = std::thread::scope(|scope| {
        let starts: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|id| scope.spawn(|| Process::start(dir.path(), &url, id, "2s")))
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for process in &processes {
        let mut client = process.client().await;
        client
            .list_executions(ListExecutionsRequest::default())
            .await
            .expect("every replica serves");
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let versions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT version, COUNT(*) FROM executor._sqlx_migrations GROUP BY version ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/executor/postgres"
    ))
    .unwrap()
    .filter(|f| {
        f.as_ref()
            .is_ok_and(|f| f.file_name().to_string_lossy().ends_with(".sql"))
    })
    .count();
    assert_eq!(versions.len(), files, "{versions:?}");
    assert!(
        versions.iter().all(|(_, n)| *n == 1),
        "each version once: {versions:?}"
    );
    for process in processes {
        process.kill();
    }
}
