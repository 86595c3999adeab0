//! Operating runs from the command line: `almanac run rerun`, `almanac run cancel` and
//! `almanac schedule backfill`, each run as the real binary against both services in
//! process on 127.0.0.1:0 (real SQLite files in a tempdir) and a loopback HTTP target that
//! fails, answers slowly or succeeds as each test needs. What the commands print is checked
//! against the ledger read back through the gRPC API.

mod cli_support;
mod common;

use std::path::PathBuf;
use std::time::Duration;

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::ms_to_rfc3339;
use cli_support::{Run, run_almanac};
use common::sink::Sink;
use common::*;
use serde_json::Value;

const HOUR_MS: i64 = 3_600_000;

/// The CLI pointed at a running stack.
struct Cli {
    scheduler: String,
    executor: String,
    scratch: PathBuf,
}

impl Cli {
    fn new(stack: &Stack) -> Cli {
        Cli {
            scheduler: stack.scheduler.url(),
            executor: stack.executor.url(),
            scratch: stack.dir.path().to_owned(),
        }
    }

    /// Runs `almanac --scheduler S --executor E <args>` to its end (at most 60 s), off the
    /// runtime's threads so that the in-process servers keep serving meanwhile.
    async fn almanac(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "--scheduler".to_owned(),
            self.scheduler.clone(),
            "--executor".to_owned(),
            self.executor.clone(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let scratch = self.scratch.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            run_almanac(&args, &scratch)
        })
        .await
        .expect("the CLI thread")
    }

    /// `schedule trigger ID`, returning the new run's id.
    async fn trigger(&self, schedule_id: &str) -> (String, Value) {
        let run = self
            .almanac(&["--output", "json", "schedule", "trigger", schedule_id])
            .await
            .ok()
            .json();
        let id = run["run"]["id"].as_str().expect("a run id").to_owned();
        (id, run)
    }
}

/// An int64 of canonical proto3 JSON: a string, and absent when zero.
fn int64(v: &Value) -> i64 {
    match v {
        Value::Null => 0,
        Value::String(s) => s.parse().expect("an int64"),
        other => other.as_i64().expect("an int64"),
    }
}

