//! Schedules that fire, run and end, through the real gRPC API of both services running
//! in this process, with real SQLite files and a real HTTP target on loopback.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::{ms_to_rfc3339, timestamp_to_ms};
use almanac_scheduler::engine::clock::{Clock, ManualClock};
use common::sink::Sink;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_with_seconds_delivers_each_fire_once_with_its_nominal_time() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    let mut client = stack.scheduler_client().await;
    client
        .create_schedule(create(
            "tick",
            cron("* * * * * *", "UTC"),
            call_api("POST", &sink.url("/tick")),
        ))
        .await
        .expect("create");

    let runs = eventually(Duration::from_secs(20), "three succeeded runs", || {
        let mut client = client.clone();
        async move {
            let runs = all_runs(&mut client, "tick").await;
            let done = runs
                .iter()
                .filter(|r| status_of(r) == pb::RunStatus::Succeeded)
                .count();
            (done >= 3).then_some(runs)
        }
    })
    .await;
    client
        .pause_schedule(pb::PauseScheduleRequest {
            schedule_id: "tick".into(),
            ..Default::default()
        })
        .await
        .expect("pause");
    let runs = eventually(Duration::from_secs(20), "no run in flight", || {
        let mut client = client.clone();
        async move {
            let runs = all_runs(&mut client, "tick").await;
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
    .await
    .into_iter()
    .chain(runs)
    .collect::<Vec<_>>();

    let hits = sink.hits_on("/tick");
    let nominal_headers: Vec<&str> = hits
        .iter()
        .map(|h| h.header("x-almanac-nominal-time").unwrap())
        .collect();
    let unique: HashSet<&&str> = nominal_headers.iter().collect();
    assert_eq!(
        unique.len(),
        nominal_headers.len(),
        "every fire arrives once: {nominal_headers:?}"
    );
    for hit in &hits {
        let run_id = hit.header("x-almanac-run-id").expect("run id header");
        let run = runs
            .iter()
            .find(|r| r.id == run_id)
            .expect("every delivery maps to a ledger row");
        assert_eq!(hit.header("x-almanac-schedule-id"), Some("tick"));
        assert_eq!(
            hit.header("x-almanac-nominal-time"),
            Some(ms_to_rfc3339(nominal_ms(run)).as_str())
        );
        assert_eq!(
            hit.header("idempotency-key"),
            Some(format!("{run_id}/1").as_str())
        );
        assert_eq!(hit.method, "POST");
    }
    for run in runs
        .iter()
        .filter(|r| status_of(r) == pb::RunStatus::Succeeded)
    {
        assert_eq!(nominal_ms(run) % 1_000, 0, "cron fires on whole seconds");
        assert_eq!(run.trigger, pb::RunTrigger::Scheduled as i32);
        assert!(
            hits.iter()
                .any(|h| h.header("x-almanac-run-id") == Some(run.id.as_str()))
        );
        assert_eq!(run.attempts.len(), 1);
        assert!(!run.attempts[0].execution_id.is_empty());
        let result = serde_json::to_value(run.result.as_ref().expect("result")).unwrap();
        assert_eq!(result["status"].as_f64(), Some(200.0), "{result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_overlap_starts_one_run_under_200_concurrent_triggers() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/slow", 200, Duration::from_secs(2));
    let mut client = stack.scheduler_client().await;
    // Fires once a year: idle for the whole test.
    client
        .create_schedule(create(
            "busy",
            cron(YEARLY, "UTC"),
            call_api("GET", &sink.url("/slow")),
        ))
        .await
        .expect("create");

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut client = client.clone();
        calls.spawn(async move {
            client
                .trigger_schedule(pb::TriggerScheduleRequest {
                    schedule_id: "busy".into(),
                    request_id: format!("t{i}"),
                    overlap_policy: 0,
                })
                .await
                .expect("trigger")
                .into_inner()
                .run
                .expect("run")
        });
    }
    let mut started = 0;
    let mut skipped = 0;
    while let Some(run) = calls.join_next().await {
        match status_of(&run.unwrap()) {
            pb::RunStatus::Pending | pb::RunStatus::Running => started += 1,
            pb::RunStatus::Skipped => skipped += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!((started, skipped), (1, 199));
    let runs = all_runs(&mut client, "busy").await;
    assert_eq!(runs.len(), 200);
    assert!(
        runs.iter()
            .all(|r| r.trigger == pb::RunTrigger::Manual as i32)
    );
    eventually(Duration::from_secs(20), "the one run succeeds", || {
        let mut client = client.clone();
        async move {
            let runs = all_runs(&mut client, "busy").await;
            runs.iter()
                .any(|r| status_of(r) == pb::RunStatus::Succeeded)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        sink.hits_on("/slow").len(),
        1,
        "the target saw exactly one request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_fails_the_run_with_the_http_status() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/down", 503, Duration::ZERO);
    let mut client = stack.scheduler_client().await;
    let run =
        trigger_idle_schedule(&mut client, "fails", call_api("GET", &sink.url("/down"))).await;
    let run = wait_for_run(&client, &run.id, "the run fails", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;
    assert!(
        run.error.contains("503"),
        "the error names the HTTP status: {}",
        run.error
    );
    assert!(run.attempts[0].retryable, "a 503 is worth another attempt");
    assert_eq!(run.attempts[0].status, pb::RunStatus::Failed as i32);
}

/// A stack whose scheduler runs on a clock the test moves.
async fn manual_stack(clock: &ManualClock) -> Stack {
    let dir = tempfile::tempdir().expect("tempdir");
    let executor = start_executor(dir.path()).await;
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let scheduler = start_scheduler_with(dir.path(), &executor.url(), Some(clock)).await;
    Stack {
        dir,
        executor,
        scheduler,
    }
}

/// 2030-01-01T00:00:00Z: a clock far from today, so nothing depends on the real time.
const T0: i64 = 1_893_456_000_000;

async fn runs_of(
    client: &mut pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel>,
    id: &str,
) -> Vec<pb::Run> {
    all_runs(client, id).await
}

/// The schedule, once the timer has claimed every fire due at `now` (its next fire is
/// later, or it has none).
async fn caught_up(
    client: &mut pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel>,
    id: &str,
    now: i64,
) -> Option<pb::Schedule> {
    let s = client
        .get_schedule(pb::GetScheduleRequest {
            schedule_id: id.to_string(),
        })
        .await
        .ok()?
        .into_inner()
        .schedule?;
    s.next_fire_time
        .as_ref()
        .is_none_or(|t| timestamp_to_ms(t) > now)
        .then_some(s)
}

/// Moves the clock one second at a time until `id` has `n` runs (so the timer sees every
/// second, as it would in real time).
async fn advance_until_runs(
    clock: &ManualClock,
    client: &mut pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel>,
    id: &str,
    n: usize,
) -> Vec<pb::Run> {
    for _ in 0..60 {
        let runs = eventually(Duration::from_secs(5), "the timer to catch up", || {
            let mut client = client.clone();
            let id = id.to_string();
            let now = clock.now_ms();
            async move {
                let runs = all_runs(&mut client, &id).await;
                caught_up(&mut client, &id, now).await.map(|_| runs)
            }
        })
        .await;
        if runs.len() >= n {
            return runs;
        }
        clock.advance(1_000);
    }
    panic!("{id} did not reach {n} runs in 60 simulated seconds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_fires_and_resume_restarts_from_the_next_future_fire() {
    let clock = ManualClock::new(T0);
    let stack = manual_stack(&clock).await;
    let sink = Sink::start().await;
    let mut client = stack.scheduler_client().await;
    client
        .create_schedule(create("p", every(1_000), call_api("GET", &sink.url("/p"))))
        .await
        .expect("create");
    client
        .create_schedule(create(
            "witness",
            every(1_000),
            call_api("GET", &sink.url("/w")),
        ))
        .await
        .expect("create");
    advance_until_runs(&clock, &mut client, "p", 2).await;

    let paused = client
        .pause_schedule(pb::PauseScheduleRequest {
            schedule_id: "p".into(),
            note: "maintenance".into(),
            identity: "ops".into(),
        })
        .await
        .expect("pause")
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(paused.state, pb::ScheduleState::Paused as i32);
    assert_eq!(paused.pause.as_ref().unwrap().note, "maintenance");
    assert!(paused.next_fire_time.is_none());
    let before = runs_of(&mut client, "p").await.len();
    let witness_before = runs_of(&mut client, "witness").await.len();
    // Ten seconds pass: the witness keeps firing, the paused schedule does not.
    advance_until_runs(&clock, &mut client, "witness", witness_before + 10).await;
    assert_eq!(
        runs_of(&mut client, "p").await.len(),
        before,
        "a paused schedule does not fire"
    );

    let now = clock.now_ms();
    let resumed = client
        .resume_schedule(pb::ResumeScheduleRequest {
            schedule_id: "p".into(),
        })
        .await
        .expect("resume")
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(resumed.state, pb::ScheduleState::Active as i32);
    let next = timestamp_to_ms(resumed.next_fire_time.as_ref().unwrap());
    assert!(
        next >= now,
        "resume starts from the next future fire, not the paused past"
    );
    let runs = advance_until_runs(&clock, &mut client, "p", before + 1).await;
    let newest = runs.iter().map(nominal_ms).max().unwrap();
    assert!(newest >= now, "no fire from the paused period was run");
    assert!(runs.iter().all(|r| status_of(r) != pb::RunStatus::Missed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaching_max_runs_completes_the_schedule() {
    let clock = ManualClock::new(T0);
    let stack = manual_stack(&clock).await;
    let sink = Sink::start().await;
    let mut client = stack.scheduler_client().await;
    let mut req = create("twice", every(1_000), call_api("GET", &sink.url("/m")));
    req.schedule.as_mut().unwrap().max_runs = Some(2);
    client.create_schedule(req).await.expect("create");
    // A manual run does not count against max_runs.
    client
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: "twice".into(),
            ..Default::default()
        })
        .await
        .expect("trigger");
    // Two scheduled fires and the manual run.
    advance_until_runs(&clock, &mut client, "twice", 3).await;
    // Second by second until it completes: a fire due while a run is still in flight is
    // skipped by overlap and does not count.
    let mut completed = None;
    for _ in 0..30 {
        let s = eventually(Duration::from_secs(5), "the timer to catch up", || {
            let mut client = client.clone();
            let now = clock.now_ms();
            async move { caught_up(&mut client, "twice", now).await }
        })
        .await;
        if s.state == pb::ScheduleState::Completed as i32 {
            completed = Some(s);
            break;
        }
        clock.advance(1_000);
    }
    let schedule = completed.expect("the schedule completes within 30 simulated seconds");
    assert_eq!(schedule.run_count, 2);
    assert!(
        schedule.completion_reason.contains("max_runs"),
        "{}",
        schedule.completion_reason
    );
    assert!(schedule.next_fire_time.is_none());
    let runs = runs_of(&mut client, "twice").await;
    let scheduled = runs
        .iter()
        .filter(|r| r.trigger == pb::RunTrigger::Scheduled as i32 && r.attempt > 0)
        .count();
    assert_eq!(
        scheduled, 2,
        "two dispatched scheduled runs (a fire skipped by overlap does not count)"
    );
    let resume = client
        .resume_schedule(pb::ResumeScheduleRequest {
            schedule_id: "twice".into(),
        })
        .await;
    assert_eq!(resume.unwrap_err().code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_missed_while_down_follow_the_default_catch_up() {
    let clock = ManualClock::new(T0);
    let dir = tempfile::tempdir().expect("tempdir");
    let executor = start_executor(dir.path()).await;
    let sink = Sink::start().await;
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let scheduler = start_scheduler_with(dir.path(), &executor.url(), Some(shared.clone())).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    client
        .create_schedule(create("c", every(1_000), call_api("GET", &sink.url("/c"))))
        .await
        .expect("create");
    advance_until_runs(&clock, &mut client, "c", 3).await;
    // Stopped with nothing in flight: a run the stop left RUNNING would be in flight at
    // the restart's first claim, and the recovery run would be skipped behind it (the
    // overlap policy at work, not the catch-up this test is about).
    eventually(Duration::from_secs(10), "the runs to finish", || {
        let mut client = client.clone();
        async move {
            let runs = all_runs(&mut client, "c").await;
            runs.iter()
                .all(|r| {
                    !matches!(
                        status_of(r),
                        pb::RunStatus::Pending | pb::RunStatus::Running | pb::RunStatus::Buffered
                    )
                })
                .then_some(())
        }
    })
    .await;
    let last_before = runs_of(&mut client, "c")
        .await
        .iter()
        .map(nominal_ms)
        .max()
        .unwrap();
    scheduler.stop().await;

    // Down for five minutes: 300 fires missed, 240 of them older than the 1 minute window.
    clock.advance(300_000);
    let scheduler = start_scheduler_with(dir.path(), &executor.url(), Some(shared)).await;
    let client = scheduler_client(&scheduler.url()).await;
    let runs = eventually(
        Duration::from_secs(20),
        "the recovery run to succeed",
        || {
            let mut client = client.clone();
            async move {
                let runs = all_runs(&mut client, "c").await;
                runs.iter()
                    .any(|r| {
                        r.trigger == pb::RunTrigger::Recovery as i32
                            && status_of(r) == pb::RunStatus::Succeeded
                    })
                    .then_some(runs)
            }
        },
    )
    .await;
    let now = clock.now_ms();
    let missed: Vec<_> = runs
        .iter()
        .filter(|r| status_of(r) == pb::RunStatus::Missed)
        .collect();
    assert_eq!(
        missed.len(),
        1,
        "older missed fires are one MISSED range row"
    );
    let range = missed[0].missed.as_ref().unwrap();
    assert_eq!(
        timestamp_to_ms(range.first_time.as_ref().unwrap()),
        last_before + 1_000
    );
    let recovery: Vec<_> = runs
        .iter()
        .filter(|r| r.trigger == pb::RunTrigger::Recovery as i32 && r.attempt > 0)
        .collect();
    assert_eq!(recovery.len(), 1, "RUN_ONCE: one recovery run");
    let coalesced: Vec<_> = runs
        .iter()
        .filter(|r| {
            status_of(r) == pb::RunStatus::Skipped && r.coalesced_into_run_id == recovery[0].id
        })
        .collect();
    assert!(!coalesced.is_empty());
    assert_eq!(
        nominal_ms(recovery[0]),
        coalesced.iter().map(|r| nominal_ms(r)).max().unwrap() + 1_000,
        "the recovery run is the latest missed fire"
    );
    // Every second from the first fire to now is accounted for exactly once.
    let mut covered = BTreeSet::new();
    for run in &runs {
        match &run.missed {
            Some(m) => {
                let first = timestamp_to_ms(m.first_time.as_ref().unwrap());
                let last = timestamp_to_ms(m.last_time.as_ref().unwrap());
                assert_eq!((last - first) / 1_000 + 1, m.count);
                for t in (first..=last).step_by(1_000) {
                    assert!(covered.insert(t), "{t} accounted twice");
                }
            }
            None => assert!(
                covered.insert(nominal_ms(run)),
                "{} accounted twice",
                nominal_ms(run)
            ),
        }
    }
    let first = *covered.first().unwrap();
    let last = *covered.last().unwrap();
    assert_eq!(
        covered.len() as i64,
        (last - first) / 1_000 + 1,
        "no gap in the ledger"
    );
    assert!(last >= now - 1_000);
    scheduler.stop().await;
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_executor_is_not_a_run_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start().await;
    let first = start_executor(dir.path()).await;
    let addr = first.addr;
    let scheduler = start_scheduler(dir.path(), &format!("http://{addr}")).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    client
        .create_schedule(create(
            "patient",
            cron(YEARLY, "UTC"),
            call_api("GET", &sink.url("/later")),
        ))
        .await
        .expect("create while the executor is up");
    // Now nothing listens where the executor was: connections are refused.
    first.stop().await;
    let run = client
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: "patient".into(),
            ..Default::default()
        })
        .await
        .expect("a trigger is accepted while the executor is down")
        .into_inner()
        .run
        .unwrap();
    // For two seconds of refused connections the run stays PENDING on its first attempt.
    let watch_until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < watch_until {
        let now = client
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        assert_eq!(status_of(&now), pb::RunStatus::Pending, "{}", now.error);
        assert_eq!(now.attempts.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let executor = start_executor_at(dir.path(), &addr.to_string()).await;
    let done = wait_for_run(
        &client,
        &run.id,
        "the run to succeed once the executor is back",
        |r| status_of(r) == pb::RunStatus::Succeeded,
    )
    .await;
    assert_eq!(
        done.attempts.len(),
        1,
        "the same attempt was sent again, not a new one"
    );
    let hits = sink.hits_on("/later");
    assert_eq!(hits.len(), 1);
    assert_eq!(
        hits[0].header("idempotency-key"),
        Some(format!("{}/1", run.id).as_str())
    );
    scheduler.stop().await;
    executor.stop().await;
}
