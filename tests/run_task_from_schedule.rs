//! `run_task` driven from real schedules (scheduler + executor, the executor allowing
//! `/bin/sh`): a queue task completed by a Python worker, a command that succeeds, one
//! that fails with its exit code, a program refused at CreateSchedule. And, with the
//! executor as a real process: SIGKILL of the executor leaves no orphan (the command's
//! shell dies with it by its parent-death signal; what the shell started is killed when
//! the executor starts again, from the process group it recorded).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use almanac_proto::executor::v1::{
    Action, CommandTarget, ExecuteRequest, RetryPolicy, RunTaskAction, action::Kind,
    run_task_action::Target,
};
use almanac_proto::scheduler::v1 as pb;
use common::*;
use serde_json::json;
use tokio::sync::oneshot;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// The first of `/bin/NAME`, `/usr/bin/NAME` on this machine.
fn program(name: &str) -> String {
    ["/bin", "/usr/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("no {name} on this machine"))
}

/// An executor in this process that allows `programs`, with WorkerService on its port.
struct InProcessExecutor {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessExecutor {
    async fn start(dir: &Path, programs: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = almanac_executor::config::Config::new(dir.join("executor.db"));
        config.database_url = almanac_testkit::postgres_database_for(dir, "executor");
        config.actions.commands.allow = programs.iter().map(PathBuf::from).collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            almanac_executor::server::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("executor runs");
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the executor stops")
            .expect("the executor task");
    }
}

fn run_task(target: Target) -> Action {
    Action {
        kind: Some(Kind::RunTask(RunTaskAction {
            target: Some(target),
            retry: Some(RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

fn command(argv: &[&str]) -> Action {
    run_task(Target::Command(CommandTarget {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }))
}

async fn finished_run(
    client: &mut pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel>,
    schedule: &str,
    action: Action,
) -> pb::Run {
    let run = trigger_idle_schedule(client, schedule, action).await;
    wait_for_run(
        client,
        &run.id,
        &format!("{schedule} to finish"),
        is_terminal,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_task_schedule_ends_succeeded_with_the_workers_result() {
    let python = std::env::var("ALMANAC_PYTHON").unwrap_or_else(|_| "python3".into());
    let present = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !tool_available(
        "python grpcio + grpcio-tools",
        present,
        "pip install grpcio grpcio-tools",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let executor = InProcessExecutor::start(dir.path(), &[]).await;
    let scheduler = start_scheduler(dir.path(), &executor.url()).await;
    let mut client = scheduler_client(&scheduler.url()).await;

    let root = env!("CARGO_MANIFEST_DIR");
    let mut worker = Command::new(&python);
    worker
        .arg(format!("{root}/tests/clients/worker.py"))
        .arg(executor.addr.to_string())
        .arg(format!("{root}/proto"))
        .args(["agents", "py-scheduled", "complete"]);
    let worker = tokio::task::spawn_blocking(move || run_command(&mut worker, WAIT * 2));

    let mut action = run_task(Target::Queue("agents".into()));
    if let Some(Kind::RunTask(t)) = &mut action.kind {
        let payload =
            json!({"agent_id": "nightly-agent", "goal": "triage {{ run.id }}", "max_steps": 3});
        t.payload = match almanac_executor::json::json_to_pb(&payload).kind {
            Some(pbjson_types::value::Kind::StructValue(s)) => Some(s),
            _ => unreachable!(),
        };
    }
    let run = finished_run(&mut client, "agent-nightly", action).await;
    let (ok, out, err) = worker.await.unwrap();
    assert!(ok, "the worker failed:\n{out}\n{err}");
    assert_eq!(status_of(&run), pb::RunStatus::Succeeded, "{run:?}");
    let result = almanac_executor::json::pb_to_json(run.result.as_ref().expect("a result"));
    assert_eq!(result["worker"], "py-scheduled");
    assert_eq!(result["agent_id"], "nightly-agent");
    assert_eq!(
        result["payload"]["goal"],
        format!("triage {}", run.id),
        "the payload's templates are rendered per run"
    );
    scheduler.stop().await;
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_schedules_end_succeeded_or_failed_with_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let sh = program("sh");
    let executor = InProcessExecutor::start(dir.path(), &[&sh]).await;
    let scheduler = start_scheduler(dir.path(), &executor.url()).await;
    let mut client = scheduler_client(&scheduler.url()).await;

    let ok = finished_run(
        &mut client,
        "report",
        command(&[
            &sh,
            "-c",
            "echo \"run $ALMANAC_RUN_ID of $ALMANAC_SCHEDULE_ID ({{ run.id }})\"",
        ]),
    )
    .await;
    assert_eq!(status_of(&ok), pb::RunStatus::Succeeded, "{ok:?}");
    let result = almanac_executor::json::pb_to_json(ok.result.as_ref().expect("a result"));
    assert_eq!(result["exit_code"], 0);
    assert_eq!(
        result["stdout_tail"],
        format!("run {} of report ({})\n", ok.id, ok.id)
    );

    let failed = finished_run(
        &mut client,
        "broken",
        command(&[&sh, "-c", "echo 'no backup target' >&2; exit 7"]),
    )
    .await;
    assert_eq!(status_of(&failed), pb::RunStatus::Failed, "{failed:?}");
    assert!(
        failed.error.contains(&format!("{sh} exited with code 7"))
            && failed.error.contains("no backup target"),
        "{}",
        failed.error
    );
    scheduler.stop().await;
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_schedule_refuses_a_program_the_executor_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let sh = program("sh");
    let executor = InProcessExecutor::start(dir.path(), &[&sh]).await;
    let scheduler = start_scheduler(dir.path(), &executor.url()).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    let refused = client
        .create_schedule(create(
            "sneaky",
            cron(YEARLY, "UTC"),
            command(&[&program("touch"), "/tmp/should-not-exist"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("schedule.action.run_task.command.argv"),
        "{refused:?}"
    );
    scheduler.stop().await;
    executor.stop().await;
}

// --- SIGKILL of a real executor process ---------------------------------------------

/// A process killed (SIGKILL) when dropped, so that a failing test leaves nothing behind.
struct Proc(Child);

impl Proc {
    fn signal(&mut self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), signal).unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `almanac executor --config FILE` as a process, its address read from its first line.
fn executor_process(dir: &Path, config: &Path) -> (Proc, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("executor.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_almanac"))
        .args(["executor", "--listen", "127.0.0.1:0"])
        // Restarted under its name, as a pod is: it takes its executions back at once.
        .args(["--replica-id", "executor"])
        .args(common::database_flags(dir, "executor"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start almanac executor");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").expect("utf-8");
    std::thread::spawn(move || for _ in lines {});
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    (Proc(child), url)
}

/// The live (not zombie) processes of a process group, from /proc.
fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_executor_leaves_no_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let sh = program("sh");
    let config = dir.path().join("executor.toml");
    std::fs::write(&config, format!("[commands]\nallow = [{sh:?}]\n")).unwrap();
    let (mut first, url) = executor_process(dir.path(), &config);

    // The command's tree: its shell (the group leader) and two sleeps. Run again after a
    // restart, it sees its pid file and ends at once.
    let pid_file = dir.path().join("pid");
    let script = format!(
        "if [ -e {f} ]; then echo resumed; exit 0; fi; echo $$ > {f}; sleep 300 & sleep 300",
        f = pid_file.display()
    );
    let mut api = executor_client(&url).await;
    let stream = api
        .execute(ExecuteRequest {
            idempotency_key: "orphan-check".into(),
            action: Some(command(&[&sh, "-c", &script])),
            ..Default::default()
        })
        .await
        .unwrap();
    let pgid = eventually(WAIT, "the command's pid file", || {
        let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
        async move { text.trim().parse::<i32>().ok() }
    })
    .await;
    eventually(WAIT, "the shell and both sleeps", || {
        let members = live_group_members(pgid);
        async move { (members.len() >= 3).then_some(()) }
    })
    .await;
    drop(stream);

    first.signal(nix::sys::signal::Signal::SIGKILL);
    // The direct child dies with the executor (PR_SET_PDEATHSIG); its children do not.
    let left = eventually(WAIT, "the shell dies with the executor", || {
        let members = live_group_members(pgid);
        async move { (!members.contains(&pgid)).then_some(members) }
    })
    .await;
    assert!(
        !left.is_empty(),
        "the sleeps outlive the shell until the restart"
    );

    let (mut second, url) = executor_process(dir.path(), &config);
    eventually(
        WAIT,
        "the restarted executor kills the recorded group",
        || {
            let members = live_group_members(pgid);
            async move { members.is_empty().then_some(()) }
        },
    )
    .await;
    // The interrupted execution resumed; its command ran again and ended.
    let api = executor_client(&url).await;
    let execution = eventually(WAIT, "the resumed execution ends", || {
        let mut api = api.clone();
        async move {
            let e = api
                .get_execution(almanac_proto::executor::v1::GetExecutionRequest {
                    idempotency_key: "orphan-check".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .execution?;
            (e.status == almanac_proto::executor::v1::ExecutionStatus::Succeeded as i32)
                .then_some(e)
        }
    })
    .await;
    let output = almanac_executor::json::pb_to_json(execution.result.as_ref().unwrap());
    assert_eq!(output["stdout_tail"], "resumed\n");
    second.signal(nix::sys::signal::Signal::SIGTERM);
}