/// The cells of a `schedule runs` table row: NOMINAL TIME, TRIGGER, STATUS, ATTEMPT, ...
fn cells(row: &str) -> Vec<&str> {
    row.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_gives_a_failed_run_a_second_attempt_that_can_succeed() {
    let stack = Stack::start().await;
    let cli = Cli::new(&stack);
    let client = stack.scheduler_client().await;
    let sink = Sink::start().await;
    sink.respond("/fixable", 500, Duration::ZERO);
    let url = sink.url("/fixable");
    cli.almanac(&[
        "schedule", "create", "fixable", "--cron", YEARLY, "--url", &url,
    ])
    .await
    .ok();
    let (run_id, _) = cli.trigger("fixable").await;
    wait_for_run(&client, &run_id, "the first attempt to fail", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;

    sink.respond("/fixable", 200, Duration::ZERO);
    let rerun = cli.almanac(&["run", "rerun", &run_id]).await.ok();
    let lines: Vec<&str> = rerun.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("run {run_id} of schedule fixable: ")),
        "{rerun}"
    );
    assert!(lines[0].ends_with(", attempt 2"), "{rerun}");
    assert!(lines[1].starts_with("NOMINAL TIME"), "{rerun}");
    assert_eq!(cells(lines[2])[1], "manual", "{rerun}");
    assert_eq!(cells(lines[2])[3], "2", "the ATTEMPT column: {rerun}");
    let done = wait_for_run(&client, &run_id, "the second attempt to succeed", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(done.attempts[0].status, pb::RunStatus::Failed as i32);
    // The executor tries the 500 a few times inside the first execution, all under one
    // key; the rerun is a new execution under a new key.
    let mut keys: Vec<String> = sink
        .hits_on("/fixable")
        .iter()
        .map(|h| h.header("idempotency-key").unwrap_or_default().to_owned())
        .collect();
    keys.dedup();
    let attempt_keys: Vec<&str> = done
        .attempts
        .iter()
        .map(|a| a.execution_key.as_str())
        .collect();
    assert_eq!(keys, attempt_keys);

    let again = cli
        .almanac(&["--output", "json", "run", "rerun", &run_id])
        .await
        .ok()
        .json();
    assert_eq!(again["run"]["id"], run_id.as_str());
    assert_eq!(again["run"]["attempt"], 3, "{again:#}");
    wait_for_run(&client, &run_id, "the third attempt to succeed", |r| {
        r.attempt == 3 && status_of(r) == pb::RunStatus::Succeeded
    })
    .await;

    let unknown = cli.almanac(&["run", "rerun", "no-such-run"]).await.code(2);
    assert!(
        unknown.stderr.starts_with("error: NOT_FOUND: "),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_writes_a_run_per_past_fire_once_and_a_second_backfill_writes_none() {
    let stack = Stack::start().await;
    let cli = Cli::new(&stack);
    let mut client = stack.scheduler_client().await;
    let sink = Sink::start().await;
    let url = sink.url("/hourly");
    let now = chrono::Utc::now().timestamp_millis();
    let start = ms_to_rfc3339(now - 24 * HOUR_MS);
    cli.almanac(&[
        "schedule", "create", "hourly", "--every", "1h", "--start", &start, "--url", &url,
    ])
    .await
    .ok();
    // Three whole hours, all in the past: `--from` and `--to` are both inclusive.
    let top = now - now.rem_euclid(HOUR_MS);
    let (from, to) = (top - 4 * HOUR_MS, top - 2 * HOUR_MS);
    let (from_text, to_text) = (ms_to_rfc3339(from), ms_to_rfc3339(to));
    let range = ["--from", from_text.as_str(), "--to", to_text.as_str()];

    let first = cli
        .almanac(&[&["schedule", "backfill", "hourly"], &range[..]].concat())
        .await
        .ok();
    let lines: Vec<&str> = first.stdout.lines().collect();
    assert_eq!(
        lines[0], "3 runs written, 0 fires already had a run",
        "{first}"
    );
    let mut printed: Vec<&str> = lines[1..].to_vec();
    assert_eq!(printed.len(), 3, "one run id a line: {first}");
    let runs = eventually(Duration::from_secs(30), "the backfill runs to end", || {
        let mut client = client.clone();
        async move {
            let runs = all_runs(&mut client, "hourly").await;
            runs.iter().all(is_terminal).then_some(runs)
        }
    })
    .await;
    let mut backfilled: Vec<&pb::Run> = runs
        .iter()
        .filter(|r| r.trigger == pb::RunTrigger::Backfill as i32)
        .collect();
    backfilled.sort_by_key(|r| nominal_ms(r));
    let nominal: Vec<i64> = backfilled.iter().map(|r| nominal_ms(r)).collect();
    assert_eq!(nominal, vec![from, from + HOUR_MS, to]);
    assert!(
        backfilled
            .iter()
            .all(|r| status_of(r) == pb::RunStatus::Succeeded),
        "{backfilled:#?}"
    );
    let mut ids: Vec<&str> = backfilled.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    printed.sort();
    assert_eq!(printed, ids, "the printed ids are the backfill runs");

    let second = cli
        .almanac(&[&["schedule", "backfill", "hourly"], &range[..]].concat())
        .await
        .ok();
    assert_eq!(
        second.stdout, "0 runs written, 3 fires already had a run\n",
        "{second}"
    );

    // One more hour before the range: only it is new. As JSON, with the other overlap.
    let earlier = ms_to_rfc3339(from - HOUR_MS);
    let wider = cli
        .almanac(&[
            "--output",
            "json",
            "schedule",
            "backfill",
            "hourly",
            "--from",
            &earlier,
            "--to",
            &to_text,
            "--overlap",
            "buffer-all",
            "--max-per-second",
            "5",
        ])
        .await
        .ok()
        .json();
    assert_eq!(int64(&wider["created"]), 1, "{wider:#}");
    assert_eq!(int64(&wider["existing"]), 3, "{wider:#}");
    assert_eq!(
        wider["runIds"].as_array().map(Vec::len),
        Some(1),
        "{wider:#}"
    );
    let total = all_runs(&mut client, "hourly")
        .await
        .iter()
        .filter(|r| r.trigger == pb::RunTrigger::Backfill as i32)
        .count();
    assert_eq!(total, 4);

    // Only the two overlap policies a backfill takes, and a rate of at least one.
    let base = [&["schedule", "backfill", "hourly"], &range[..]].concat();
    for bad in [["--overlap", "skip"], ["--max-per-second", "0"]] {
        let usage = cli.almanac(&[&base[..], &bad[..]].concat()).await.code(2);
        assert!(usage.stderr.contains(bad[1]), "{usage}");
    }

    let future = ms_to_rfc3339(now + 2 * HOUR_MS);
    let refused = cli
        .almanac(&[
            "schedule", "backfill", "hourly", "--from", &from_text, "--to", &future,
        ])
        .await
        .code(2);
    assert!(
        refused.stderr.starts_with("error: INVALID_ARGUMENT: ")
            && refused.stderr.contains("end_time"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_waiting_run_at_once_and_a_running_one_when_its_call_is_cut() {
    let stack = Stack::start().await;
    let cli = Cli::new(&stack);
    let client = stack.scheduler_client().await;
    let sink = Sink::start().await;
    // Far longer than the test waits: only a cancellation ends the call in time.
    sink.respond("/slow", 200, Duration::from_secs(120));
    let url = sink.url("/slow");
    cli.almanac(&[
        "schedule",
        "create",
        "slow",
        "--cron",
        YEARLY,
        "--url",
        &url,
        "--http-timeout",
        "10m",
        "--overlap",
        "buffer-one",
    ])
    .await
    .ok();
    let (running, _) = cli.trigger("slow").await;
    wait_for_run(&client, &running, "the first run to start", |r| {
        status_of(r) == pb::RunStatus::Running
    })
    .await;
    let (waiting, answer) = cli.trigger("slow").await;
    assert_eq!(answer["run"]["status"], "RUN_STATUS_BUFFERED", "{answer:#}");

    let cancel = cli
        .almanac(&["run", "cancel", &waiting, "--reason", "not needed"])
        .await
        .ok();
    let lines: Vec<&str> = cancel.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("run {waiting} of schedule slow: cancelled"),
        "{cancel}"
    );
    assert!(lines[2].contains("not needed"), "the reason: {cancel}");
    let run = wait_for_run(&client, &waiting, "the waiting run", |_| true).await;
    assert_eq!(status_of(&run), pb::RunStatus::Cancelled);

    let cut = cli
        .almanac(&["--output", "json", "run", "cancel", &running, "--terminate"])
        .await
        .ok()
        .json();
    assert_eq!(cut["run"]["id"], running.as_str(), "{cut:#}");
    let ended = wait_for_run(&client, &running, "the running run to end", is_terminal).await;
    assert_eq!(status_of(&ended), pb::RunStatus::Cancelled, "{ended:#?}");
    assert_eq!(sink.completed("/slow"), 0, "the call was cut, not answered");

    let again = cli.almanac(&["run", "cancel", &running]).await.code(2);
    assert!(
        again.stderr.starts_with("error: FAILED_PRECONDITION: "),
        "{again}"
    );
}
