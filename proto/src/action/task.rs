//! What makes a `run_task` action well formed.

use super::Problems;
use crate::executor::v1::{RunTaskAction, run_task_action::Target};

/// The longest queue name.
pub const MAX_QUEUE_LEN: usize = 200;
/// The most deliveries a task may ask for.
pub const MAX_DELIVERIES: u32 = 100;
/// The longest task or command timeout.
pub const MAX_TASK_TIMEOUT_MS: i64 = 7 * 24 * 3_600_000;

pub(crate) fn check_run_task(t: &RunTaskAction, out: &mut Problems) {
    match &t.target {
        None => out.bad("", "a target is required: one of queue, command"),
        Some(Target::Queue(q)) => {
            out.required("queue", q);
            let ok = q.len() <= MAX_QUEUE_LEN
                && q.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
            if !q.is_empty() && !ok {
                out.bad(
                    "queue",
                    format!("at most {MAX_QUEUE_LEN} letters, digits and - _ . : /"),
                );
            }
        }
        Some(Target::Command(c)) => {
            match c.argv.first() {
                None => out.bad("command.argv", "the program to run is required"),
                Some(p) if p.trim().is_empty() => out.bad("command.argv", "the program is empty"),
                _ => {}
            }
            for name in c.env.keys() {
                if name.is_empty() || name.contains('=') || name.contains('\0') {
                    out.bad(
                        "command.env",
                        format!("{name:?} is not an environment variable name"),
                    );
                }
            }
            out.duration("command.timeout", c.timeout.as_ref(), MAX_TASK_TIMEOUT_MS);
            if t.payload.is_some() {
                out.bad("payload", "a command takes argv and env, not a payload");
            }
        }
    }
    if t.max_deliveries > MAX_DELIVERIES {
        out.bad("max_deliveries", format!("at most {MAX_DELIVERIES}"));
    }
    out.duration(
        "schedule_to_start_timeout",
        t.schedule_to_start_timeout.as_ref(),
        MAX_TASK_TIMEOUT_MS,
    );
    out.duration(
        "start_to_close_timeout",
        t.start_to_close_timeout.as_ref(),
        MAX_TASK_TIMEOUT_MS,
    );
    out.duration(
        "heartbeat_timeout",
        t.heartbeat_timeout.as_ref(),
        MAX_TASK_TIMEOUT_MS,
    );
    out.retry("retry", t.retry.as_ref());
}
