//! Several scheduler replicas on one PostgreSQL (issue 6), as real processes: a replica
//! frozen with SIGSTOP past its lease loses its run to another, and its late writes are
//! fenced off when it wakes up; three replicas starting at the same instant apply the
//! migrations once. SQLite serves one scheduler per file: these tests skip there.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use almanac_proto::scheduler::v1 as pb;
use common::procs::{Proc, snapshot_binary};
use common::sink::Sink;
use common::{call_api, eventually, scheduler_client, status_of, trigger_idle_schedule};
use nix::sys::signal::{Signal, kill};
use sqlx::Row;

/// Whether the test applies (PostgreSQL); prints why not otherwise.
fn on_postgres() -> bool {
    let on = almanac_testkit::on_postgres();
    if !on {
        println!("SKIPPED: scheduler replicas need PostgreSQL (ALMANAC_TEST_BACKEND=postgres)");
    }
    on
}

/// The scheduler's database of the test owning `dir`.
async fn scheduler_db(dir: &Path) -> sqlx::PgPool {
    let url = almanac_testkit::postgres_database_for(dir, "scheduler").expect("on postgres");
    sqlx::PgPool::connect(&url).await.expect("connect")
}

fn log_of(dir: &Path, replica: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{replica}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_loses_its_run_and_its_late_writes_are_fenced_off() {
    if !on_postgres() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let bin = snapshot_binary(dir);
    let sink = Sink::start().await;
    // Long enough for the frozen replica's lease (2 s) to expire and another to adopt.
    sink.respond("/slow", 200, Duration::from_secs(6));
    let executor = Proc::executor_of(&bin, dir, "127.0.0.1:0");
    let ttl = ["--lease-ttl", "2s"];
    let zombie = Proc::scheduler_replica(&bin, dir, &executor.url, "zombie", &ttl);
    let adopter = Proc::scheduler_replica(&bin, dir, &executor.url, "adopter", &ttl);
    let mut via_zombie = scheduler_client(&zombie.url).await;
    let via_adopter = scheduler_client(&adopter.url).await;
    let db = scheduler_db(dir).await;

    // A manual run is driven by the replica that wrote it.
    let run =
        trigger_idle_schedule(&mut via_zombie, "slow", call_api("GET", &sink.url("/slow"))).await;
    let owner = |db: sqlx::PgPool, run_id: String| async move {
        sqlx::query("SELECT owner, lease_epoch FROM scheduler.runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&db)
            .await
            .map(|r| {
                (
                    r.get::<Option<String>, _>("owner"),
                    r.get::<i64, _>("lease_epoch"),
                )
            })
            .expect("read the run's lease")
    };
    eventually(
        Duration::from_secs(20),
        "the call reaches the target",
        || async { (!sink.hits_on("/slow").is_empty()).then_some(()) },
    )
    .await;
    let (first_owner, first_epoch) = owner(db.clone(), run.id.clone()).await;
    assert_eq!(first_owner.as_deref(), Some("zombie"));

    kill(zombie.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    let frozen_at = Instant::now();
    let (_, adopted_epoch) = eventually(
        Duration::from_secs(20),
        "another replica adopts the run",
        || {
            let (db, run_id) = (db.clone(), run.id.clone());
            async move {
                let (who, epoch) = owner(db, run_id).await;
                (who.as_deref() == Some("adopter")).then_some(((), epoch))
            }
        },
    )
    .await;
    println!(
        "adopted {:.1} s after the freeze (epoch {first_epoch} -> {adopted_epoch})",
        frozen_at.elapsed().as_secs_f64()
    );
    assert!(adopted_epoch > first_epoch);
    let done = common::wait_for_run(
        &via_adopter,
        &run.id,
        "the adopter finishes the run",
        common::is_terminal,
    )
    .await;
    assert_eq!(status_of(&done), pb::RunStatus::Succeeded, "{done:?}");

    // The frozen replica wakes up holding the execution's end in its stream: its write
    // carries the old epoch and is refused.
    kill(zombie.pid(), Signal::SIGCONT).expect("SIGCONT");
    let line = eventually(
        Duration::from_secs(30),
        "the woken replica's write is fenced off",
        || async {
            log_of(dir, "zombie")
                .lines()
                .find(|l| l.contains(&run.id) && l.contains("fenced off"))
                .map(str::to_owned)
        },
    )
    .await;
    println!("zombie: {line}");
    // It keeps serving, and the run stays as the adopter wrote it: one attempt, one call.
    let mut via_zombie = scheduler_client(&zombie.url).await;
    let seen = via_zombie
        .get_run(pb::GetRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .expect("the woken replica serves")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(status_of(&seen), pb::RunStatus::Succeeded);
    assert_eq!(seen.attempt, 1);
    assert_eq!(
        (seen.finish_time, seen.start_time),
        (done.finish_time, done.start_time)
    );
    assert_eq!(sink.hits_on("/slow").len(), 1, "the action ran once");
    let (last_owner, last_epoch) = owner(db.clone(), run.id.clone()).await;
    assert_eq!(
        (last_owner.as_deref(), last_epoch),
        (Some("adopter"), adopted_epoch)
    );
    drop((zombie, adopter, executor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_starting_at_once_apply_the_migrations_once() {
    if !on_postgres() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let bin = snapshot_binary(dir);
    // The database exists before the race starts; its schema does not.
    let db = scheduler_db(dir).await;
    let starts: Vec<_> = (0..3)
        .map(|i| {
            let (bin, dir) = (bin.clone(), dir.to_path_buf());
            std::thread::spawn(move || {
                let id = format!("replica-{i}");
                Proc::scheduler_replica(&bin, &dir, "http://127.0.0.1:9", &id, &[])
            })
        })
        .collect();
    let replicas: Vec<Proc> = starts
        .into_iter()
        .map(|t| t.join().expect("starts"))
        .collect();
    for replica in &replicas {
        let mut client = scheduler_client(&replica.url).await;
        client
            .list_schedules(pb::ListSchedulesRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{} serves: {e}", replica.url));
    }
    let rows = sqlx::query(
        "SELECT version, count(*) AS n, bool_and(success) AS ok \
         FROM scheduler._sqlx_migrations GROUP BY version ORDER BY version",
    )
    .fetch_all(&db)
    .await
    .expect("migration history");
    let history: Vec<(i64, i64, bool)> = rows
        .iter()
        .map(|r| (r.get("version"), r.get("n"), r.get("ok")))
        .collect();
    assert_eq!(
        history,
        [(1, 1, true), (2, 1, true), (3, 1, true)],
        "each migration applied once"
    );
}
