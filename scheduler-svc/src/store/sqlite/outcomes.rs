//! How runs end and move on, on SQLite: a finished attempt (a retry, or the final status
//! with the schedule's failures in a row, pause_on_failure and notification), the start
//! of the next BUFFERED run, cancellations and reruns. Decisions come from
//! `engine::finish` and `engine::overlap`; this file only reads and writes rows.

use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::ledger::load_run;
use super::rows::{cancel_mode_str, col, notification_str, parse_status, status_str};
use super::{classify, load_schedule, to_json};
use crate::engine::finish::plan_finish;
use crate::model::{AttemptOutcome, CancelMode, Run, RunStatus, execution_key};
use crate::store::{Effect, StoreError};

/// The run's schedule id, status, current attempt, trigger-independent facts.
struct RunHead {
    schedule_id: String,
    status: RunStatus,
    attempt: u32,
    cancel_requested: bool,
}

async fn run_head(
    conn: &mut SqliteConnection,
    run_id: &str,
) -> Result<Option<RunHead>, StoreError> {
    let row =
        sqlx::query("SELECT schedule_id, status, attempt, cancel_requested FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_optional(conn)
            .await
            .map_err(classify)?;
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
    conn: &mut SqliteConnection,
    run_id: &str,
    attempt: u32,
    dispatch_after: i64,
    timeout_ms: Option<i64>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO attempts (run_id, number, execution_key, deadline_ms, status) \
         VALUES (?, ?, ?, ?, 'PENDING')",
    )
    .bind(run_id)
    .bind(i64::from(attempt))
    .bind(execution_key(run_id, attempt))
    .bind(timeout_ms.map(|t| dispatch_after + t))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    sqlx::query(
        "UPDATE runs SET status = 'PENDING', attempt = ?, dispatch_after_ms = ?, \
         finished_ms = NULL, cancel_requested = NULL WHERE id = ?",
    )
    .bind(i64::from(attempt))
    .bind(dispatch_after)
    .bind(run_id)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Applies the end of an attempt the executor reported.
pub async fn finish_attempt(
    conn: &mut SqliteConnection,
    run_id: &str,
    attempt: u32,
    outcome: &AttemptOutcome,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let status = status_str(outcome.status);
    let result = outcome.result.as_ref().map(to_json).transpose()?;
    let closed = sqlx::query(
        "UPDATE attempts SET status = ?, error = ?, retryable = ?, finished_ms = ?, \
         last_seq = MAX(last_seq, ?) \
         WHERE run_id = ? AND number = ? AND status IN ('PENDING', 'RUNNING')",
    )
    .bind(status)
    .bind(outcome.error.as_deref())
    .bind(outcome.retryable)
    .bind(outcome.finished_ms)
    .bind(outcome.last_seq as i64)
    .bind(run_id)
    .bind(i64::from(attempt))
    .execute(&mut *conn)
    .await
    .map_err(classify)?
    .rows_affected();
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
        sqlx::query("UPDATE runs SET error = ? WHERE id = ?")
            .bind(outcome.error.as_deref())
            .bind(run_id)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
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
    sqlx::query(
        "UPDATE runs SET status = ?, error = ?, result = ?, finished_ms = ?, \
         notification = ?, notification_status = ? WHERE id = ?",
    )
    .bind(status)
    .bind(outcome.error.as_deref())
    .bind(result)
    .bind(outcome.finished_ms)
    .bind(plan.notify.map(notification_str))
    .bind(plan.notify.map(|_| "PENDING"))
    .bind(run_id)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    sqlx::query("UPDATE schedules SET consecutive_failures = ? WHERE id = ?")
        .bind(plan.consecutive_failures)
        .bind(&schedule.id)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    if plan.notify.is_some() {
        effects.push(Effect::Notify(run_id.to_owned()));
    }
    if let Some(note) = &plan.pause_note {
        sqlx::query(
            "UPDATE schedules SET state = 'PAUSED', pause_note = ?, pause_identity = 'almanac', \
             paused_ms = ?, next_fire_ms = NULL WHERE id = ? AND state = 'ACTIVE'",
        )
        .bind(note)
        .bind(now_ms)
        .bind(&schedule.id)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        skip_buffered(conn, &schedule.id, "the schedule was paused", now_ms).await?;
        effects.push(Effect::Paused(schedule.id.clone()));
    }
    if let Some(next) = promote_next(conn, &schedule.id, now_ms).await? {
        effects.push(Effect::Dispatch(next));
    }
    Ok(effects)
}

/// Starts the oldest BUFFERED run of a schedule when nothing of it is in flight.
pub async fn promote_next(
    conn: &mut SqliteConnection,
    schedule_id: &str,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    let busy: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM runs WHERE schedule_id = ? AND status IN ('PENDING', 'RUNNING')",
    )
    .bind(schedule_id)
    .fetch_one(&mut *conn)
    .await
    .map_err(classify)?;
    if busy > 0 {
        return Ok(None);
    }
    let next: Option<String> = sqlx::query_scalar(
        "SELECT id FROM runs WHERE schedule_id = ? AND status = 'BUFFERED' \
         ORDER BY nominal_ms, id LIMIT 1",
    )
    .bind(schedule_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?;
    let Some(run_id) = next else { return Ok(None) };
    let timeout = load_schedule(conn, schedule_id)
        .await?
        .and_then(|s| s.policy.timeout_ms);
    new_attempt(conn, &run_id, 1, now_ms, timeout).await?;
    Ok(Some(run_id))
}

/// Marks a schedule's BUFFERED runs SKIPPED with `reason`.
pub async fn skip_buffered(
    conn: &mut SqliteConnection,
    schedule_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE runs SET status = 'SKIPPED', reason = ?, finished_ms = ? \
         WHERE schedule_id = ? AND status = 'BUFFERED'",
    )
    .bind(reason)
    .bind(now_ms)
    .bind(schedule_id)
    .execute(conn)
    .await
    .map_err(classify)?
    .rows_affected())
}

