//! Reading rows of either database back into the model, and the text forms of enums
//! stored in columns.

use super::{Column, Row};

use crate::model::{
    Attempt, CancelMode, MissedRange, Notification, PauseInfo, Run, RunStatus, Schedule,
    ScheduleState, Trigger,
};
use crate::store::StoreError;

/// The columns `schedule_from_row` reads, in a form to paste after SELECT.
pub const SCHEDULE_COLUMNS: &str = "id, display_name, description, spec, action, policy, state, \
     pause_note, pause_identity, paused_ms, next_fire_ms, run_count, version, request_id, \
     completion_reason, created_ms, updated_ms, consecutive_failures, buffer_overruns";

/// The columns `run_from_row` reads (runs as `r`).
pub const RUN_COLUMNS: &str = "r.id, r.schedule_id, r.nominal_ms, r.trigger, r.status, r.attempt, \
     r.dispatch_after_ms, r.started_ms, r.finished_ms, r.error, r.result, r.reason, \
     r.coalesced_into, r.missed_first_ms, r.missed_last_ms, r.missed_count, r.request_id, \
     r.created_ms, r.cancel_requested";

/// The columns `attempt_from_row` reads (attempts as `a`), all nullable for LEFT JOINs.
pub const ATTEMPT_COLUMNS: &str = "a.number AS a_number, a.execution_key AS a_key, \
     a.execution_id AS a_execution_id, a.deadline_ms AS a_deadline_ms, a.last_seq AS a_last_seq, \
     a.status AS a_status, a.error AS a_error, a.retryable AS a_retryable, \
     a.started_ms AS a_started_ms, a.finished_ms AS a_finished_ms";

pub fn state_str(s: ScheduleState) -> &'static str {
    match s {
        ScheduleState::Active => "ACTIVE",
        ScheduleState::Paused => "PAUSED",
        ScheduleState::Completed => "COMPLETED",
    }
}

fn parse_state(s: &str) -> Result<ScheduleState, StoreError> {
    Ok(match s {
        "ACTIVE" => ScheduleState::Active,
        "PAUSED" => ScheduleState::Paused,
        "COMPLETED" => ScheduleState::Completed,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown schedule state {other:?}"
            )));
        }
    })
}

pub fn status_str(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Pending => "PENDING",
        RunStatus::Running => "RUNNING",
        RunStatus::Succeeded => "SUCCEEDED",
        RunStatus::Failed => "FAILED",
        RunStatus::TimedOut => "TIMED_OUT",
        RunStatus::Cancelled => "CANCELLED",
        RunStatus::Buffered => "BUFFERED",
        RunStatus::Skipped => "SKIPPED",
        RunStatus::Missed => "MISSED",
    }
}

pub fn parse_status(s: &str) -> Result<RunStatus, StoreError> {
    Ok(match s {
        "PENDING" => RunStatus::Pending,
        "RUNNING" => RunStatus::Running,
        "SUCCEEDED" => RunStatus::Succeeded,
        "FAILED" => RunStatus::Failed,
        "TIMED_OUT" => RunStatus::TimedOut,
        "CANCELLED" => RunStatus::Cancelled,
        "BUFFERED" => RunStatus::Buffered,
        "SKIPPED" => RunStatus::Skipped,
        "MISSED" => RunStatus::Missed,
        other => return Err(StoreError::Corrupt(format!("unknown run status {other:?}"))),
    })
}

pub fn cancel_mode_str(m: CancelMode) -> &'static str {
    match m {
        CancelMode::Graceful => "GRACEFUL",
        CancelMode::Terminate => "TERMINATE",
    }
}

pub fn parse_cancel_mode(s: &str) -> Option<CancelMode> {
    match s {
        "GRACEFUL" => Some(CancelMode::Graceful),
        "TERMINATE" => Some(CancelMode::Terminate),
        _ => None,
    }
}

pub fn notification_str(n: Notification) -> &'static str {
    match n {
        Notification::OnFailure => "ON_FAILURE",
        Notification::OnRecovery => "ON_RECOVERY",
    }
}

pub fn parse_notification(s: &str) -> Option<Notification> {
    match s {
        "ON_FAILURE" => Some(Notification::OnFailure),
        "ON_RECOVERY" => Some(Notification::OnRecovery),
        _ => None,
    }
}

pub fn trigger_str(t: Trigger) -> &'static str {
    match t {
        Trigger::Scheduled => "SCHEDULED",
        Trigger::Recovery => "RECOVERY",
        Trigger::Manual => "MANUAL",
        Trigger::Backfill => "BACKFILL",
    }
}

fn parse_trigger(s: &str) -> Result<Trigger, StoreError> {
    Ok(match s {
        "SCHEDULED" => Trigger::Scheduled,
        "RECOVERY" => Trigger::Recovery,
        "MANUAL" => Trigger::Manual,
        "BACKFILL" => Trigger::Backfill,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown run trigger {other:?}"
            )));
        }
    })
}

