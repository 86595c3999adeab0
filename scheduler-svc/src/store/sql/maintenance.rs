//! Backfills, retention and the notifications runs owe.

use super::ledger::insert_runs;
use super::outcomes::promote_next;
use super::rows::{col, json, parse_notification};
use super::schedules::{in_flight_state, load_schedule};
use super::{Conn, params};
use crate::engine::policy::NewRun;
use crate::model::{Notification, Retention, Run, RunStatus, Schedule, Trigger};
use crate::store::{Effect, StoreError};

/// Writes the BACKFILL rows of `fires` (see `SchedulerStore::backfill`).
pub async fn backfill(
    conn: &mut dyn Conn,
    schedule_id: &str,
    fires: &[i64],
    buffered: bool,
    spacing_ms: i64,
    now_ms: i64,
) -> Result<(Vec<String>, i64, Vec<Effect>), StoreError> {
    let Some(schedule) = load_schedule(conn, schedule_id).await? else {
        return Err(StoreError::NotFound(format!("schedule {schedule_id:?}")));
    };
    let mut start_first = buffered && in_flight_state(conn, schedule_id).await?.running.is_empty();
    let mut rows = Vec::with_capacity(fires.len());
    for (i, &nominal) in fires.iter().enumerate() {
        let mut row = NewRun::new(nominal, Trigger::Backfill, RunStatus::Pending);
        if buffered && !start_first {
            row.status = RunStatus::Buffered;
        } else {
            let after = if buffered {
                now_ms
            } else {
                now_ms + spacing_ms * i as i64
            };
            row.status = RunStatus::Pending;
            row.dispatch_after_ms = Some(after);
            row.deadline_ms = schedule.policy.timeout_ms.map(|t| after + t);
            start_first = false;
        }
        if row.status == RunStatus::Buffered {
            row.dispatch_after_ms = Some(nominal);
        }
        rows.push(row);
    }
    let (written, pending) = insert_runs(conn, &schedule, &rows, now_ms, None).await?;
    let created = written.len() as i64;
    let mut effects: Vec<Effect> = pending
        .into_iter()
        .map(|job| Effect::Dispatch(job.run_id))
        .collect();
    if buffered
        && effects.is_empty()
        && let Some(next) = promote_next(conn, schedule_id, now_ms).await?
    {
        effects.push(Effect::Dispatch(next));
    }
    Ok((written, fires.len() as i64 - created, effects))
}

/// Deletes a batch of a schedule's final runs beyond its retention.
pub async fn prune_runs(
    conn: &mut dyn Conn,
    schedule_id: &str,
    keep_last: u32,
    older_than_ms: Option<i64>,
    batch: u32,
) -> Result<u64, StoreError> {
    let rows = conn
        .fetch_all(
            "SELECT id FROM (SELECT id, nominal_ms, status, \
                 ROW_NUMBER() OVER (ORDER BY nominal_ms DESC, id DESC) AS newest \
               FROM runs WHERE schedule_id = $1 \
                 AND status NOT IN ('PENDING', 'RUNNING', 'BUFFERED')) AS finished \
             WHERE ($2 > 0 AND newest > $2) OR ($3 IS NOT NULL AND nominal_ms < $3) \
             ORDER BY nominal_ms, id LIMIT $4",
            params![schedule_id, keep_last, older_than_ms, batch],
        )
        .await?;
    let mut deleted = 0;
    for row in &rows {
        let id: String = col(row, "id")?;
        conn.execute("DELETE FROM attempts WHERE run_id = $1", params![&id])
            .await?;
        deleted += conn
            .execute(
                "DELETE FROM runs WHERE id = $1 \
                 AND status NOT IN ('PENDING', 'RUNNING', 'BUFFERED')",
                params![&id],
            )
            .await?;
    }
    Ok(deleted)
}

/// Schedules with a ledger whose policy bounds it. Found from the runs (the distinct
/// schedule ids of `runs_by_schedule`), so schedules that never fired cost nothing: with a
/// million of them, reading and parsing every policy each round was most of an idle
/// scheduler's CPU. The ids are read by a loose index scan (one index probe per schedule,
/// `WITH RECURSIVE`): a `SELECT DISTINCT` would walk every run ever kept, each round.
pub async fn retained_schedules(
    conn: &mut dyn Conn,
) -> Result<Vec<(String, Retention)>, StoreError> {
    let rows = conn
        .fetch_all(
            "WITH RECURSIVE fired(id) AS ( \
                 SELECT MIN(schedule_id) FROM runs \
                 UNION ALL \
                 SELECT (SELECT MIN(schedule_id) FROM runs WHERE schedule_id > fired.id) \
                 FROM fired WHERE fired.id IS NOT NULL) \
             SELECT s.id, s.policy FROM fired JOIN schedules s ON s.id = fired.id ORDER BY s.id",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for row in &rows {
        let policy: crate::model::Policy = json(row, "policy")?;
        if !policy.retention.is_unbounded() {
            out.push((col(row, "id")?, policy.retention));
        }
    }
    Ok(out)
}

/// Runs whose notification is still to be sent.
pub async fn pending_notifications(conn: &mut dyn Conn) -> Result<Vec<String>, StoreError> {
    let rows = conn
        .fetch_all(
            "SELECT id FROM runs WHERE notification_status = 'PENDING' ORDER BY id",
            &[],
        )
        .await?;
    rows.iter().map(|r| col(r, "id")).collect()
}

/// The schedule, the run and the notification it still owes.
pub async fn notification_job(
    conn: &mut dyn Conn,
    run_id: &str,
) -> Result<Option<(Schedule, Run, Notification)>, StoreError> {
    let row = conn
        .fetch_optional(
            "SELECT schedule_id, notification FROM runs \
             WHERE id = $1 AND notification_status = 'PENDING'",
            params![run_id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let Some(kind) = col::<Option<String>>(&row, "notification")?
        .as_deref()
        .and_then(parse_notification)
    else {
        return Ok(None);
    };
    let schedule_id: String = col(&row, "schedule_id")?;
    let Some(schedule) = load_schedule(conn, &schedule_id).await? else {
        return Ok(None);
    };
    let Some(run) = super::ledger::load_run(conn, run_id).await? else {
        return Ok(None);
    };
    Ok(Some((schedule, run, kind)))
}

/// Records how a run's notification ended.
pub async fn notification_done(
    conn: &mut dyn Conn,
    run_id: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE runs SET notification_status = $1, notification_error = $2 WHERE id = $3",
        params![
            if error.is_some() { "FAILED" } else { "SENT" },
            error,
            run_id
        ],
    )
    .await?;
    Ok(())
}
