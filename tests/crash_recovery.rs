//! Restart tests with real processes killed by SIGKILL: after a crash of the scheduler
//! (while runs are PENDING and RUNNING) or of the executor (mid-action), every run ends
//! terminal, no nominal time has two executions, the target sees repeated requests only
//! under the same Idempotency-Key, and fires missed while down follow the catch-up policy.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::ms_to_duration;
use common::procs::Proc;
use common::sink::Sink;
use common::*;

type Client = pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel>;

async fn wait_all_terminal(client: &Client, ids: &[&str]) -> HashMap<String, Vec<pb::Run>> {
    eventually(Duration::from_secs(60), "every run to end", || {
        let mut client = client.clone();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        async move {
            let mut all = HashMap::new();
            for id in ids {
                let runs = all_runs(&mut client, &id).await;
                if runs.iter().any(|r| {
                    matches!(
                        status_of(r),
                        pb::RunStatus::Pending | pb::RunStatus::Running
                    )
                }) {
                    return None;
                }
                all.insert(id, runs);
            }
            Some(all)
        }
    })
    .await
}

async fn pause(client: &mut Client, id: &str) {
    client
        .pause_schedule(pb::PauseScheduleRequest {
            schedule_id: id.into(),
            note: "test over".into(),
            ..Default::default()
        })
        .await
        .expect("pause");
}