/// Reads a column, calling a type mismatch corruption rather than a database failure.
pub fn col<T: Column>(row: &Row, name: &str) -> Result<T, StoreError> {
    row.get(name)
}

/// Parses a JSON column.
pub fn json<T: serde::de::DeserializeOwned>(row: &Row, name: &str) -> Result<T, StoreError> {
    let text: String = col(row, name)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

pub fn schedule_from_row(row: &Row) -> Result<Schedule, StoreError> {
    let state = parse_state(&col::<String>(row, "state")?)?;
    let pause = match col::<Option<i64>>(row, "paused_ms")? {
        Some(at_ms) if state == ScheduleState::Paused => Some(PauseInfo {
            note: col::<Option<String>>(row, "pause_note")?.unwrap_or_default(),
            identity: col::<Option<String>>(row, "pause_identity")?.unwrap_or_default(),
            at_ms,
        }),
        _ => None,
    };
    Ok(Schedule {
        id: col(row, "id")?,
        display_name: col(row, "display_name")?,
        description: col(row, "description")?,
        spec: json(row, "spec")?,
        action: json(row, "action")?,
        policy: json(row, "policy")?,
        state,
        pause,
        next_fire_ms: col(row, "next_fire_ms")?,
        run_count: col(row, "run_count")?,
        version: col(row, "version")?,
        request_id: col(row, "request_id")?,
        completion_reason: col(row, "completion_reason")?,
        created_ms: col(row, "created_ms")?,
        updated_ms: col(row, "updated_ms")?,
        consecutive_failures: col(row, "consecutive_failures")?,
        buffer_overruns: col(row, "buffer_overruns")?,
    })
}

pub fn run_from_row(row: &Row) -> Result<Run, StoreError> {
    let missed = match (
        col::<Option<i64>>(row, "missed_first_ms")?,
        col::<Option<i64>>(row, "missed_last_ms")?,
        col::<Option<i64>>(row, "missed_count")?,
    ) {
        (Some(first_ms), Some(last_ms), Some(count)) => Some(MissedRange {
            first_ms,
            last_ms,
            count,
        }),
        _ => None,
    };
    let result = match col::<Option<String>>(row, "result")? {
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("column result: {e}")))?,
        ),
        None => None,
    };
    Ok(Run {
        id: col(row, "id")?,
        schedule_id: col(row, "schedule_id")?,
        nominal_ms: col(row, "nominal_ms")?,
        trigger: parse_trigger(&col::<String>(row, "trigger")?)?,
        status: parse_status(&col::<String>(row, "status")?)?,
        attempt: col::<i64>(row, "attempt")? as u32,
        dispatch_after_ms: col(row, "dispatch_after_ms")?,
        started_ms: col(row, "started_ms")?,
        finished_ms: col(row, "finished_ms")?,
        error: col(row, "error")?,
        result,
        reason: col(row, "reason")?,
        coalesced_into: col(row, "coalesced_into")?,
        missed,
        request_id: col(row, "request_id")?,
        created_ms: col(row, "created_ms")?,
        attempts: Vec::new(),
        cancel_requested: col::<Option<String>>(row, "cancel_requested")?
            .as_deref()
            .and_then(parse_cancel_mode),
    })
}

/// The attempt of a LEFT JOINed row, if it has one.
pub fn attempt_from_row(row: &Row) -> Result<Option<Attempt>, StoreError> {
    let Some(number) = col::<Option<i64>>(row, "a_number")? else {
        return Ok(None);
    };
    Ok(Some(Attempt {
        number: number as u32,
        execution_key: col::<Option<String>>(row, "a_key")?.unwrap_or_default(),
        execution_id: col(row, "a_execution_id")?,
        deadline_ms: col(row, "a_deadline_ms")?,
        last_seq: col::<Option<i64>>(row, "a_last_seq")?.unwrap_or_default() as u64,
        status: parse_status(&col::<Option<String>>(row, "a_status")?.unwrap_or_default())?,
        error: col(row, "a_error")?,
        retryable: col::<Option<bool>>(row, "a_retryable")?.unwrap_or_default(),
        started_ms: col(row, "a_started_ms")?,
        finished_ms: col(row, "a_finished_ms")?,
    }))
}

/// Groups joined run+attempt rows (ordered by run, then attempt) into runs.
pub fn runs_with_attempts(rows: &[Row]) -> Result<Vec<Run>, StoreError> {
    let mut runs: Vec<Run> = Vec::new();
    for row in rows {
        let id: String = col(row, "id")?;
        if runs.last().is_none_or(|r| r.id != id) {
            runs.push(run_from_row(row)?);
        }
        if let (Some(a), Some(run)) = (attempt_from_row(row)?, runs.last_mut()) {
            run.attempts.push(a);
        }
    }
    Ok(runs)
}
