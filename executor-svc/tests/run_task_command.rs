//! `run_task` commands end to end, against a real executor running real processes: an
//! allow-listed program runs with its exit code, output and a minimal environment; a
//! failing one fails with its code and stderr; any other program is refused before
//! anything runs; the timeout and a terminate kill the whole process group; output tails
//! stay bounded; a resumed command is checked against the configuration again.

mod common;

use std::path::{Path, PathBuf};

use almanac_executor::Config;
use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    Action, CancelExecutionRequest, CancelMode, CommandTarget, ExecutionStatus, RetryPolicy,
    RunTaskAction, ValidateActionRequest, WatchExecutionRequest, action::Kind,
    run_task_action::Target,
};
use almanac_proto::time::ms_to_duration;
use common::*;
use serde_json::json;
use tonic::Code;

/// The first of `/bin/NAME`, `/usr/bin/NAME` on this machine.
fn program(name: &str) -> String {
    ["/bin", "/usr/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("no {name} on this machine"))
}

async fn executor_allowing(db: &Path, programs: &[&str]) -> Executor {
    let mut config = Config::new(db);
    config.actions.commands.allow = programs.iter().map(PathBuf::from).collect();
    Executor::start_with(config).await
}

fn command(argv: &[&str], change: impl FnOnce(&mut CommandTarget)) -> Action {
    let mut target = CommandTarget {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    change(&mut target);
    Action {
        kind: Some(Kind::RunTask(RunTaskAction {
            target: Some(Target::Command(target)),
            retry: Some(RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// The live (not zombie) processes of a process group, read from /proc.
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

/// Waits for a file the command writes (its shell's pid) and returns its content.
async fn read_pid(path: &Path) -> i32 {
    eventually("the command's pid file", || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        async move { text.trim().parse::<i32>().ok() }
    })
    .await
}

#[tokio::test]
async fn an_allow_listed_program_runs_with_its_exit_code_output_and_a_minimal_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (sh, env) = (program("sh"), program("env"));
    let executor = executor_allowing(&dir.path().join("executor.db"), &[&sh, &env]).await;
    let mut client = executor.client().await;
    let work = dir.path().to_str().unwrap().to_owned();

    let script = r#"printf 'hello %s from ' "$GREETING"; pwd; echo oops >&2"#;
    let events = execute_all(
        &mut client,
        execute_request(
            "cmd-ok",
            command(&[&sh, "-c", script], |c| {
                c.env.insert("GREETING".into(), "world".into());
                c.working_dir = work.clone();
            }),
        ),
    )
    .await;
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Succeeded as i32, "{end:?}");
    let result = json(end.result.as_ref().unwrap());
    let canonical = std::fs::canonicalize(&work).unwrap();
    assert_eq!(result["exit_code"], 0);
    assert_eq!(
        result["stdout_tail"],
        format!("hello world from {}\n", canonical.display())
    );
    assert_eq!(result["stderr_tail"], "oops\n");
    assert_eq!(
        (&result["stdout_truncated"], &result["stderr_truncated"]),
        (&json!(false), &json!(false))
    );
    assert!(result["duration_ms"].as_i64().is_some());

    // Nothing of the executor's own environment reaches a command.
    let events = execute_all(
        &mut client,
        execute_request(
            "cmd-env",
            command(&[&env], |c| {
                c.env.insert("MINE".into(), "1".into());
            }),
        ),
    )
    .await;
    let end = finished(&events);
    let stdout = json(end.result.as_ref().unwrap())["stdout_tail"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut names: Vec<&str> = stdout.lines().filter_map(|l| l.split('=').next()).collect();
    names.retain(|n| *n != "HOME");
    names.sort();
    assert_eq!(
        names,
        [
            "ALMANAC_EXECUTION_ID",
            "ALMANAC_IDEMPOTENCY_KEY",
            "ALMANAC_NODE_ID",
            "ALMANAC_TRY",
            "MINE",
            "PATH"
        ],
        "{stdout}"
    );
    assert!(stdout.contains("ALMANAC_IDEMPOTENCY_KEY=cmd-env\n"));
    executor.stop().await;
}

#[tokio::test]
async fn a_non_zero_exit_fails_the_execution_with_the_code_and_the_end_of_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let sh = program("sh");
    let executor = executor_allowing(&dir.path().join("executor.db"), &[&sh]).await;
    let mut client = executor.client().await;
    let script = "echo starting >&2; echo 'disk full' >&2; exit 3";
    let mut action = command(&[&sh, "-c", script], |_| {});
    if let Some(Kind::RunTask(t)) = &mut action.kind {
        t.retry = None; // the default policy: a final failure is not retried
    }
    let events = execute_all(&mut client, execute_request("cmd-fails", action)).await;
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
    assert_eq!(
        end.error,
        format!("{sh} exited with code 3; stderr ends with: starting\ndisk full")
    );
    executor.stop().await;
}

#[tokio::test]
async fn a_program_not_allow_listed_is_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (sh, touch) = (program("sh"), program("touch"));
    let executor = executor_allowing(&dir.path().join("executor.db"), &[&sh]).await;
    let mut client = executor.client().await;
    let marker = dir.path().join("marker");
    let marker = marker.to_str().unwrap();
    // A symlink named like an allowed program still resolves to another one.
    let disguised = dir.path().join("sh");
    std::os::unix::fs::symlink(&touch, &disguised).unwrap();
    let disguised = disguised.to_str().unwrap();

    for (argv0, reason) in [
        (
            touch.as_str(),
            "is not allow-listed by this executor's configuration",
        ),
        (disguised, "is not allow-listed"),
        ("touch", "is not an absolute path"),
        ("{{ run.id }}", "the program may not be a template"),
        ("/no/such/program", "cannot be resolved on this executor"),
    ] {
        let action = command(&[argv0, marker], |_| {});
        let refused = client
            .execute(execute_request(&format!("refused-{argv0}"), action.clone()))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{argv0}: {refused:?}"
        );
        let violations = almanac_proto::status::precondition_violations(&refused);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, "action.run_task.command.argv");
        assert!(
            violations[0].description.contains(reason),
            "{argv0}: {violations:?}"
        );

        let validated = client
            .validate_action(ValidateActionRequest {
                action: Some(action),
                field_prefix: "schedule.action".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(validated.code(), Code::FailedPrecondition);
        assert_eq!(
            almanac_proto::status::precondition_violations(&validated)[0].field,
            "schedule.action.run_task.command.argv"
        );
    }
    assert!(!Path::new(marker).exists(), "nothing ran");
    executor.stop().await;
}

#[tokio::test]
async fn the_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let sh = program("sh");
    let executor = executor_allowing(&dir.path().join("executor.db"), &[&sh]).await;
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 300 & sleep 300", pid_file.display());
    let action = command(&[&sh, "-c", &script], |c| {
        c.timeout = Some(ms_to_duration(1_500));
    });
    let mut client = executor.client().await;
    let run =
        tokio::spawn(
            async move { execute_all(&mut client, execute_request("slow", action)).await },
        );

    let pgid = read_pid(&pid_file).await;
    let running = eventually("the shell and both sleeps", || {
        let members = live_group_members(pgid);
        async move { (members.len() >= 3).then_some(members) }
    })
    .await;
    assert!(running.contains(&pgid), "the shell leads its own group");

    let end = finished(&run.await.unwrap());
    assert_eq!(end.status, ExecutionStatus::Failed as i32, "{end:?}");
    assert_eq!(
        end.error,
        "timed out after 1.5s: the command's process group was killed"
    );
    assert!(end.retryable);
    eventually("no process of the group is left", || {
        let members = live_group_members(pgid);
        async move { members.is_empty().then_some(()) }
    })
    .await;
    executor.stop().await;
}

#[tokio::test]
async fn terminating_the_execution_kills_the_command_group() {
    let dir = tempfile::tempdir().unwrap();
    let sh = program("sh");
    let executor = executor_allowing(&dir.path().join("executor.db"), &[&sh]).await;
    let pid_file = dir.path().join("pid");
    // The shell ignores SIGTERM: only the SIGKILL after the grace stops it.
    let script = format!(
        "trap '' TERM; echo $$ > {}; sleep 300 & wait",
        pid_file.display()
    );
    let mut client = executor.client().await;
    let mut stream = client
        .execute(execute_request(
            "terminate-me",
            command(&[&sh, "-c", &script], |_| {}),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut stream).await.unwrap();
    let id = execution_id(&[first]);
    let pgid = read_pid(&pid_file).await;
    client
        .cancel_execution(CancelExecutionRequest {
            execution_id: id.clone(),
            mode: CancelMode::Terminate as i32,
            reason: "stop".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let events = collect(stream).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Cancelled as i32);
    eventually("the whole group is killed", || {
        let members = live_group_members(pgid);
        async move { members.is_empty().then_some(()) }
    })
    .await;
    executor.stop().await;
}

#[tokio::test]
async fn output_tails_keep_the_last_64_kib_and_say_they_were_cut() {
    let dir = tempfile::tempdir().unwrap();
    let sh = program("sh");
    let executor = executor_allowing(&dir.path().join("executor.db"), &[&sh]).await;
    let mut client = executor.client().await;
    let script = "head -c 300000 /dev/zero | tr '\\0' x; echo END; echo small >&2";
    let events = execute_all(
        &mut client,
        execute_request("loud", command(&[&sh, "-c", script], |_| {})),
    )
    .await;
    let result = json(finished(&events).result.as_ref().expect("a result"));
    let stdout = result["stdout_tail"].as_str().unwrap();
    assert_eq!(stdout.len(), 64 * 1024);
    assert!(stdout.ends_with("xxEND\n"));
    assert_eq!(result["stdout_truncated"], true);
    assert_eq!(
        (&result["stderr_tail"], &result["stderr_truncated"]),
        (&json!("small\n"), &json!(false))
    );
    executor.stop().await;
}

#[tokio::test]
async fn a_resumed_command_is_refused_once_its_program_is_no_longer_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("executor.db");
    let sh = program("sh");
    let executor = executor_allowing(&db, &[&sh]).await;
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 300", pid_file.display());
    let mut client = executor.client().await;
    let stream = client
        .execute(execute_request(
            "outlived",
            command(&[&sh, "-c", &script], |_| {}),
        ))
        .await
        .unwrap();
    let pgid = read_pid(&pid_file).await;
    drop(stream);
    // A graceful stop kills the command's group; the execution stays RUNNING.
    executor.stop().await;
    eventually("the group died with the stop", || {
        let members = live_group_members(pgid);
        async move { members.is_empty().then_some(()) }
    })
    .await;

    let executor = executor_allowing(&db, &[]).await;
    let mut client = executor.client().await;
    let listed = client
        .list_executions(almanac_proto::executor::v1::ListExecutionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let id = listed.executions[0].id.clone();
    let events = collect(
        client
            .watch_execution(WatchExecutionRequest {
                execution_id: id,
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let end = finished(&events);
    assert_eq!(end.status, ExecutionStatus::Failed as i32, "{end:?}");
    assert_eq!(
        end.error,
        format!(
            "refused: {sh} is not allow-listed by this executor's configuration (commands.allow)"
        )
    );
    let started = events
        .iter()
        .filter(|e| matches!(e.kind, Some(EventKind::NodeStarted(_))))
        .count();
    assert_eq!(started, 2, "the interrupted attempt, then the refused one");
    executor.stop().await;
}
