//! Back-pressure: a scheduler given more runs than its dispatcher may hold keeps the rest
//! PENDING in the ledger (no task, no lease, nothing in memory) and sends them oldest
//! first as room frees, each exactly once, never more at once than its in-flight limit.

mod common;

use std::path::Path;
use std::time::Duration;

use almanac_proto::scheduler::v1 as pb;
use common::sink::Sink;
use common::{
    eventually, idle, scheduler_client, start_executor, start_scheduler_tuned, status_of,
    trigger_now, wait_for_run,
};
use sqlx::Row;

const RUNS: usize = 12;
const MAX_TASKS: usize = 2;
const SLOW: Duration = Duration::from_millis(150);

/// PENDING runs nobody drives yet: no dispatch task has taken their lease.
async fn unowned_pending(dir: &Path) -> i64 {
    let sql = "SELECT count(*) AS n FROM runs WHERE status = 'PENDING' AND owner IS NULL";
    match almanac_testkit::postgres_database_for(dir, "scheduler") {
        Some(url) => {
            let db = sqlx::PgPool::connect(&url).await.expect("connect");
            let sql = sql.replace("FROM runs", "FROM scheduler.runs");
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&db)
                .await
                .expect("count");
            row.get("n")
        }
        None => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.join("scheduler.db"))
                .read_only(true);
            let db = sqlx::SqlitePool::connect_with(options).await.expect("open");
            let row = sqlx::query(sql).fetch_one(&db).await.expect("count");
            row.get("n")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beyond_the_dispatch_bound_wait_in_the_ledger_and_go_out_oldest_first_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let executor = start_executor(dir.path()).await;
    let scheduler = start_scheduler_tuned(dir.path(), &executor.url(), None, |c| {
        c.engine.max_in_flight_dispatches = 1;
        c.engine.max_dispatch_tasks = MAX_TASKS;
    })
    .await;
    let sink = Sink::start().await;
    sink.respond("/slow", 200, SLOW);
    let mut client = scheduler_client(&scheduler.url()).await;
    idle(&mut client, "busy", &sink.url("/slow"), |s| {
        s.overlap_policy = pb::OverlapPolicy::AllowAll as i32;
    })
    .await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(trigger_now(&mut client, "busy").await);
    }

    // Twelve runs arrive in well under the time one takes: all but the bound wait
    // in the ledger, unleased. An unbounded dispatcher would have leased them all.
    let waiting = unowned_pending(dir.path()).await;
    assert!(
        waiting >= (RUNS - MAX_TASKS - 2) as i64,
        "runs beyond the bound wait in the ledger without a lease: {waiting} of {RUNS}"
    );

    for run in &runs {
        let done = wait_for_run(&client, &run.id, "a run of the backlog", |r| {
            !matches!(
                status_of(r),
                pb::RunStatus::Pending | pb::RunStatus::Running
            )
        })
        .await;
        assert_eq!(status_of(&done), pb::RunStatus::Succeeded, "{done:?}");
    }
    let hits = eventually(Duration::from_secs(10), "every request at the sink", || {
        let sink = sink.clone();
        async move {
            let hits = sink.hits_on("/slow");
            (hits.len() >= RUNS).then_some(hits)
        }
    })
    .await;
    let sent: Vec<&str> = hits
        .iter()
        .map(|h| h.header("x-almanac-run-id").expect("run id header"))
        .collect();
    let triggered: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(sent.len(), RUNS, "each run called the sink once: {sent:?}");
    // Oldest first: runs are admitted in the ledger's order, and only runs holding a
    // task at the same moment (at most the bound) may race each other to the one send.
    for (sent_at, id) in sent.iter().enumerate() {
        let triggered_at = triggered
            .iter()
            .position(|t| t == id)
            .expect("a triggered run");
        assert!(
            sent_at.abs_diff(triggered_at) < MAX_TASKS,
            "run {triggered_at} went out {sent_at}th: the backlog drains oldest first\n\
             sent {sent:?}\ntriggered {triggered:?}"
        );
    }
    // One attempt in flight at a time: each request arrived after the previous answer.
    for pair in hits.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= SLOW,
            "requests overlapped: at most one dispatch is in flight"
        );
    }
    assert_eq!(unowned_pending(dir.path()).await, 0, "nothing left waiting");
}
