//! Backfills, retention and the notifications runs owe, on SQLite.

use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::ledger::insert_runs;
use super::outcomes::promote_next;
use super::rows::{col, json, parse_notification};
use super::{classify, in_flight_state, load_schedule};
use crate::engine::policy::NewRun;
use crate::model::{Notification, Retention, Run, RunStatus, Schedule, Trigger};
use crate::store::{Effect, StoreError};

/// Writes the BACKFILL rows of `fires` (see `SchedulerStore::backfill`).
pub async fn backfill(
    conn: &mut SqliteConnection,
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
    let (written, pending) = insert_runs(conn, &schedule, &rows, now_ms).await?;
    let created = written.len() as i64;
    let mut effects: Vec<Effect> = pending.into_iter().map(Effect::Dispatch).collect();
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
    conn: &mut SqliteConnection,
    schedule_id: &str,
    keep_last: u32,
    older_than_ms: Option<i64>,
    batch: u32,
) -> Result<u64, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM (SELECT id, nominal_ms, status, \
             ROW_NUMBER() OVER (ORDER BY nominal_ms DESC, id DESC) AS newest \
           FROM runs WHERE schedule_id = ?1 AND status NOT IN ('PENDING', 'RUNNING', 'BUFFERED')) \
         WHERE (?2 > 0 AND newest > ?2) OR (?3 IS NOT NULL AND nominal_ms < ?3) \
         ORDER BY nominal_ms LIMIT ?4",
    )
    .bind(schedule_id)
    .bind(i64::from(keep_last))
    .bind(older_than_ms)
    .bind(i64::from(batch))
    .fetch_all(&mut *conn)
    .await
    .map_err(classify)?;
    let mut deleted = 0;
    for id in &ids {
        sqlx::query("DELETE FROM attempts WHERE run_id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        deleted += sqlx::query(
            "DELETE FROM runs WHERE id = ? AND status NOT IN ('PENDING', 'RUNNING', 'BUFFERED')",
        )
        .bind(id)
        .execute(&mut *conn)
        .await
        .map_err(classify)?
        .rows_affected();
    }
    Ok(deleted)
}

/// Schedules whose policy bounds their ledger.
pub async fn retained_schedules(
    conn: &mut SqliteConnection,
) -> Result<Vec<(String, Retention)>, StoreError> {
    let rows = sqlx::query("SELECT id, policy FROM schedules")
        .fetch_all(conn)
        .await
        .map_err(classify)?;
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
pub async fn pending_notifications(conn: &mut SqliteConnection) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar("SELECT id FROM runs WHERE notification_status = 'PENDING'")
        .fetch_all(conn)
        .await
        .map_err(classify)
}

/// The schedule, the run and the notification it still owes.
pub async fn notification_job(
    conn: &mut SqliteConnection,
    run_id: &str,
) -> Result<Option<(Schedule, Run, Notification)>, StoreError> {
    let row = sqlx::query(
        "SELECT schedule_id, notification FROM runs WHERE id = ? AND notification_status = 'PENDING'",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?;
    let Some(row) = row else { return Ok(None) };
    let Some(kind) = row
        .try_get::<Option<String>, _>("notification")
        .map_err(classify)?
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
    conn: &mut SqliteConnection,
    run_id: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE runs SET notification_status = ?, notification_error = ? WHERE id = ?")
        .bind(if error.is_some() { "FAILED" } else { "SENT" })
        .bind(error)
        .bind(run_id)
        .execute(conn)
        .await
        .map_err(classify)?;
    Ok(())
}