/// Checks the ledger against what the target saw: one row per nominal time, every
/// delivery maps to a row's attempt, and a nominal time is delivered under one key only.
fn check_ledger_against_sink(runs: &[pb::Run], sink: &Sink, path: &str) {
    let mut nominals = BTreeSet::new();
    for run in runs
        .iter()
        .filter(|r| r.trigger != pb::RunTrigger::Manual as i32)
    {
        assert!(
            nominals.insert(nominal_ms(run)),
            "two ledger rows for nominal {}",
            nominal_ms(run)
        );
        assert!(
            !matches!(
                status_of(run),
                pb::RunStatus::Pending | pb::RunStatus::Running
            ),
            "run {} not terminal",
            run.id
        );
    }
    let by_id: HashMap<&str, &pb::Run> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut keys_by_nominal: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for hit in sink.hits_on(path) {
        let run_id = hit.header("x-almanac-run-id").expect("run id header");
        let run = by_id
            .get(run_id)
            .unwrap_or_else(|| panic!("delivery for unknown run {run_id}"));
        let key = hit.header("idempotency-key").expect("key").to_string();
        assert!(
            run.attempts.iter().any(|a| a.execution_key == key),
            "delivery key {key} is an attempt of run {run_id}"
        );
        keys_by_nominal
            .entry(hit.header("x-almanac-nominal-time").unwrap().to_string())
            .or_default()
            .insert(key);
    }
    for (nominal, keys) in keys_by_nominal {
        assert_eq!(
            keys.len(),
            1,
            "nominal {nominal} delivered under several keys: {keys:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_killed_while_runs_are_pending_and_running_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.respond("/slow", 200, Duration::from_millis(1_500));
    let executor = Proc::executor(dir.path(), "127.0.0.1:0");
    let scheduler = Proc::scheduler(dir.path(), &executor.url);
    let mut client = scheduler_client(&scheduler.url).await;

    // Runs that are RUNNING when the scheduler dies: a slow target, overlapping fires.
    let mut running = create(
        "running",
        every(1_000),
        call_api("POST", &sink.url("/slow")),
    );
    running.schedule.as_mut().unwrap().overlap_policy = pb::OverlapPolicy::AllowAll as i32;
    client.create_schedule(running).await.expect("create");
    // Runs that are PENDING when it dies: each waits out a jitter of up to 4 s.
    let mut pending = create(
        "pending",
        every(1_000),
        call_api("POST", &sink.url("/fast")),
    );
    pending.schedule.as_mut().unwrap().jitter = Some(ms_to_duration(4_000));
    pending.schedule.as_mut().unwrap().overlap_policy = pb::OverlapPolicy::AllowAll as i32;
    client.create_schedule(pending).await.expect("create");

    eventually(
        Duration::from_secs(20),
        "runs both PENDING and RUNNING",
        || {
            let mut client = client.clone();
            async move {
                let a = all_runs(&mut client, "running").await;
                let b = all_runs(&mut client, "pending").await;
                let is = |runs: &[pb::Run], s| runs.iter().any(|r| status_of(r) == s);
                (is(&a, pb::RunStatus::Running) && is(&b, pb::RunStatus::Pending)).then_some(())
            }
        },
    )
    .await;
    scheduler.kill9();
    let down_from = Instant::now();
    // Down for three seconds, through three fires of each schedule.
    std::thread::sleep(Duration::from_secs(3));
    let scheduler = Proc::scheduler(dir.path(), &executor.url);
    let restarted_ms = chrono::Utc::now().timestamp_millis();
    let mut client = scheduler_client(&scheduler.url).await;
    // Let it fire normally after recovery, then stop firing.
    eventually(
        Duration::from_secs(20),
        "a scheduled fire after the restart",
        || {
            let mut client = client.clone();
            async move {
                let runs = all_runs(&mut client, "running").await;
                runs.iter()
                    .any(|r| {
                        r.trigger == pb::RunTrigger::Scheduled as i32
                            && nominal_ms(r) > restarted_ms
                    })
                    .then_some(())
            }
        },
    )
    .await;
    pause(&mut client, "running").await;
    pause(&mut client, "pending").await;
    let all = wait_all_terminal(&client, &["running", "pending"]).await;
    assert!(down_from.elapsed() < Duration::from_secs(120));

    for (id, path) in [("running", "/slow"), ("pending", "/fast")] {
        let runs = &all[id];
        check_ledger_against_sink(runs, &sink, path);
        // Nothing dispatched was lost: every dispatched run ended SUCCEEDED.
        for run in runs.iter().filter(|r| r.attempt > 0) {
            assert_eq!(
                status_of(run),
                pb::RunStatus::Succeeded,
                "{id} run {} ended {:?}: {}",
                run.id,
                status_of(run),
                run.error
            );
        }
        // The downtime was caught up by RUN_ONCE: a recovery run and coalesced rows.
        assert!(
            runs.iter()
                .any(|r| r.trigger == pb::RunTrigger::Recovery as i32),
            "{id} has recovery rows"
        );
        // No gap: every second from the first to the last nominal time has one row.
        let nominals: BTreeSet<i64> = runs.iter().map(nominal_ms).collect();
        let (first, last) = (*nominals.first().unwrap(), *nominals.last().unwrap());
        assert_eq!(
            nominals.len() as i64,
            (last - first) / 1_000 + 1,
            "{id}: a fire is missing from the ledger"
        );
    }
    assert!(
        scheduler.terminate() == Some(0),
        "the scheduler stops cleanly on SIGTERM"
    );
    assert!(
        executor.terminate() == Some(0),
        "the executor stops cleanly on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_action_resumes_under_the_same_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.respond("/slow", 200, Duration::from_secs(3));
    let executor = Proc::executor(dir.path(), "127.0.0.1:0");
    let port = executor.port();
    let scheduler = Proc::scheduler(dir.path(), &executor.url);
    let mut client = scheduler_client(&scheduler.url).await;
    let run = trigger_idle_schedule(&mut client, "job", call_api("POST", &sink.url("/slow"))).await;
    eventually(
        Duration::from_secs(20),
        "the target to receive the call",
        || {
            let sink = sink.clone();
            async move { (!sink.hits_on("/slow").is_empty()).then_some(()) }
        },
    )
    .await;
    executor.kill9();
    std::thread::sleep(Duration::from_millis(500));
    // Back on the same address, as a restarted pod behind a Service would be.
    let executor = Proc::executor(dir.path(), &format!("127.0.0.1:{port}"));
    let done = wait_for_run(&client, &run.id, "the run to end", is_terminal).await;
    assert_eq!(status_of(&done), pb::RunStatus::Succeeded, "{}", done.error);
    let hits = sink.hits_on("/slow");
    assert!(
        hits.len() >= 2,
        "the action was attempted again after the crash ({} calls)",
        hits.len()
    );
    let keys: BTreeSet<&str> = hits
        .iter()
        .map(|h| h.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        [format!("{}/1", run.id).as_str()],
        "one key for every call"
    );
    assert_eq!(done.attempts.len(), 1, "one attempt, one execution");
    assert_eq!(scheduler.terminate(), Some(0));
    assert_eq!(executor.terminate(), Some(0));
}