/// Asks runs in flight to stop, for an overlap policy or a `CancelRun`: a PENDING run (its
/// execution not known to have started) ends CANCELLED now; a RUNNING one is marked and its
/// execution asked to stop. Runs already final are left alone.
pub async fn request_cancels(
    conn: &mut SqliteConnection,
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
                sqlx::query(
                    "UPDATE runs SET status = 'CANCELLED', error = ?, finished_ms = ? WHERE id = ?",
                )
                .bind(&error)
                .bind(now_ms)
                .bind(run_id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
                sqlx::query(
                    "UPDATE attempts SET status = 'CANCELLED', error = ?, finished_ms = ? \
                     WHERE run_id = ? AND status IN ('PENDING', 'RUNNING')",
                )
                .bind(&error)
                .bind(now_ms)
                .bind(run_id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
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
                sqlx::query(
                    "UPDATE runs SET cancel_requested = CASE \
                       WHEN cancel_requested = 'TERMINATE' THEN 'TERMINATE' ELSE ? END WHERE id = ?",
                )
                .bind(cancel_mode_str(*mode))
                .bind(run_id)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
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
    conn: &mut SqliteConnection,
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
    conn: &mut SqliteConnection,
    run_id: &str,
    now_ms: i64,
) -> Result<(Run, Vec<Effect>), StoreError> {
    let row = sqlx::query(
        "SELECT schedule_id, status, attempt, missed_count, action FROM runs WHERE id = ?",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?
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
    if row
        .try_get::<Option<String>, _>("action")
        .map_err(classify)?
        .is_none()
    {
        sqlx::query("UPDATE runs SET action = ? WHERE id = ?")
            .bind(to_json(&schedule.action)?)
            .bind(run_id)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }
    let attempt = col::<i64>(&row, "attempt")? as u32 + 1;
    sqlx::query("UPDATE runs SET error = NULL, result = NULL, reason = NULL WHERE id = ?")
        .bind(run_id)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    new_attempt(conn, run_id, attempt, now_ms, schedule.policy.timeout_ms).await?;
    let run = load_run(conn, run_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("run {run_id:?}")))?;
    Ok((run, vec![Effect::Dispatch(run_id.to_owned())]))
}
