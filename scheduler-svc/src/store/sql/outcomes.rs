//! How runs end and move on: a finished attempt (a retry, or the final status
//! with the schedule's failures in a row, pause_on_failure and notification), the start
//! of the next BUFFERED run, cancellations and reruns. Decisions come from
//! `engine::finish` and `engine::overlap`; this file only reads and writes rows.

use super::ledger::load_run;
use super::rows::{cancel_mode_str, col, notification_str, parse_status, status_str};
use super::schedules::{load_schedule, to_json};
use super::{Conn, params};
use crate::engine::finish::plan_finish;
use crate::model::{AttemptOutcome, CancelMode, Run, RunStatus, execution_key};
use crate::store::{AttemptStart, Effect, StoreError};

/// The run's schedule id, status, current attempt, trigger-independent facts.
struct RunHead {
    schedule_id: String,
    status: RunStatus,
    attempt: u32,
    cancel_requested: bool,
}

async fn run_head(conn: &mut dyn Conn, run_id: &str) -> Result<Option<RunHead>, StoreError> {
    let row = conn
        .fetch_optional(
            "SELECT schedule_id, status, attempt, cancel_requested FROM runs WHERE id = $1",
            params![run_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(RunHead {
        schedule_id: col(&row, "schedule_id")?,
        status: parse_status(&col::<String>(&row, "status")?)?,
        attempt: col::<i64>(&row, "attempt")? as u32,
        cancel_requested: col::<Option<String>>(&row, "cancel_requested")?.is_some(),
    }))
}

/// Makes a run's attempt `attempt` PENDING at `dispatch_after` with its deadline.
async fn new_attempt(
    conn: &mut dyn Conn,
    run_id: &str,
    attempt: u32,
    dispatch_after: i64,
    timeout_ms: Option<i64>,
) -> Result<(), StoreError> {
    let key = execution_key(run_id, attempt);
    conn.execute(
        "INSERT INTO attempts (run_id, number, execution_key, deadline_ms, status) \
         VALUES ($1, $2, $3, $4, 'PENDING')",
        params![
            run_id,
            attempt,
            &key,
            timeout_ms.map(|t| dispatch_after + t)
        ],
    )
    .await?;
    conn.execute(
        "UPDATE runs SET status = 'PENDING', attempt = $1, dispatch_after_ms = $2, \
         finished_ms = NULL, cancel_requested = NULL WHERE id = $3",
        params![attempt, dispatch_after, run_id],
    )
    .await?;
    Ok(())
}

/// Applies the end of an attempt the executor reported.
pub async fn finish_attempt(
    conn: &mut dyn Conn,
    run_id: &str,
    attempt: u32,
    outcome: &AttemptOutcome,
    started: Option<&AttemptStart>,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let status = status_str(outcome.status);
    let result = outcome.result.as_ref().map(to_json).transpose()?;
    // A start carried by the finish fills what its own update would have (nothing when
    // that update was written).
    let execution_id = started.map(|s| s.execution_id.as_str());
    let started_ms = started.map(|s| s.started_ms);
    let closed = conn
        .execute(
            "UPDATE attempts SET status = $1, error = $2, retryable = $3, finished_ms = $4, \
             last_seq = CASE WHEN last_seq > $5 THEN last_seq ELSE $5 END, \
             execution_id = COALESCE(execution_id, $8), started_ms = COALESCE(started_ms, $9) \
             WHERE run_id = $6 AND number = $7 AND status IN ('PENDING', 'RUNNING')",
            params![
                status,
                outcome.error.as_deref(),
                outcome.retryable,
                outcome.finished_ms,
                outcome.last_seq as i64,
                run_id,
                attempt,
                execution_id,
                started_ms,
            ],
        )
        .await?;
    let Some(head) = run_head(conn, run_id).await? else {
        return Ok(Vec::new());
    };
    if closed == 0 || head.attempt != attempt || !head.status.is_in_flight() {
        return Ok(Vec::new());
    }
    let Some(schedule) = load_schedule(conn, &head.schedule_id).await? else {
        return Ok(Vec::new());
    };
    let plan = plan_finish(
        &schedule,
        attempt,
        head.cancel_requested,
        outcome.status,
        outcome.retryable,
    );
    let mut effects = Vec::new();
    if let Some(wait) = plan.retry_in_ms {
        conn.execute(
            "UPDATE runs SET error = $1, started_ms = COALESCE(started_ms, $3) WHERE id = $2",
            params![outcome.error.as_deref(), run_id, started_ms],
        )
        .await?;
        new_attempt(
            conn,
            run_id,
            attempt + 1,
            now_ms + wait,
            schedule.policy.timeout_ms,
        )
        .await?;
        effects.push(Effect::Dispatch(run_id.to_owned()));
        return Ok(effects);
    }
    conn.execute(
        "UPDATE runs SET status = $1, error = $2, result = $3, finished_ms = $4, \
         notification = $5, notification_status = $6, started_ms = COALESCE(started_ms, $8) \
         WHERE id = $7",
        params![
            status,
            outcome.error.as_deref(),
            result.as_deref(),
            outcome.finished_ms,
            plan.notify.map(notification_str),
            plan.notify.map(|_| "PENDING"),
            run_id,
            started_ms,
        ],
    )
    .await?;
    if plan.consecutive_failures != schedule.consecutive_failures {
        // Most finishes change nothing here (a success after a success): no write, so the
        // schedule's page is not rewritten into the WAL on every fire.
        conn.execute(
            "UPDATE schedules SET consecutive_failures = $1 WHERE id = $2",
            params![plan.consecutive_failures, &schedule.id],
        )
        .await?;
    }
    if plan.notify.is_some() {
        effects.push(Effect::Notify(run_id.to_owned()));
    }
    if let Some(note) = &plan.pause_note {
        conn.execute(
            "UPDATE schedules SET state = 'PAUSED', pause_note = $1, \
             pause_identity = 'almanac', paused_ms = $2, next_fire_ms = NULL \
             WHERE id = $3 AND state = 'ACTIVE'",
            params![note, now_ms, &schedule.id],
        )
        .await?;
        skip_buffered(conn, &schedule.id, "the schedule was paused", now_ms).await?;
        effects.push(Effect::Paused(schedule.id.clone()));
    }
    if let Some(next) = promote_next(conn, &schedule.id, now_ms).await? {
        effects.push(Effect::Dispatch(next));
    }
    Ok(effects)
}

/// A schedule's BUFFERED runs, unordered: with an ORDER BY, SQLite (no statistics) walks
/// every run the schedule ever kept instead of the partial index `runs_buffered`.
pub const BUFFERED_RUNS: &str = "SELECT id, nominal_ms FROM runs \
     WHERE schedule_id = $1 AND status = 'BUFFERED'";

/// A schedule's runs in flight, unordered (through the partial index `runs_in_flight`,
/// for the same reason).
pub const RUNS_IN_FLIGHT: &str = "SELECT id, nominal_ms FROM runs \
     WHERE schedule_id = $1 AND status IN ('PENDING', 'RUNNING')";

/// Starts the oldest BUFFERED run of a schedule when nothing of it is in flight.
pub async fn promote_next(
    conn: &mut dyn Conn,
    schedule_id: &str,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    // Most schedules buffer nothing: that (partial) index answers first.
    let buffered = conn.fetch_all(BUFFERED_RUNS, params![schedule_id]).await?;
    let mut oldest: Option<(i64, String)> = None;
    for row in &buffered {
        let run = (col::<i64>(row, "nominal_ms")?, col::<String>(row, "id")?);
        if oldest.as_ref().is_none_or(|o| run < *o) {
            oldest = Some(run);
        }
    }
    let Some((_, run_id)) = oldest else {
        return Ok(None);
    };
    if !conn
        .fetch_all(RUNS_IN_FLIGHT, params![schedule_id])
        .await?
        .is_empty()
    {
        return Ok(None);
    }
    let timeout = load_schedule(conn, schedule_id)
        .await?
        .and_then(|s| s.policy.timeout_ms);
    new_attempt(conn, &run_id, 1, now_ms, timeout).await?;
    Ok(Some(run_id))
}

/// Marks a schedule's BUFFERED runs SKIPPED with `reason`.
pub async fn skip_buffered(
    conn: &mut dyn Conn,
    schedule_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    conn.execute(
        "UPDATE runs SET status = 'SKIPPED', reason = $1, finished_ms = $2 \
         WHERE schedule_id = $3 AND status = 'BUFFERED'",
        params![reason, now_ms, schedule_id],
    )
    .await
}

/// Asks runs in flight to stop, for an overlap policy or a `CancelRun`: a PENDING run (its
/// execution not known to have started) ends CANCELLED now; a RUNNING one is marked and its
/// execution asked to stop. Runs already final are left alone.
pub async fn request_cancels(
    conn: &mut dyn Conn,
    cancels: &[(String, CancelMode)],
    reason: &str,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let mut effects = Vec::new();
    for (run_id, mode) in cancels {
        let Some(head) = run_head(conn, run_id).await? else {
            continue;
        };
        let key = execution_key(run_id, head.attempt);
        match head.status {
            RunStatus::Pending | RunStatus::Buffered => {
                let error = format!("cancelled: {reason}");
                conn.execute(
                    "UPDATE runs SET status = 'CANCELLED', error = $1, finished_ms = $2 \
                     WHERE id = $3",
                    params![&error, now_ms, run_id],
                )
                .await?;
                conn.execute(
                    "UPDATE attempts SET status = 'CANCELLED', error = $1, finished_ms = $2 \
                     WHERE run_id = $3 AND status IN ('PENDING', 'RUNNING')",
                    params![&error, now_ms, run_id],
                )
                .await?;
                if head.status == RunStatus::Pending {
                    // An Execute may be racing this: ask the executor to stop the key too.
                    effects.push(Effect::CancelExecution {
                        run_id: run_id.clone(),
                        key,
                        mode: CancelMode::Terminate,
                        reason: reason.to_owned(),
                    });
                }
                if let Some(next) = promote_next(conn, &head.schedule_id, now_ms).await? {
                    effects.push(Effect::Dispatch(next));
                }
            }
            RunStatus::Running => {
                conn.execute(
                    "UPDATE runs SET cancel_requested = CASE \
                       WHEN cancel_requested = 'TERMINATE' THEN 'TERMINATE' ELSE $1 END \
                     WHERE id = $2",
                    params![cancel_mode_str(*mode), run_id],
                )
                .await?;
                effects.push(Effect::CancelExecution {
                    run_id: run_id.clone(),
                    key,
                    mode: *mode,
                    reason: reason.to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(effects)
}

/// `CancelRun`: cancels one run that is not final.
pub async fn cancel_run(
    conn: &mut dyn Conn,
    run_id: &str,
    mode: CancelMode,
    reason: &str,
    now_ms: i64,
) -> Result<(Run, Vec<Effect>), StoreError> {
    let Some(head) = run_head(conn, run_id).await? else {
        return Err(StoreError::NotFound(format!("run {run_id:?}")));
    };
    if head.status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {run_id:?} is already {}; there is nothing to cancel",
            status_str(head.status)
        )));
    }
    let reason = if reason.is_empty() {
        "cancelled on request"
    } else {
        reason
    };
    let effects = request_cancels(conn, &[(run_id.to_owned(), mode)], reason, now_ms).await?;
    let run = load_run(conn, run_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id:?}")))?;
    Ok((run, effects))
}

/// `RerunRun`: a new attempt of a final run, PENDING now.
pub async fn rerun_run(
    conn: &mut dyn Conn,
    run_id: &str,
    now_ms: i64,
) -> Result<(Run, Vec<Effect>), StoreError> {
    let row = conn
        .fetch_optional(
            "SELECT schedule_id, status, attempt, missed_count, action FROM runs WHERE id = $1",
            params![run_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id:?}")))?;
    let status = parse_status(&col::<String>(&row, "status")?)?;
    if !status.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "run {run_id:?} is {}: only a finished run can be run again",
            status_str(status)
        )));
    }
    if col::<Option<i64>>(&row, "missed_count")?.is_some() {
        return Err(StoreError::Conflict(format!(
            "run {run_id:?} stands for a range of fires: backfill the range instead"
        )));
    }
    let schedule_id: String = col(&row, "schedule_id")?;
    let schedule = load_schedule(conn, &schedule_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("schedule {schedule_id:?}")))?;
    if col::<Option<String>>(&row, "action")?.is_none() {
        let action = to_json(&schedule.action)?;
        conn.execute(
            "UPDATE runs SET action = $1 WHERE id = $2",
            params![&action, run_id],
        )
        .await?;
    }
    let attempt = col::<i64>(&row, "attempt")? as u32 + 1;
    conn.execute(
        "UPDATE runs SET error = NULL, result = NULL, reason = NULL WHERE id = $1",
        params![run_id],
    )
    .await?;
    new_attempt(conn, run_id, attempt, now_ms, schedule.policy.timeout_ms).await?;
    let run = load_run(conn, run_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id:?}")))?;
    Ok((run, vec![Effect::Dispatch(run_id.to_owned())]))
}
