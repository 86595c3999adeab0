//! `run_task` commands: a program the operator allow-listed (`commands.allow`, absolute
//! paths compared after resolving symlinks), run in a process group of its own with a
//! minimal environment, stdin closed, and bounded tails of stdout and stderr.
//!
//! Each command has a supervisor task that outlives the handler's future: it records the
//! group in the store before waiting on it, kills the group on timeout or cancel (SIGTERM,
//! a grace, SIGKILL) and when the leader exits (nothing of a finished command keeps
//! running), then forgets the record.
//!
//! The environment is `PATH` (a fixed system path), `HOME` (the executor's, if set), the
//! action's `env`, then the context variables `ALMANAC_EXECUTION_ID`,
//! `ALMANAC_IDEMPOTENCY_KEY`, `ALMANAC_NODE_ID`, `ALMANAC_TRY` and, for scheduled work,
//! `ALMANAC_SCHEDULE_ID`, `ALMANAC_RUN_ID`, `ALMANAC_NOMINAL_TIME`. Nothing else of the
//! executor's environment (its secrets included) reaches a command.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use almanac_proto::action::{FieldViolation, is_template};
use almanac_proto::executor::v1::CommandTarget;
use almanac_proto::time::{duration_to_ms, ms_to_rfc3339, timestamp_to_ms};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::process;
use super::tail::{TAIL_BYTES, Tail, read_into};
use crate::actions::{ActionContext, ActionError};
use crate::engine::Clock;
use crate::engine::tasks::human_ms;
use crate::store::ExecutorStore;
use crate::store::tasks::ProcessGroupRecord;

/// A command's timeout when the action does not say.
pub const DEFAULT_COMMAND_TIMEOUT_MS: i64 = 60_000;
/// The `PATH` a command starts with.
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Exit code 75 (`EX_TEMPFAIL` in sysexits.h) says "try again later": a retryable
/// failure. Every other non-zero exit is final.
pub const EXIT_TEMPFAIL: i32 = 75;
/// After the leader exits and the group is killed, the output pipes get this long to
/// close (a process that left the group may hold them open).
const READ_GRACE: Duration = Duration::from_secs(1);

/// Runs the commands of `run_task`.
pub struct Commands {
    allow: Vec<PathBuf>,
    store: Arc<dyn ExecutorStore>,
    clock: Arc<dyn Clock>,
    supervisors: TaskTracker,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

/// How a command ended, as its supervisor saw it.
enum Ending {
    Exited(ExitStatus),
    TimedOut,
    Cancelled,
    NotStarted(ActionError),
}

struct Report {
    ending: Ending,
    stdout: Tail,
    stderr: Tail,
    duration_ms: i64,
}

impl Commands {
    /// Commands allowed by `allow`, their groups recorded in `store`.
    pub fn new(allow: Vec<PathBuf>, store: Arc<dyn ExecutorStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            allow,
            store,
            clock,
            supervisors: TaskTracker::new(),
        }
    }

    /// Waits (at most `grace`) for the supervisors, which kill their groups on shutdown.
    pub async fn shut_down(&self, grace: Duration) -> bool {
        self.supervisors.close();
        tokio::time::timeout(grace, self.supervisors.wait())
            .await
            .is_ok()
    }

    /// The program `argv[0]` names, resolved, if this executor allows it; otherwise why
    /// not.
    pub fn resolve(&self, program: &str) -> Result<PathBuf, String> {
        if is_template(program) {
            return Err("the program may not be a template".into());
        }
        if !Path::new(program).is_absolute() {
            return Err(format!("{program:?} is not an absolute path"));
        }
        let resolved = std::fs::canonicalize(program)
            .map_err(|e| format!("{program} cannot be resolved on this executor: {e}"))?;
        let allowed = self
            .allow
            .iter()
            .any(|a| std::fs::canonicalize(a).is_ok_and(|a| a == resolved));
        if allowed {
            Ok(resolved)
        } else {
            Err(format!(
                "{program} is not allow-listed by this executor's configuration (commands.allow)"
            ))
        }
    }

