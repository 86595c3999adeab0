//! `run_task` on a queue with Python workers (stubs generated from `proto/` at run time):
//! a worker takes a task, reports progress and completes it; a worker SIGKILLed mid-task
//! loses its lease to a second worker and its late completion is refused; a task nobody
//! finishes fails after `max_deliveries`; retryable and final failures.

mod common;
#[path = "common/run_task.rs"]
mod run_task;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    CompleteTaskRequest, ExecutionStatus, HeartbeatRequest, PollTaskRequest, RetryPolicy,
};
use almanac_proto::time::ms_to_duration;
use common::*;
use run_task::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::Code;

// --- a Python worker process -------------------------------------------------------

/// The Python with grpcio and grpcio-tools, or `None` (the test is skipped, saying why)
/// — unless `ALMANAC_REQUIRE_TOOLS=1`, which makes a missing tool a failure.
fn python() -> Option<String> {
    let python = std::env::var("ALMANAC_PYTHON").unwrap_or_else(|_| "python3".into());
    let present = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Some(python);
    }
    let hint = "pip install grpcio grpcio-tools, or set ALMANAC_PYTHON";
    if std::env::var("ALMANAC_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("python grpcio + grpcio-tools are required (ALMANAC_REQUIRE_TOOLS=1): {hint}");
    }
    eprintln!("SKIPPED: python grpcio + grpcio-tools are not installed ({hint})");
    None
}

/// `tests/clients/worker.py` running against an executor; killed when dropped.
struct PyWorker {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl PyWorker {
    fn start(python: &str, executor: &Executor, queue: &str, id: &str, mode: &str) -> Self {
        Self::start_n(python, executor, queue, id, mode, 1)
    }

