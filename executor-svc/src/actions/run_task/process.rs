//! Process groups for commands: each command starts in a group of its own whose leader
//! dies with the executor (PR_SET_PDEATHSIG = SIGKILL), is killed as a whole (SIGTERM, a
//! grace, SIGKILL), and is recorded in the store while it runs so that a restart after a
//! crash kills what the leader's death left behind (its descendants).
//!
//! PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process.
//! Runtime threads come and go (blocking-pool threads exit when idle), so every command is
//! spawned from one dedicated thread that lives as long as the executor process.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::error::ExecutorError;
use crate::store::ExecutorStore;

/// After SIGTERM, a process group has this long to exit before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

struct SpawnRequest {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// The spawner thread's inbox (`None` if the thread could not be started).
static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn spawner() -> Option<&'static mpsc::Sender<SpawnRequest>> {
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            let started = std::thread::Builder::new()
                .name("almanac-spawner".into())
                .spawn(move || {
                    // Runs for the life of the process: the static sender never drops.
                    for request in rx {
                        // The child registers with the caller's runtime (its reaper).
                        let _runtime = request.runtime.enter();
                        let mut command = request.command;
                        // A runtime that is shutting down may panic instead of failing:
                        // that must not stop the thread every later command needs.
                        let spawned =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                command.spawn()
                            }))
                            .unwrap_or_else(|_| {
                                Err(io::Error::other("the runtime refused to spawn the command"))
                            });
                        if let Err(Ok(child)) = request.reply.send(spawned) {
                            // Nobody waits for it any more: it must not run unsupervised.
                            if let Some(pid) = child.id() {
                                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                            }
                        }
                    }
                });
            started.ok().map(|_| tx)
        })
        .as_ref()
}

/// Starts `command` (prepared with [`prepare`]) from the spawner thread.
pub async fn spawn(command: Command) -> io::Result<Child> {
    let spawner = spawner().ok_or_else(|| io::Error::other("the spawner thread is not running"))?;
    let (reply, answer) = oneshot::channel();
    spawner
        .send(SpawnRequest {
            command,
            runtime: tokio::runtime::Handle::current(),
            reply,
        })
        .map_err(|_| io::Error::other("the spawner thread has stopped"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

/// Puts the command in a new process group and arranges for its leader to be killed
/// when the executor dies, even if the executor exits between fork and exec.
#[allow(unsafe_code)]
pub fn prepare(command: &mut Command) {
    command.process_group(0);
    let parent = Pid::this();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed. It makes two raw system calls (prctl through
    // `set_pdeathsig`, getppid) and builds an `io::Error` from an errno, which does not
    // allocate; it takes no lock and touches no shared state.
    unsafe {
        command.pre_exec(move || {
            // Linux only; elsewhere the leader outlives a crashed executor until the
            // restart kills its group from the record.
            #[cfg(target_os = "linux")]
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The executor died before the signal was armed: do not run orphaned.
            if nix::unistd::getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// What /proc says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Its process group.
    pub pgrp: i32,
    /// When it started, in clock ticks after boot.
    pub start_time: u64,
}

/// Parses the text of `/proc/<pid>/stat` (the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`).
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields from 3 on: state is field 3, pgrp 5, starttime 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat`, if the process exists.
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The kernel's boot id (start times count from boot, so they compare only within one).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The live (not zombie) processes of group `pgid` that started at or after
/// `start_time`: the leader recorded then, or its descendants. A live process whose pid is
/// `pgid` but that started at another time means the number was reused: no members then.
pub fn live_members(pgid: i32, start_time: u64) -> Vec<i32> {
    if stat(pgid).is_some_and(|s| s.start_time != start_time) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat(pid)
                .is_some_and(|s| s.pgrp == pgid && s.start_time >= start_time && s.state != 'Z')
        })
        .collect()
}

/// Sends `signal` to a whole group (a group that is gone already is fine).
pub fn signal_group(pgid: i32, signal: Signal) {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => tracing::warn!(pgid, %error, ?signal, "cannot signal the process group"),
    }
}

/// Stops a running command's group: SIGTERM, up to `KILL_GRACE` for the leader to
/// exit, then SIGKILL for whatever is left, and reaps the leader.
pub async fn terminate(child: &mut Child, pgid: i32) {
    signal_group(pgid, Signal::SIGTERM);
    let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
    signal_group(pgid, Signal::SIGKILL);
    // A process stuck in the kernel may not die at once; the runtime reaps it later.
    let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
}

/// At start-up: kills what commands started by a previous process left behind (the
/// leaders died with that process; their descendants did not), then forgets the records.
/// On a database `shared` by replicas, a group of an execution that another replica
/// (`replica_id` is ours) holds under a live lease at `now_ms` is that replica's, maybe
/// on this machine: it is left alone. On SQLite (one process per file) every group is a
/// previous process's. Returns how many groups still had live members.
pub async fn kill_leftovers(
    store: &dyn ExecutorStore,
    replica_id: &str,
    now_ms: i64,
    shared: bool,
) -> Result<usize, ExecutorError> {
    let boot = boot_id();
    let mut killed = 0;
    for group in store.process_groups().await? {
        let held_elsewhere = shared
            && store
                .get_execution(&group.execution_id)
                .await?
                .is_some_and(|e| {
                    !e.status.is_finished()
                        && e.owner.as_deref().is_some_and(|o| o != replica_id)
                        && e.lease_until_ms.is_some_and(|until| until > now_ms)
                });
        if held_elsewhere {
            continue;
        }
        if group.boot_id == boot {
            let members = live_members(group.pgid, group.start_time);
            if !members.is_empty() {
                signal_group(group.pgid, Signal::SIGKILL);
                killed += 1;
                tracing::warn!(pgid = group.pgid, members = members.len(), execution_id = %group.execution_id,
                    node_id = %group.node_id, program = %group.program,
                    "killed the processes a command left when the executor stopped");
            }
        }
        store
            .forget_process_group(group.pgid, group.start_time)
            .await?;
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let text = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_time: 987_654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_stat_and_the_machine_a_boot_id() {
        let me = stat(std::process::id() as i32).expect("our own stat");
        assert!(me.start_time > 0);
        assert!(!boot_id().is_empty());
        assert_eq!(stat(i32::MAX), None);
    }
}