    /// What this executor's configuration refuses in `command` (under `prefix`).
    pub fn check(&self, command: &CommandTarget, prefix: &str) -> Vec<FieldViolation> {
        match command.argv.first() {
            Some(program) => self
                .resolve(program)
                .err()
                .map(|reason| FieldViolation::new(format!("{prefix}.command.argv"), reason))
                .into_iter()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Runs `command` to its end (see the module documentation).
    pub async fn run(
        &self,
        ctx: &ActionContext,
        command: &CommandTarget,
        cancel: CancellationToken,
    ) -> Result<Value, ActionError> {
        let Some(program) = command.argv.first() else {
            return Err(ActionError::permanent("the command has no program"));
        };
        let resolved = self
            .resolve(program)
            .map_err(|reason| ActionError::permanent(format!("refused: {reason}")))?;
        let timeout_ms = command
            .timeout
            .as_ref()
            .and_then(duration_to_ms)
            .filter(|&ms| ms > 0)
            .unwrap_or(DEFAULT_COMMAND_TIMEOUT_MS);
        let os_command = build(ctx, command, &resolved);
        let record = ProcessGroupRecord {
            pgid: 0,
            start_time: 0,
            boot_id: process::boot_id(),
            execution_id: ctx.execution_id.clone(),
            node_id: ctx.node_id.clone(),
            program: resolved.display().to_string(),
            recorded_ms: 0,
        };
        let (reply, report) = oneshot::channel();
        let supervisor = Supervisor {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            tracker: self.supervisors.clone(),
        };
        let timeout = Duration::from_millis(timeout_ms as u64);
        self.supervisors.spawn(async move {
            let report = supervisor
                .supervise(os_command, record, timeout, cancel)
                .await;
            let _ = reply.send(report);
        });
        let report = report
            .await
            .map_err(|_| ActionError::permanent("the command's supervisor stopped unexpectedly"))?;
        outcome(program, timeout_ms, report)
    }
}

/// The OS command: the resolved program with the action's argv[0] and arguments.
fn build(ctx: &ActionContext, command: &CommandTarget, program: &Path) -> Command {
    let mut os = Command::new(program);
    os.arg0(&command.argv[0])
        .args(&command.argv[1..])
        .env_clear()
        .env("PATH", COMMAND_PATH);
    if let Some(home) = std::env::var_os("HOME") {
        os.env("HOME", home);
    }
    os.envs(&command.env)
        .env("ALMANAC_EXECUTION_ID", &ctx.execution_id)
        .env("ALMANAC_IDEMPOTENCY_KEY", &ctx.idempotency_key)
        .env("ALMANAC_NODE_ID", &ctx.node_id)
        .env("ALMANAC_TRY", ctx.try_number.to_string());
    if let Some(origin) = &ctx.origin {
        os.env("ALMANAC_SCHEDULE_ID", &origin.schedule_id)
            .env("ALMANAC_RUN_ID", &origin.run_id);
        if let Some(nominal) = &origin.nominal_time {
            os.env(
                "ALMANAC_NOMINAL_TIME",
                ms_to_rfc3339(timestamp_to_ms(nominal)),
            );
        }
    }
    if !command.working_dir.is_empty() {
        os.current_dir(&command.working_dir);
    }
    os.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    process::prepare(&mut os);
    os
}

/// The node's output or error for a report.
fn outcome(program: &str, timeout_ms: i64, report: Report) -> Result<Value, ActionError> {
    let Report {
        ending,
        stdout,
        stderr,
        duration_ms,
    } = report;
    let status = match ending {
        Ending::NotStarted(error) => return Err(error),
        Ending::TimedOut => {
            return Err(ActionError::retryable(format!(
                "timed out after {}: the command's process group was killed",
                human_ms(timeout_ms)
            )));
        }
        Ending::Cancelled => {
            return Err(ActionError::permanent(
                "cancelled: the command's process group was killed",
            ));
        }
        Ending::Exited(status) => status,
    };
    let stderr_end = stderr.last_lines(5, 1_000);
    let said = if stderr_end.is_empty() {
        String::new()
    } else {
        format!("; stderr ends with: {stderr_end}")
    };
    match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(0), _) => Ok(json!({
            "exit_code": 0,
            "stdout_tail": stdout.text(),
            "stderr_tail": stderr.text(),
            "stdout_truncated": stdout.truncated(),
            "stderr_truncated": stderr.truncated(),
            "duration_ms": duration_ms,
        })),
        (Some(code), _) => {
            let message = format!("{program} exited with code {code}{said}");
            if code == EXIT_TEMPFAIL {
                Err(ActionError::retryable(message))
            } else {
                Err(ActionError::permanent(message))
            }
        }
        (None, signal) => {
            let name = signal
                .and_then(|s| Signal::try_from(s).ok())
                .map_or_else(|| format!("{signal:?}"), |s| s.as_str().to_owned());
            Err(ActionError::permanent(format!(
                "{program} was killed by signal {name}{said}"
            )))
        }
    }
}

/// What a supervisor needs, detached from the handler.
struct Supervisor {
    store: Arc<dyn ExecutorStore>,
    clock: Arc<dyn Clock>,
    tracker: TaskTracker,
}

