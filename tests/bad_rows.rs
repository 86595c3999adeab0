//! One bad row is recorded on its run or schedule and never stops the others (DESIGN
//! §4.6): a run whose stored action cannot be decoded ends FAILED saying so, a schedule
//! whose stored spec cannot be decoded is paused with a note, and a healthy schedule in
//! the same database keeps firing.

mod common;

use std::time::Duration;

use almanac_proto::scheduler::v1 as pb;
use common::sink::Sink;
use common::{
    YEARLY, call_api, create, cron, eventually, every, scheduler_client, start_executor,
    start_executor_at, start_scheduler, status_of, wait_for_run,
};

/// Runs `sql` on the scheduler's database while the scheduler is stopped.
async fn corrupt(db: &std::path::Path, sql: &str, id: &str) {
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    let pool = sqlx::SqlitePool::connect_with(options).await.expect("open");
    let changed = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
        .bind(id)
        .execute(&pool)
        .await
        .expect("corrupt")
        .rows_affected();
    assert_eq!(changed, 1, "{sql} changed no row");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_run_fails_an_unreadable_schedule_pauses_and_the_rest_fire() {
    if almanac_testkit::on_postgres() {
        // The rows are corrupted through SQLite's file; PostgreSQL's typed columns refuse
        // most such damage, and the decoding code under test is the same.
        println!("SKIPPED: corrupts a SQLite file");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start().await;
    let executor = start_executor(dir.path()).await;
    let executor_addr = executor.addr.to_string();
    let scheduler = start_scheduler(dir.path(), &executor.url()).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    for id in ["broken-spec", "healthy"] {
        client
            .create_schedule(create(id, every(60_000), call_api("GET", &sink.url("/ok"))))
            .await
            .expect("create");
    }
    client
        .create_schedule(create(
            "broken-run",
            cron(YEARLY, "UTC"),
            call_api("GET", &sink.url("/x")),
        ))
        .await
        .expect("create");
    // A run left PENDING: the executor is down when it is triggered.
    executor.stop().await;
    let run = client
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: "broken-run".into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .run
        .expect("run");
    scheduler.stop().await;

    let db = dir.path().join("scheduler.db");
    corrupt(
        &db,
        "UPDATE runs SET action = '{not json' WHERE id = ?",
        &run.id,
    )
    .await;
    corrupt(
        &db,
        "UPDATE schedules SET spec = '[' WHERE id = ?",
        "broken-spec",
    )
    .await;
    // Make the broken schedule and the healthy one due now.
    corrupt(
        &db,
        "UPDATE schedules SET next_fire_ms = 0 WHERE id = ?",
        "broken-spec",
    )
    .await;

    let executor = start_executor_at(dir.path(), &executor_addr).await;
    let scheduler = start_scheduler(dir.path(), &executor.url()).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    let failed = wait_for_run(&client, &run.id, "the unreadable run to fail", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;
    assert!(
        failed.error.contains("the run cannot be read"),
        "{}",
        failed.error
    );

    // The schedule cannot be read through the API any more (INTERNAL); the ledger shows
    // it paused with the problem as its note.
    let note = eventually(
        Duration::from_secs(30),
        "the broken schedule to pause",
        || {
            let db = db.clone();
            async move {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
                let pool = sqlx::SqlitePool::connect_with(options).await.ok()?;
                let row: Option<(String, Option<String>)> = sqlx::query_as(
                    "SELECT state, pause_note FROM schedules WHERE id = 'broken-spec'",
                )
                .fetch_optional(&pool)
                .await
                .ok()?;
                pool.close().await;
                match row? {
                    (state, note) if state == "PAUSED" => note,
                    _ => None,
                }
            }
        },
    )
    .await;
    assert!(note.contains("corrupt row"), "{note}");

    // The service still serves and fires: a manual run of the healthy schedule succeeds.
    let healthy = client
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: "healthy".into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .run
        .expect("run");
    wait_for_run(&client, &healthy.id, "the healthy run", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    scheduler.stop().await;
    executor.stop().await;
}
