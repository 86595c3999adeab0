//! Reading and writing schedule rows, and what a schedule has in flight: the pieces every
//! decision starts from.

use super::outcomes::{BUFFERED_RUNS, RUNS_IN_FLIGHT};
use super::rows::{SCHEDULE_COLUMNS, col, schedule_from_row, state_str};
use super::{Conn, params};
use crate::engine::overlap::InFlight;
use crate::model::Schedule;
use crate::store::StoreError;

pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

pub async fn load_schedule(conn: &mut dyn Conn, id: &str) -> Result<Option<Schedule>, StoreError> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = $1");
    let row = conn.fetch_optional(&sql, params![id]).await?;
    row.as_ref().map(schedule_from_row).transpose()
}

/// Writes every column of a schedule (insert, or update by id).
pub async fn write_schedule(
    conn: &mut dyn Conn,
    s: &Schedule,
    insert: bool,
) -> Result<(), StoreError> {
    let sql = if insert {
        "INSERT INTO schedules (display_name, description, spec, action, policy, state, \
         pause_note, pause_identity, paused_ms, next_fire_ms, run_count, version, request_id, \
         completion_reason, created_ms, updated_ms, consecutive_failures, buffer_overruns, id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19)"
    } else {
        "UPDATE schedules SET display_name = $1, description = $2, spec = $3, action = $4, \
         policy = $5, state = $6, pause_note = $7, pause_identity = $8, paused_ms = $9, \
         next_fire_ms = $10, run_count = $11, version = $12, request_id = $13, \
         completion_reason = $14, created_ms = $15, updated_ms = $16, \
         consecutive_failures = $17, buffer_overruns = $18 WHERE id = $19"
    };
    let pause = s.pause.as_ref();
    let (spec, action, policy) = (to_json(&s.spec)?, to_json(&s.action)?, to_json(&s.policy)?);
    let written = conn
        .execute(
            sql,
            params![
                &s.display_name,
                &s.description,
                &spec,
                &action,
                &policy,
                state_str(s.state),
                pause.map(|p| p.note.as_str()),
                pause.map(|p| p.identity.as_str()),
                pause.map(|p| p.at_ms),
                s.next_fire_ms,
                s.run_count,
                s.version,
                s.request_id.as_deref(),
                s.completion_reason.as_deref(),
                s.created_ms,
                s.updated_ms,
                s.consecutive_failures,
                s.buffer_overruns,
                &s.id,
            ],
        )
        .await;
    match written {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists(msg)) if msg.contains("request_id") => {
            Err(StoreError::AlreadyExists(format!(
                "a schedule created with request_id {:?}",
                s.request_id.as_deref().unwrap_or_default()
            )))
        }
        Err(StoreError::AlreadyExists(_)) => {
            Err(StoreError::AlreadyExists(format!("schedule {:?}", s.id)))
        }
        Err(other) => Err(other),
    }
}

/// What a schedule has in flight (PENDING or RUNNING runs) and waiting (BUFFERED), read
/// inside the caller's transaction.
pub async fn in_flight_state(
    conn: &mut dyn Conn,
    schedule_id: &str,
) -> Result<InFlight, StoreError> {
    // Two index probes, each on its partial index (see `RUNS_IN_FLIGHT`), ordered here.
    let rows = conn.fetch_all(RUNS_IN_FLIGHT, params![schedule_id]).await?;
    let mut running = Vec::with_capacity(rows.len());
    for row in &rows {
        running.push((col::<i64>(row, "nominal_ms")?, col::<String>(row, "id")?));
    }
    running.sort_unstable();
    let buffered = conn.fetch_all(BUFFERED_RUNS, params![schedule_id]).await?;
    Ok(InFlight {
        running: running.into_iter().map(|(_, id)| id).collect(),
        buffered: u32::try_from(buffered.len()).unwrap_or(u32::MAX),
    })
}
