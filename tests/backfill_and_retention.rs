//! BackfillSchedule and retention through the real gRPC API (DESIGN §4.4): a backfill
//! writes the missing fires of a past range once, leaves existing rows alone and keeps to
//! the schedule's start time; retention keeps the newest finished runs and never a
//! waiting one.

mod common;

use std::time::Duration;

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::ms_to_timestamp;
use common::sink::Sink;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_keeps_to_the_schedules_start_time() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    let mut client = stack.scheduler_client().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let hour = 3_600_000;
    let start = now - 2 * hour - hour / 2;
    idle(&mut client, "bounded", &sink.url("/b"), |s| {
        s.spec = Some(cron("0 * * * *", "UTC"));
        s.start_time = Some(ms_to_timestamp(start));
    })
    .await;
    let answer = client
        .backfill_schedule(pb::BackfillScheduleRequest {
            schedule_id: "bounded".into(),
            start_time: Some(ms_to_timestamp(now - 5 * hour)),
            end_time: Some(ms_to_timestamp(now)),
            ..Default::default()
        })
        .await
        .expect("backfill")
        .into_inner();
    let hours_since_start = (start.div_euclid(hour) + 1..=now.div_euclid(hour)).count() as i64;
    assert_eq!(
        answer.created, hours_since_start,
        "only the fires at or after start_time"
    );
    for run in all_runs(&mut client, "bounded").await {
        assert!(nominal_ms(&run) >= start, "{run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_writes_the_missing_fires_of_a_range_and_leaves_existing_rows_alone() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    let mut client = stack.scheduler_client().await;
    // Fires every second; created now, so everything before now is the past.
    let mut req = create("bf", every(1_000), call_api("GET", &sink.url("/bf")));
    req.schedule.as_mut().unwrap().overlap_policy = pb::OverlapPolicy::AllowAll as i32;
    client.create_schedule(req).await.expect("create");
    let runs = eventually(Duration::from_secs(20), "two scheduled runs", || {
        let mut client = client.clone();
        async move {
            let runs = all_runs(&mut client, "bf").await;
            (runs
                .iter()
                .filter(|r| status_of(r) == pb::RunStatus::Succeeded)
                .count()
                >= 2)
                .then_some(runs)
        }
    })
    .await;
    client
        .pause_schedule(pb::PauseScheduleRequest {
            schedule_id: "bf".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let existing: Vec<(String, i64)> = all_runs(&mut client, "bf")
        .await
        .iter()
        .map(|r| (r.id.clone(), nominal_ms(r)))
        .collect();
    let newest = runs.iter().map(nominal_ms).max().unwrap();
    let start = newest - 9_000;
    let answer = client
        .backfill_schedule(pb::BackfillScheduleRequest {
            schedule_id: "bf".into(),
            start_time: Some(ms_to_timestamp(start)),
            end_time: Some(ms_to_timestamp(newest)),
            overlap_policy: 0,
            max_per_second: 50,
        })
        .await
        .expect("backfill")
        .into_inner();
    let in_range = existing
        .iter()
        .filter(|(_, n)| (start..=newest).contains(n))
        .count() as i64;
    assert_eq!(answer.existing, in_range);
    assert_eq!(answer.created, 10 - in_range);
    let runs = eventually(Duration::from_secs(30), "the backfill to finish", || {
        let mut client = client.clone();
        async move {
            let runs = all_runs(&mut client, "bf").await;
            runs.iter()
                .all(|r| {
                    !matches!(
                        status_of(r),
                        pb::RunStatus::Pending | pb::RunStatus::Running
                    )
                })
                .then_some(runs)
        }
    })
    .await;
    for t in (start..=newest).step_by(1_000) {
        let rows: Vec<_> = runs.iter().filter(|r| nominal_ms(r) == t).collect();
        assert_eq!(rows.len(), 1, "one row for {t}");
    }
    for (id, _) in &existing {
        let row = runs
            .iter()
            .find(|r| &r.id == id)
            .expect("existing rows kept");
        assert_ne!(row.trigger, pb::RunTrigger::Backfill as i32);
    }
    let backfilled: Vec<_> = runs
        .iter()
        .filter(|r| r.trigger == pb::RunTrigger::Backfill as i32)
        .collect();
    assert_eq!(backfilled.len() as i64, answer.created);
    assert!(
        backfilled
            .iter()
            .all(|r| status_of(r) == pb::RunStatus::Succeeded)
    );
    let future = client
        .backfill_schedule(pb::BackfillScheduleRequest {
            schedule_id: "bf".into(),
            start_time: Some(ms_to_timestamp(start)),
            end_time: Some(ms_to_timestamp(
                chrono::Utc::now().timestamp_millis() + 60_000,
            )),
            ..Default::default()
        })
        .await;
    assert_eq!(future.unwrap_err().code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_finished_runs_and_never_a_waiting_one() {
    let dir = tempfile::tempdir().unwrap();
    let executor = start_executor(dir.path()).await;
    let scheduler = start_scheduler_tuned(dir.path(), &executor.url(), None, |c| {
        c.engine.retention_every = Duration::from_millis(200);
    })
    .await;
    let sink = Sink::start().await;
    sink.respond("/slow", 200, Duration::from_millis(400));
    let mut client = scheduler_client(&scheduler.url()).await;
    idle(&mut client, "kept", &sink.url("/slow"), |s| {
        s.overlap_policy = pb::OverlapPolicy::BufferAll as i32;
        s.retention = Some(pb::RetentionPolicy {
            keep_last: 2,
            max_age: None,
        });
    })
    .await;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(trigger_now(&mut client, "kept").await);
    }
    wait_for_run(&client, &runs[4].id, "the last run", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    let left = eventually(Duration::from_secs(20), "retention to prune", || {
        let mut client = client.clone();
        async move {
            let left = all_runs(&mut client, "kept").await;
            (left.len() == 2).then_some(left)
        }
    })
    .await;
    let mut ids: Vec<&str> = left.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    let mut newest: Vec<&str> = runs[3..].iter().map(|r| r.id.as_str()).collect();
    newest.sort();
    assert_eq!(ids, newest, "the two newest runs are kept");
}
