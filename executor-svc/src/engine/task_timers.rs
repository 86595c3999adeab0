//! The timers a task's waiting handler enforces, as one pure decision: given the task as
//! stored and the time, which timeout has passed (and how the task ends), or when the next
//! one will. No worker enforces these: schedule-to-start (a task waiting in its queue,
//! before its first delivery or after a lease expired), start-to-close (one delivery),
//! and `max_deliveries` once the last lease has expired — so a task never stays QUEUED or
//! LEASED forever with no worker.

use super::tasks::human_ms;
use crate::store::tasks::{TaskEnd, TaskGuard, TaskRecord, TaskStatus};

/// What a waiting handler does next with its task.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    /// The task has ended.
    Ended,
    /// A timer passed: end the task, if it is still as seen.
    Expire(TaskGuard, TaskEnd),
    /// Nothing to do before this time (or a signal).
    Wait(Option<i64>),
}

/// What a waiting handler does with `task` at `now`: which timer has passed, if any, or
/// when the next one will.
pub(super) fn next_step(task: &TaskRecord, now: i64) -> Step {
    let spec = &task.spec;
    let s2s = spec.schedule_to_start_ms;
    match task.status {
        status if status.is_ended() => Step::Ended,
        TaskStatus::Queued => match s2s.map(|t| spec.created_ms + t) {
            Some(at) if now >= at => Step::Expire(
                TaskGuard::Queued,
                TaskEnd::TimedOut(format!(
                    "timed out: no worker took the task from queue {:?} within its schedule-to-start timeout of {}",
                    spec.queue,
                    human_ms(s2s.unwrap_or_default())
                )),
            ),
            at => Step::Wait(at),
        },
        _ => {
            let lease = task.lease_id.clone().unwrap_or_default();
            let worker = task.worker_id.as_deref().unwrap_or("");
            let expires = task.lease_expires_ms.unwrap_or(now);
            if let Some(close) = task.close_deadline_ms
                && now >= close
            {
                return Step::Expire(
                    TaskGuard::Lease(lease),
                    TaskEnd::TimedOut(format!(
                        "timed out: worker {worker} did not finish the task within its start-to-close timeout of {}",
                        human_ms(spec.start_to_close_ms.unwrap_or_default())
                    )),
                );
            }
            if now >= expires {
                if task.deliveries >= spec.max_deliveries {
                    return Step::Expire(
                        TaskGuard::ExpiredLease(lease),
                        TaskEnd::Failed {
                            error: format!(
                                "task was delivered {} times and no worker finished it (the last lease, held by worker {worker}, expired without a heartbeat within {})",
                                task.deliveries,
                                human_ms(spec.heartbeat_timeout_ms)
                            ),
                            retryable: false,
                        },
                    );
                }
                if let Some(t) = s2s
                    && now >= expires + t
                {
                    return Step::Expire(
                        TaskGuard::ExpiredLease(lease),
                        TaskEnd::TimedOut(format!(
                            "timed out: after the lease of worker {worker} expired, no worker took the task from queue {:?} again within its schedule-to-start timeout of {}",
                            spec.queue,
                            human_ms(t)
                        )),
                    );
                }
            }
            let timers = [
                Some(expires),
                task.close_deadline_ms,
                s2s.map(|t| expires + t),
            ];
            Step::Wait(timers.into_iter().flatten().filter(|&t| t > now).min())
        }
    }
}