    fn start_n(
        python: &str,
        executor: &Executor,
        queue: &str,
        id: &str,
        mode: &str,
        count: u32,
    ) -> Self {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut child = Command::new(python)
            .arg(format!("{root}/tests/clients/worker.py"))
            .arg(executor.addr.to_string())
            .arg(format!("{root}/proto"))
            .args([queue, id, mode, &count.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the python worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The JSON of the next line that starts with `kind` (other lines are skipped).
    async fn next(&mut self, kind: &str) -> Value {
        let prefix = format!("{kind} ");
        for _ in 0..1_000 {
            let line = tokio::time::timeout(WAIT, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} line from the worker within the wait"))
                .unwrap_or_else(|| panic!("the worker ended before printing {kind}"));
            if let Some(json) = line.strip_prefix(&prefix) {
                return serde_json::from_str(json).expect("a JSON line");
            }
        }
        panic!("no {kind} line in 1000 lines");
    }

    /// SIGKILL: the worker dies without a word, like a crashed process.
    fn kill9(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker")
    }

    /// Waits for the worker to exit on its own.
    async fn exit(&mut self) -> ExitStatus {
        eventually("the worker exits", || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- Python workers ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_takes_the_task_reports_progress_and_completes_it() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut worker = PyWorker::start(&python, &executor, "agents", "py-1", "complete");

    let events = execute_in_background(&executor, "agent-run-1", queue_task("agents", |_| {}))
        .await
        .unwrap();
    let leased = worker.next("LEASED").await;
    assert_eq!(
        leased["payload"],
        json!({"agent_id": "a-7", "goal": "summarise the news", "max_steps": 5.0})
    );
    assert_eq!(leased["node_id"], "action");
    assert!(worker.exit().await.success());

    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Succeeded as i32, "{end:?}");
    assert_eq!(
        json(end.result.as_ref().expect("a result")),
        json!({
            "worker": "py-1",
            "delivery": 1,
            "agent_id": "a-7",
            "steps": 5,
            "payload": {"agent_id": "a-7", "goal": "summarise the news", "max_steps": 5},
            "idempotency_key": "agent-run-1",
        })
    );
    assert_eq!(
        progress(&events),
        [
            ("action".into(), 10.0, "planning summarise the news".into()),
            ("action".into(), 90.0, "ran 5 steps".into()),
        ]
    );
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "Progress",
            "Progress",
            "NodeSucceeded",
            "ExecutionFinished"
        ]
    );
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_loses_its_lease_and_a_second_worker_completes_it_once() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let run = execute_in_background(
        &executor,
        "killed-worker",
        queue_task("agents", |t| {
            t.heartbeat_timeout = Some(ms_to_duration(2_000))
        }),
    );

    let mut first = PyWorker::start(&python, &executor, "agents", "py-doomed", "hang");
    let leased = first.next("LEASED").await;
    first.next("HUNG").await;
    let status = first.kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the first worker died of SIGKILL"
    );
    let (task_id, dead_lease) = (
        leased["task_id"].as_str().unwrap().to_owned(),
        leased["lease_id"].as_str().unwrap().to_owned(),
    );

    let mut second = PyWorker::start(&python, &executor, "agents", "py-rescuer", "complete");
    let again = second.next("LEASED").await;
    assert_eq!(
        again["task_id"],
        task_id.as_str(),
        "the same task, re-leased"
    );
    assert_eq!(again["delivery"], 2);
    assert_ne!(again["lease_id"], dead_lease.as_str());
    assert!(second.exit().await.success());

    let events = run.await.unwrap();
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Succeeded as i32, "{end:?}");
    let result = json(end.result.as_ref().unwrap());
    assert_eq!(
        (&result["worker"], &result["delivery"]),
        (&json!("py-rescuer"), &json!(2))
    );
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "NodeSucceeded")
            .count(),
        1
    );
    let messages: Vec<String> = progress(&events).into_iter().map(|p| p.2).collect();
    assert_eq!(messages[0], "started, then hung", "{messages:?}");

    // The dead worker's lease is gone for good: its late calls are refused.
    let mut client = workers(&executor).await;
    let late = client
        .complete_task(CompleteTaskRequest {
            task_id: task_id.clone(),
            lease_id: dead_lease.clone(),
            result: None,
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{late:?}");
    assert!(
        late.message()
            .contains("lease expired: the task was re-leased"),
        "{late:?}"
    );
    let beat = client
        .heartbeat(HeartbeatRequest {
            task_id,
            lease_id: dead_lease,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(beat.code(), Code::FailedPrecondition);
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_no_worker_finishes_fails_after_max_deliveries() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let run = execute_in_background(
        &executor,
        "never-finished",
        queue_task("agents", |t| {
            t.heartbeat_timeout = Some(ms_to_duration(500));
            t.max_deliveries = 2;
        }),
    );
    // It polls, never heartbeats: each lease expires and the task is delivered again.
    let mut silent = PyWorker::start_n(&python, &executor, "agents", "py-silent", "silent", 2);
    assert_eq!(silent.next("LEASED").await["delivery"], 1);
    assert_eq!(silent.next("LEASED").await["delivery"], 2);
    assert!(silent.exit().await.success());

    let events = run.await.unwrap();
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Failed as i32, "{end:?}");
    assert!(
        end.error
            .contains("task was delivered 2 times and no worker finished it"),
        "{}",
        end.error
    );
    assert!(!end.retryable);
    let mut client = workers(&executor).await;
    let poll = client
        .poll_task(PollTaskRequest {
            worker_id: "late".into(),
            queues: vec!["agents".into()],
            wait: Some(ms_to_duration(0)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        poll.task.is_none(),
        "a failed task is never delivered again"
    );
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_queues_a_new_task_for_the_next_try() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let run = execute_in_background(
        &executor,
        "retry-me",
        queue_task("agents", |t| {
            t.retry = Some(RetryPolicy {
                max_attempts: 2,
                initial_backoff: Some(ms_to_duration(100)),
                ..Default::default()
            });
        }),
    );
    let mut failing = PyWorker::start(&python, &executor, "agents", "py-flaky", "fail-retryable");
    let first = failing.next("LEASED").await;
    assert!(failing.exit().await.success());
    let mut good = PyWorker::start(&python, &executor, "agents", "py-good", "complete");
    let second = good.next("LEASED").await;
    assert!(good.exit().await.success());

    let (first, second) = (
        first["task_id"].as_str().unwrap().to_owned(),
        second["task_id"].as_str().unwrap().to_owned(),
    );
    assert!(
        first.ends_with("/action/1") && second.ends_with("/action/2"),
        "{first} {second}"
    );
    let events = run.await.unwrap();
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeFailed",
            "NodeRetrying",
            "NodeStarted",
            "Progress",
            "Progress",
            "NodeSucceeded",
            "ExecutionFinished"
        ]
    );
    let failed = events.iter().find_map(|e| match &e.kind {
        Some(EventKind::NodeFailed(f)) => Some(f.clone()),
        _ => None,
    });
    let failed = failed.unwrap();
    assert!(failed.retryable);
    assert!(
        failed.error.contains("the agent gave up (worker py-flaky)"),
        "{failed:?}"
    );
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Succeeded as i32);
    assert_eq!(json(end.result.as_ref().unwrap())["worker"], "py-good");
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_failure_fails_the_execution_at_once_despite_a_retry_policy() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let run = execute_in_background(
        &executor,
        "give-up",
        queue_task("agents", |t| {
            t.retry = Some(RetryPolicy {
                max_attempts: 3,
                initial_backoff: Some(ms_to_duration(100)),
                ..Default::default()
            });
        }),
    );
    let mut failing = PyWorker::start(&python, &executor, "agents", "py-quitter", "fail");
    failing.next("DONE").await;
    let events = run.await.unwrap();
    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeFailed",
            "ExecutionFinished"
        ]
    );
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Failed as i32);
    assert!(!end.retryable);
    assert!(
        end.error
            .contains("worker py-quitter failed the task: the agent gave up"),
        "{}",
        end.error
    );
    executor.stop().await;
}
