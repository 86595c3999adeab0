//! What happens when a run's attempt ends (DESIGN §4.4): a new attempt after a backoff
//! when the schedule's retry policy allows it, else the run is final — and then the
//! schedule's failures in a row, pause_on_failure, and the on_failure / on_recovery
//! notification it owes. Pure; the store applies it in the transaction of the update.

use crate::model::{Notification, RunStatus, Schedule, ScheduleState};

/// What the end of an attempt leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishPlan {
    /// A new attempt of the run, after this wait.
    pub retry_in_ms: Option<i64>,
    /// The schedule's failures in a row after this run (when it is final).
    pub consecutive_failures: i64,
    /// Pause the schedule with this note.
    pub pause_note: Option<String>,
    /// The notification the run owes.
    pub notify: Option<Notification>,
}

/// Decides what the end of attempt `attempt` of a run leads to.
pub fn plan_finish(
    s: &Schedule,
    attempt: u32,
    cancel_requested: bool,
    status: RunStatus,
    retryable: bool,
) -> FinishPlan {
    let failed = matches!(status, RunStatus::Failed | RunStatus::TimedOut);
    if failed
        && retryable
        && !cancel_requested
        && let Some(retry) = s.policy.retry
        && attempt < retry.max_attempts
    {
        return FinishPlan {
            retry_in_ms: Some(retry.backoff_before(attempt + 1)),
            consecutive_failures: s.consecutive_failures,
            pause_note: None,
            notify: None,
        };
    }
    match status {
        _ if failed => {
            let failures = s.consecutive_failures + 1;
            let threshold = i64::from(s.policy.pause_on_failure);
            let pause_note = (threshold > 0
                && failures >= threshold
                && s.state == ScheduleState::Active)
                .then(|| {
                    format!(
                        "paused by almanac after {failures} failed runs in a row (pause_on_failure)"
                    )
                });
            FinishPlan {
                retry_in_ms: None,
                consecutive_failures: failures,
                pause_note,
                notify: s
                    .policy
                    .on_failure
                    .is_some()
                    .then_some(Notification::OnFailure),
            }
        }
        RunStatus::Succeeded => FinishPlan {
            retry_in_ms: None,
            consecutive_failures: 0,
            pause_note: None,
            notify: (s.consecutive_failures > 0 && s.policy.on_recovery.is_some())
                .then_some(Notification::OnRecovery),
        },
        _ => FinishPlan {
            retry_in_ms: None,
            consecutive_failures: s.consecutive_failures,
            pause_note: None,
            notify: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Policy, RetryPolicy};
    use crate::spec::Spec;

    fn schedule(policy: Policy, failures: i64) -> Schedule {
        Schedule {
            id: "s".into(),
            display_name: String::new(),
            description: String::new(),
            spec: Spec::Once { at_ms: 0 },
            action: Default::default(),
            policy,
            state: ScheduleState::Active,
            pause: None,
            next_fire_ms: None,
            run_count: 0,
            version: 1,
            request_id: None,
            completion_reason: None,
            created_ms: 0,
            updated_ms: 0,
            consecutive_failures: failures,
            buffer_overruns: 0,
        }
    }

    fn retrying(max_attempts: u32) -> Policy {
        Policy {
            retry: Some(RetryPolicy {
                max_attempts,
                initial_backoff_ms: 1_000,
                max_backoff_ms: 60_000,
                multiplier: 2.0,
            }),
            ..Policy::default()
        }
    }

    #[test]
    fn a_retryable_failure_gets_new_attempts_until_the_policy_runs_out() {
        let s = schedule(retrying(3), 0);
        assert_eq!(
            plan_finish(&s, 1, false, RunStatus::Failed, true).retry_in_ms,
            Some(1_000)
        );
        assert_eq!(
            plan_finish(&s, 2, false, RunStatus::TimedOut, true).retry_in_ms,
            Some(2_000)
        );
        let last = plan_finish(&s, 3, false, RunStatus::Failed, true);
        assert_eq!((last.retry_in_ms, last.consecutive_failures), (None, 1));
        assert_eq!(
            plan_finish(&s, 1, false, RunStatus::Failed, false).retry_in_ms,
            None,
            "not retryable"
        );
        assert_eq!(
            plan_finish(&s, 1, true, RunStatus::Failed, true).retry_in_ms,
            None,
            "cancelled"
        );
    }

    #[test]
    fn failures_in_a_row_pause_and_notify_and_a_success_recovers() {
        let policy = Policy {
            pause_on_failure: 2,
            on_failure: Some(Default::default()),
            on_recovery: Some(Default::default()),
            ..Policy::default()
        };
        let first = plan_finish(
            &schedule(policy.clone(), 0),
            1,
            false,
            RunStatus::Failed,
            false,
        );
        assert_eq!(
            (first.pause_note.is_some(), first.notify),
            (false, Some(Notification::OnFailure))
        );
        let second = plan_finish(
            &schedule(policy.clone(), 1),
            1,
            false,
            RunStatus::Failed,
            false,
        );
        assert!(
            second
                .pause_note
                .unwrap()
                .contains("2 failed runs in a row")
        );
        let back = plan_finish(
            &schedule(policy.clone(), 2),
            1,
            false,
            RunStatus::Succeeded,
            false,
        );
        assert_eq!(
            (back.consecutive_failures, back.notify),
            (0, Some(Notification::OnRecovery))
        );
        let steady = plan_finish(&schedule(policy, 0), 1, false, RunStatus::Succeeded, false);
        assert_eq!(steady.notify, None);
    }
}