impl Supervisor {
    async fn supervise(
        self,
        command: Command,
        mut record: ProcessGroupRecord,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Report {
        let started = Instant::now();
        let report = |ending, stdout, stderr| Report {
            ending,
            stdout,
            stderr,
            duration_ms: started.elapsed().as_millis() as i64,
        };
        let empty = || Tail::new(TAIL_BYTES);
        let mut child = match process::spawn(command).await {
            Ok(child) => child,
            Err(e) => {
                let error = ActionError::permanent(format!("cannot start {}: {e}", record.program));
                return report(Ending::NotStarted(error), empty(), empty());
            }
        };
        let Some(pid) = child.id() else {
            let error = ActionError::permanent("the command ended before it could be watched");
            return report(Ending::NotStarted(error), empty(), empty());
        };
        record.pgid = pid as i32;
        record.start_time = process::stat(record.pgid).map_or(0, |s| s.start_time);
        record.recorded_ms = self.clock.now_ms();
        // Recorded before anything waits on it: a crash from here on leaves a record.
        if let Err(e) = self.store.record_process_group(&record).await {
            process::signal_group(record.pgid, Signal::SIGKILL);
            let _ = child.wait().await;
            let error = ActionError::retryable(format!(
                "cannot record the command's process group, so it was killed: {e}"
            ));
            return report(Ending::NotStarted(error), empty(), empty());
        }
        tracing::info!(pgid = record.pgid, program = %record.program, execution_id = %record.execution_id, "command started");

        let stdout = Arc::new(Mutex::new(empty()));
        let stderr = Arc::new(Mutex::new(empty()));
        let readers = [
            self.tracker
                .spawn(read_into(child.stdout.take(), Arc::clone(&stdout))),
            self.tracker
                .spawn(read_into(child.stderr.take(), Arc::clone(&stderr))),
        ];
        let ending = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => Ending::Exited(status),
                Err(e) => Ending::NotStarted(ActionError::permanent(format!("cannot wait for the command: {e}"))),
            },
            () = tokio::time::sleep(timeout) => {
                process::terminate(&mut child, record.pgid).await;
                Ending::TimedOut
            }
            () = cancel.cancelled() => {
                process::terminate(&mut child, record.pgid).await;
                Ending::Cancelled
            }
        };
        // The command is over, and so is everything it started in its group.
        process::signal_group(record.pgid, Signal::SIGKILL);
        for reader in readers {
            let abort = reader.abort_handle();
            if tokio::time::timeout(READ_GRACE, reader).await.is_err() {
                abort.abort();
            }
        }
        if let Err(error) = self
            .store
            .forget_process_group(record.pgid, record.start_time)
            .await
        {
            // The next start finds the group gone and forgets the record then.
            tracing::warn!(pgid = record.pgid, %error, "cannot forget the command's process group");
        }
        tracing::info!(pgid = record.pgid, "command ended");
        let take = |tail: &Arc<Mutex<Tail>>| {
            std::mem::take(&mut *tail.lock().unwrap_or_else(|p| p.into_inner()))
        };
        report(ending, take(&stdout), take(&stderr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn report(ending: Ending, stderr: &str) -> Report {
        let mut err = Tail::new(TAIL_BYTES);
        err.push(stderr.as_bytes());
        Report {
            ending,
            stdout: Tail::new(TAIL_BYTES),
            stderr: err,
            duration_ms: 5,
        }
    }

    #[test]
    fn exit_codes_decide_success_and_retryability() {
        let ok = outcome(
            "/bin/x",
            1,
            report(Ending::Exited(ExitStatus::from_raw(0)), ""),
        );
        assert_eq!(ok.unwrap()["exit_code"], 0);
        let failed = outcome(
            "/bin/x",
            1,
            report(Ending::Exited(ExitStatus::from_raw(3 << 8)), "a\nboom\n"),
        )
        .unwrap_err();
        assert_eq!(
            failed.message,
            "/bin/x exited with code 3; stderr ends with: a\nboom"
        );
        assert!(!failed.retryable);
        let tempfail = outcome(
            "/bin/x",
            1,
            report(Ending::Exited(ExitStatus::from_raw(75 << 8)), ""),
        );
        assert!(tempfail.unwrap_err().retryable);
        let killed = outcome(
            "/bin/x",
            1,
            report(Ending::Exited(ExitStatus::from_raw(9)), ""),
        );
        assert_eq!(
            killed.unwrap_err().message,
            "/bin/x was killed by signal SIGKILL"
        );
        let timed_out = outcome("/bin/x", 2_000, report(Ending::TimedOut, "")).unwrap_err();
        assert!(timed_out.retryable && timed_out.message.contains("2s"));
    }
}
