//! Messages ⇄ model. Conversion checks only what the wire shape can get wrong (a oneof
//! left empty, an enum value this version does not know, a malformed timestamp) and
//! reports each with its field; the engine validates meaning.

use almanac_proto::action::FieldViolation;
use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::{
    duration_has_sub_ms, duration_to_ms, ms_to_duration, ms_to_timestamp, timestamp_is_valid,
    timestamp_to_ms,
};
use pbjson_types::{Duration, Timestamp};

use crate::engine::schedules::ScheduleInput;
use crate::model::{
    Catchup, DEFAULT_CATCHUP_WINDOW_MS, DEFAULT_MAX_CATCHUP, Misfire, Overlap, Policy, Retention,
    RetryPolicy, Run, RunStatus, Schedule, ScheduleState, Trigger,
};
use crate::spec::Spec;

/// Collects violations while converting.
#[derive(Default)]
pub struct Problems(pub Vec<FieldViolation>);

impl Problems {
    fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Ok(value)` when nothing was wrong.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<FieldViolation>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }

    fn timestamp(&mut self, field: &str, ts: Option<&Timestamp>) -> Option<i64> {
        let ts = ts?;
        if timestamp_is_valid(ts) {
            Some(timestamp_to_ms(ts))
        } else {
            self.add(
                field,
                "not a valid timestamp (years 1-9999, nanos 0-999999999)",
            );
            None
        }
    }

    fn duration(&mut self, field: &str, d: Option<&Duration>) -> Option<i64> {
        let d = d?;
        match duration_to_ms(d) {
            Some(_) if duration_has_sub_ms(d) => {
                self.add(field, "must be whole milliseconds");
                None
            }
            Some(ms) => Some(ms),
            None => {
                self.add(field, "not a valid duration");
                None
            }
        }
    }

    /// An enum field: `None` for UNSPECIFIED, a violation for a value this version does
    /// not know.
    pub fn enumeration<E: TryFrom<i32>>(&mut self, field: &str, value: i32) -> Option<E> {
        if value == 0 {
            return None;
        }
        match E::try_from(value) {
            Ok(v) => Some(v),
            Err(_) => {
                self.add(field, format!("unknown enum value {value}"));
                None
            }
        }
    }
}

/// A spec message as a model spec.
pub fn spec_from_proto(p: &mut Problems, spec: &pb::ScheduleSpec, prefix: &str) -> Option<Spec> {
    use pb::schedule_spec::Kind;
    match &spec.kind {
        None => {
            p.add(prefix, "one of cron, interval, once is required");
            None
        }
        Some(Kind::Cron(c)) => Some(Spec::Cron {
            expression: c.expression.clone(),
            timezone: c.timezone.clone(),
        }),
        Some(Kind::Interval(i)) => {
            let Some(every_ms) = p.duration(&format!("{prefix}.interval.every"), i.every.as_ref())
            else {
                if i.every.is_none() {
                    p.add(&format!("{prefix}.interval.every"), "required");
                }
                return None;
            };
            let offset_ms = p
                .duration(&format!("{prefix}.interval.offset"), i.offset.as_ref())
                .unwrap_or(0);
            Some(Spec::Interval {
                every_ms,
                offset_ms,
            })
        }
        Some(Kind::Once(o)) => {
            let at = o.at.as_ref();
            if at.is_none() {
                p.add(&format!("{prefix}.once.at"), "required");
            }
            p.timestamp(&format!("{prefix}.once.at"), at)
                .map(|at_ms| Spec::Once { at_ms })
        }
    }
}

/// A model spec as a message.
pub fn spec_to_proto(spec: &Spec) -> pb::ScheduleSpec {
    use pb::schedule_spec::Kind;
    let kind = match spec {
        Spec::Cron {
            expression,
            timezone,
        } => Kind::Cron(pb::CronSpec {
            expression: expression.clone(),
            timezone: timezone.clone(),
        }),
        Spec::Interval {
            every_ms,
            offset_ms,
        } => Kind::Interval(pb::IntervalSpec {
            every: Some(ms_to_duration(*every_ms)),
            offset: Some(ms_to_duration(*offset_ms)),
        }),
        Spec::Once { at_ms } => Kind::Once(pb::OnceSpec {
            at: Some(ms_to_timestamp(*at_ms)),
        }),
    };
    pb::ScheduleSpec { kind: Some(kind) }
}

pub fn overlap_from_proto(o: pb::OverlapPolicy) -> Overlap {
    match o {
        pb::OverlapPolicy::Unspecified | pb::OverlapPolicy::Skip => Overlap::Skip,
        pb::OverlapPolicy::BufferOne => Overlap::BufferOne,
        pb::OverlapPolicy::BufferAll => Overlap::BufferAll,
        pb::OverlapPolicy::CancelOther => Overlap::CancelOther,
        pb::OverlapPolicy::TerminateOther => Overlap::TerminateOther,
        pb::OverlapPolicy::AllowAll => Overlap::AllowAll,
    }
}

fn overlap_to_proto(o: Overlap) -> pb::OverlapPolicy {
    match o {
        Overlap::Skip => pb::OverlapPolicy::Skip,
        Overlap::BufferOne => pb::OverlapPolicy::BufferOne,
        Overlap::BufferAll => pb::OverlapPolicy::BufferAll,
        Overlap::CancelOther => pb::OverlapPolicy::CancelOther,
        Overlap::TerminateOther => pb::OverlapPolicy::TerminateOther,
        Overlap::AllowAll => pb::OverlapPolicy::AllowAll,
    }
}

/// The user-set fields of a schedule message (`prefix` is its path, e.g. `schedule`).
pub fn schedule_input(
    msg: &pb::Schedule,
    prefix: &str,
) -> Result<ScheduleInput, Vec<FieldViolation>> {
    let mut p = Problems::default();
    let f = |name: &str| format!("{prefix}.{name}");
    let spec = msg
        .spec
        .as_ref()
        .and_then(|s| spec_from_proto(&mut p, s, &f("spec")));
    let overlap = p
        .enumeration::<pb::OverlapPolicy>(&f("overlap_policy"), msg.overlap_policy)
        .map_or(Overlap::Skip, overlap_from_proto);
    let catchup = match &msg.catchup {
        None => Catchup::default(),
        Some(c) => Catchup {
            window_ms: p
                .duration(&f("catchup.window"), c.window.as_ref())
                .unwrap_or(DEFAULT_CATCHUP_WINDOW_MS),
            misfire: match p.enumeration::<pb::Misfire>(&f("catchup.misfire"), c.misfire) {
                Some(pb::Misfire::RunAll) => Misfire::RunAll,
                Some(pb::Misfire::Skip) => Misfire::Skip,
                _ => Misfire::RunOnce,
            },
            max_catchup: if c.max_catchup == 0 {
                DEFAULT_MAX_CATCHUP
            } else {
                c.max_catchup
            },
        },
    };
    let retry = msg.retry.as_ref().map(|r| RetryPolicy {
        max_attempts: if r.max_attempts == 0 {
            3
        } else {
            r.max_attempts
        },
        initial_backoff_ms: p
            .duration(&f("retry.initial_backoff"), r.initial_backoff.as_ref())
            .unwrap_or(1_000),
        max_backoff_ms: p
            .duration(&f("retry.max_backoff"), r.max_backoff.as_ref())
            .unwrap_or(60_000),
        multiplier: if r.multiplier == 0.0 {
            2.0
        } else {
            r.multiplier
        },
    });
    let retention = msg
        .retention
        .as_ref()
        .map_or_else(Retention::default, |r| Retention {
            keep_last: r.keep_last,
            max_age_ms: p.duration(&f("retention.max_age"), r.max_age.as_ref()),
        });
    let policy = Policy {
        start_ms: p.timestamp(&f("start_time"), msg.start_time.as_ref()),
        end_ms: p.timestamp(&f("end_time"), msg.end_time.as_ref()),
        max_runs: msg.max_runs,
        jitter_ms: p.duration(&f("jitter"), msg.jitter.as_ref()).unwrap_or(0),
        overlap,
        catchup,
        timeout_ms: p.duration(&f("timeout"), msg.timeout.as_ref()),
        retry,
        pause_on_failure: msg.pause_on_failure,
        on_failure: msg.on_failure.clone(),
        on_recovery: msg.on_recovery.clone(),
        max_buffered: msg.max_buffered,
        retention,
    };
    p.finish(ScheduleInput {
        display_name: msg.display_name.clone(),
        description: msg.description.clone(),
        spec,
        action: msg.action.clone(),
        policy,
    })
}

pub fn state_to_proto(s: ScheduleState) -> pb::ScheduleState {
    match s {
        ScheduleState::Active => pb::ScheduleState::Active,
        ScheduleState::Paused => pb::ScheduleState::Paused,
        ScheduleState::Completed => pb::ScheduleState::Completed,
    }
}

pub fn state_from_proto(s: pb::ScheduleState) -> Option<ScheduleState> {
    match s {
        pb::ScheduleState::Unspecified => None,
        pb::ScheduleState::Active => Some(ScheduleState::Active),
        pb::ScheduleState::Paused => Some(ScheduleState::Paused),
        pb::ScheduleState::Completed => Some(ScheduleState::Completed),
    }
}

/// A stored schedule as a message.
pub fn schedule_to_proto(s: &Schedule) -> pb::Schedule {
    let c = &s.policy.catchup;
    pb::Schedule {
        id: s.id.clone(),
        display_name: s.display_name.clone(),
        description: s.description.clone(),
        spec: Some(spec_to_proto(&s.spec)),
        action: Some(s.action.clone()),
        start_time: s.policy.start_ms.map(ms_to_timestamp),
        end_time: s.policy.end_ms.map(ms_to_timestamp),
        max_runs: s.policy.max_runs,
        jitter: (s.policy.jitter_ms > 0).then(|| ms_to_duration(s.policy.jitter_ms)),
        overlap_policy: overlap_to_proto(s.policy.overlap) as i32,
        catchup: Some(pb::CatchupPolicy {
            window: Some(ms_to_duration(c.window_ms)),
            misfire: match c.misfire {
                Misfire::RunOnce => pb::Misfire::RunOnce,
                Misfire::RunAll => pb::Misfire::RunAll,
                Misfire::Skip => pb::Misfire::Skip,
            } as i32,
            max_catchup: c.max_catchup,
        }),
        timeout: s.policy.timeout_ms.map(ms_to_duration),
        state: state_to_proto(s.state) as i32,
        pause: s.pause.as_ref().map(|p| pb::PauseInfo {
            note: p.note.clone(),
            identity: p.identity.clone(),
            pause_time: Some(ms_to_timestamp(p.at_ms)),
        }),
        next_fire_time: s.next_fire_ms.map(ms_to_timestamp),
        run_count: s.run_count,
        etag: s.etag(),
        create_time: Some(ms_to_timestamp(s.created_ms)),
        update_time: Some(ms_to_timestamp(s.updated_ms)),
        completion_reason: s.completion_reason.clone().unwrap_or_default(),
        retry: s
            .policy
            .retry
            .map(|r| almanac_proto::executor::v1::RetryPolicy {
                max_attempts: r.max_attempts,
                initial_backoff: Some(ms_to_duration(r.initial_backoff_ms)),
                max_backoff: Some(ms_to_duration(r.max_backoff_ms)),
                multiplier: r.multiplier,
            }),
        pause_on_failure: s.policy.pause_on_failure,
        on_failure: s.policy.on_failure.clone(),
        on_recovery: s.policy.on_recovery.clone(),
        max_buffered: s.policy.max_buffered,
        retention: (!s.policy.retention.is_unbounded()).then(|| pb::RetentionPolicy {
            keep_last: s.policy.retention.keep_last,
            max_age: s.policy.retention.max_age_ms.map(ms_to_duration),
        }),
        consecutive_failures: s.consecutive_failures,
        buffer_overruns: s.buffer_overruns,
    }
}

pub fn status_to_proto(s: RunStatus) -> pb::RunStatus {
    match s {
        RunStatus::Pending => pb::RunStatus::Pending,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::TimedOut => pb::RunStatus::TimedOut,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
        RunStatus::Buffered => pb::RunStatus::Buffered,
        RunStatus::Skipped => pb::RunStatus::Skipped,
        RunStatus::Missed => pb::RunStatus::Missed,
    }
}

pub fn status_from_proto(s: pb::RunStatus) -> Option<RunStatus> {
    Some(match s {
        pb::RunStatus::Unspecified => return None,
        pb::RunStatus::Pending => RunStatus::Pending,
        pb::RunStatus::Running => RunStatus::Running,
        pb::RunStatus::Succeeded => RunStatus::Succeeded,
        pb::RunStatus::Failed => RunStatus::Failed,
        pb::RunStatus::TimedOut => RunStatus::TimedOut,
        pb::RunStatus::Cancelled => RunStatus::Cancelled,
        pb::RunStatus::Buffered => RunStatus::Buffered,
        pb::RunStatus::Skipped => RunStatus::Skipped,
        pb::RunStatus::Missed => RunStatus::Missed,
    })
}

fn trigger_to_proto(t: Trigger) -> pb::RunTrigger {
    match t {
        Trigger::Scheduled => pb::RunTrigger::Scheduled,
        Trigger::Recovery => pb::RunTrigger::Recovery,
        Trigger::Manual => pb::RunTrigger::Manual,
        Trigger::Backfill => pb::RunTrigger::Backfill,
    }
}

/// A run as a message.
pub fn run_to_proto(r: &Run) -> pb::Run {
    pb::Run {
        id: r.id.clone(),
        schedule_id: r.schedule_id.clone(),
        nominal_time: Some(ms_to_timestamp(r.nominal_ms)),
        trigger: trigger_to_proto(r.trigger) as i32,
        status: status_to_proto(r.status) as i32,
        attempt: r.attempt,
        dispatch_after: r.dispatch_after_ms.map(ms_to_timestamp),
        start_time: r.started_ms.map(ms_to_timestamp),
        finish_time: r.finished_ms.map(ms_to_timestamp),
        error: r.error.clone().unwrap_or_default(),
        result: r
            .result
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
        reason: r.reason.clone().unwrap_or_default(),
        coalesced_into_run_id: r.coalesced_into.clone().unwrap_or_default(),
        missed: r.missed.map(|m| pb::MissedRange {
            first_time: Some(ms_to_timestamp(m.first_ms)),
            last_time: Some(ms_to_timestamp(m.last_ms)),
            count: m.count,
        }),
        request_id: r.request_id.clone().unwrap_or_default(),
        create_time: Some(ms_to_timestamp(r.created_ms)),
        attempts: r
            .attempts
            .iter()
            .map(|a| pb::Attempt {
                number: a.number,
                execution_key: a.execution_key.clone(),
                execution_id: a.execution_id.clone().unwrap_or_default(),
                deadline: a.deadline_ms.map(ms_to_timestamp),
                last_seq: a.last_seq,
                status: status_to_proto(a.status) as i32,
                error: a.error.clone().unwrap_or_default(),
                start_time: a.started_ms.map(ms_to_timestamp),
                finish_time: a.finished_ms.map(ms_to_timestamp),
                retryable: a.retryable,
            })
            .collect(),
    }
}
