//! The ledger's writes and reads on SQLite: claiming due fires, manual runs, the updates
//! the executor's events cause, and reading runs back with their attempts.

use sqlx::AssertSqlSafe;
use sqlx::sqlite::SqliteConnection;

use super::outcomes::{finish_attempt, request_cancels};
use super::rows::{
    ATTEMPT_COLUMNS, RUN_COLUMNS, col, json, parse_status, runs_with_attempts, state_str,
    status_str, trigger_str,
};
use super::{classify, in_flight_state, load_schedule, to_json};
use crate::engine::policy::NewRun;
use crate::model::{DispatchJob, Run, RunStatus, Schedule, ScheduleState, execution_key};
use crate::store::{
    Claimed, DuePlanner, Effect, LedgerUpdate, ManualPlanner, RunCursor, StoreError,
};

/// Claims one schedule's due fires inside the caller's transaction.
pub async fn claim_one(
    conn: &mut SqliteConnection,
    id: &str,
    now_ms: i64,
    plan: &DuePlanner<'_>,
) -> Result<Claimed, StoreError> {
    let idle = |next_fire_ms| Claimed {
        schedule_id: id.to_string(),
        next_fire_ms,
        dispatch: Vec::new(),
        effects: Vec::new(),
    };
    let schedule = match load_schedule(conn, id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(idle(None)),
        Err(StoreError::Corrupt(problem)) => {
            pause_broken(conn, id, now_ms, &format!("corrupt row: {problem}")).await?;
            return Ok(idle(None));
        }
        Err(e) => return Err(e),
    };
    let next = match (schedule.state, schedule.next_fire_ms) {
        (ScheduleState::Active, Some(next)) => next,
        _ => return Ok(idle(None)),
    };
    if next > now_ms {
        return Ok(idle(Some(next)));
    }
    let in_flight = in_flight_state(conn, id).await?;
    let plan = match plan(&schedule, &in_flight) {
        Ok(plan) => plan,
        Err(problem) => {
            pause_broken(conn, id, now_ms, &problem).await?;
            return Ok(idle(None));
        }
    };
    let (_, mut dispatch) = insert_runs(conn, &schedule, &plan.runs, now_ms).await?;
    let mut effects = request_cancels(
        conn,
        &plan.cancel,
        "the overlap policy started a newer run",
        now_ms,
    )
    .await?;
    effects.retain(|e| match e {
        Effect::Dispatch(run) => {
            dispatch.push(run.clone());
            false
        }
        _ => true,
    });
    let state = if plan.completed.is_some() {
        ScheduleState::Completed
    } else {
        ScheduleState::Active
    };
    sqlx::query(
        "UPDATE schedules SET next_fire_ms = ?, run_count = run_count + ?, state = ?, \
         completion_reason = COALESCE(?, completion_reason), \
         buffer_overruns = buffer_overruns + ? WHERE id = ?",
    )
    .bind(plan.next_fire_ms)
    .bind(plan.counted)
    .bind(state_str(state))
    .bind(plan.completed.as_deref())
    .bind(plan.overruns)
    .bind(id)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(Claimed {
        schedule_id: id.to_string(),
        next_fire_ms: plan.next_fire_ms.filter(|_| state == ScheduleState::Active),
        dispatch,
        effects,
    })
}

/// Records a problem on a schedule that cannot be planned and pauses it, so one bad row
/// never stops the others (DESIGN §4.6).
async fn pause_broken(
    conn: &mut SqliteConnection,
    id: &str,
    now_ms: i64,
    problem: &str,
) -> Result<(), StoreError> {
    tracing::error!(schedule_id = %id, problem, "schedule cannot be planned; pausing it");
    sqlx::query(
        "UPDATE schedules SET state = 'PAUSED', pause_note = ?, pause_identity = 'almanac', \
         paused_ms = ?, next_fire_ms = NULL WHERE id = ?",
    )
    .bind(format!("paused by almanac: {problem}"))
    .bind(now_ms)
    .bind(id)
    .execute(conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Inserts planned rows (and the first attempt of each PENDING one; a BUFFERED one keeps
/// the action too, for when it starts). A row whose fire already has a ledger row is not
/// written again. Returns the ids written, and those written PENDING.
pub async fn insert_runs(
    conn: &mut SqliteConnection,
    schedule: &Schedule,
    runs: &[NewRun],
    now_ms: i64,
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let mut written_ids = Vec::new();
    let mut pending = Vec::new();
    let action = to_json(&schedule.action)?;
    for run in runs {
        let is_pending = run.status == RunStatus::Pending;
        let keeps_action = is_pending || run.status == RunStatus::Buffered;
        let written = sqlx::query(
            "INSERT OR IGNORE INTO runs (id, schedule_id, nominal_ms, trigger, status, attempt, \
             dispatch_after_ms, reason, coalesced_into, missed_first_ms, missed_last_ms, \
             missed_count, request_id, action, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&run.id)
        .bind(&schedule.id)
        .bind(run.nominal_ms)
        .bind(trigger_str(run.trigger))
        .bind(status_str(run.status))
        .bind(if is_pending { 1 } else { 0 })
        .bind(run.dispatch_after_ms)
        .bind(run.reason.as_deref())
        .bind(run.coalesced_into.as_deref())
        .bind(run.missed.map(|m| m.first_ms))
        .bind(run.missed.map(|m| m.last_ms))
        .bind(run.missed.map(|m| m.count))
        .bind(run.request_id.as_deref())
        .bind(keeps_action.then_some(action.as_str()))
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(classify)?
        .rows_affected()
            == 1;
        if !written {
            tracing::debug!(schedule_id = %schedule.id, nominal_ms = run.nominal_ms,
                "fire already has a ledger row; not written again");
            continue;
        }
        written_ids.push(run.id.clone());
        if is_pending {
            sqlx::query(
                "INSERT INTO attempts (run_id, number, execution_key, deadline_ms, status) \
                 VALUES (?, 1, ?, ?, 'PENDING')",
            )
            .bind(&run.id)
            .bind(execution_key(&run.id, 1))
            .bind(run.deadline_ms)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
            pending.push(run.id.clone());
        }
    }
    Ok((written_ids, pending))
}

/// Writes a manual run inside the caller's transaction.
pub async fn trigger(
    conn: &mut SqliteConnection,
    schedule_id: &str,
    request_id: Option<&str>,
    now_ms: i64,
    plan: &ManualPlanner<'_>,
) -> Result<(Run, Vec<Effect>), StoreError> {
    if let Some(request_id) = request_id {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT id FROM runs WHERE schedule_id = ? AND request_id = ?")
                .bind(schedule_id)
                .bind(request_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(classify)?;
        if let Some(run_id) = existing {
            let run = load_run(conn, &run_id).await?;
            return run
                .map(|r| (r, Vec::new()))
                .ok_or_else(|| StoreError::NotFound(format!("run {run_id:?}")));
        }
    }
    let Some(schedule) = load_schedule(conn, schedule_id).await? else {
        return Err(StoreError::NotFound(format!("schedule {schedule_id:?}")));
    };
    let in_flight = in_flight_state(conn, schedule_id).await?;
    let (row, cancels, overrun) = plan(&schedule, &in_flight);
    let mut effects: Vec<Effect> = insert_runs(conn, &schedule, std::slice::from_ref(&row), now_ms)
        .await?
        .1
        .into_iter()
        .map(Effect::Dispatch)
        .collect();
    effects.extend(
        request_cancels(
            conn,
            &cancels,
            "a manual run replaced it (overlap policy)",
            now_ms,
        )
        .await?,
    );
    if overrun {
        sqlx::query("UPDATE schedules SET buffer_overruns = buffer_overruns + 1 WHERE id = ?")
            .bind(schedule_id)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
    }
    let run = load_run(conn, &row.id).await?;
    run.map(|r| (r, effects))
        .ok_or_else(|| StoreError::NotFound(format!("run {:?}", row.id)))
}

/// One run with its attempts.
pub async fn load_run(
    conn: &mut SqliteConnection,
    run_id: &str,
) -> Result<Option<Run>, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {ATTEMPT_COLUMNS} FROM runs r \
         LEFT JOIN attempts a ON a.run_id = r.id WHERE r.id = ? ORDER BY a.number"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(run_id)
        .fetch_all(conn)
        .await
        .map_err(classify)?;
    Ok(runs_with_attempts(&rows)?.into_iter().next())
}

/// A page of a schedule's runs, newest nominal time first.
pub async fn list_runs(
    conn: &mut SqliteConnection,
    schedule_id: &str,
    status: Option<RunStatus>,
    before: Option<RunCursor>,
    limit: u32,
) -> Result<Vec<Run>, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {ATTEMPT_COLUMNS} FROM \
           (SELECT * FROM runs WHERE schedule_id = ?1 AND (?2 IS NULL OR status = ?2) \
              AND (?3 IS NULL OR nominal_ms < ?3 OR (nominal_ms = ?3 AND id < ?4)) \
            ORDER BY nominal_ms DESC, id DESC LIMIT ?5) r \
         LEFT JOIN attempts a ON a.run_id = r.id \
         ORDER BY r.nominal_ms DESC, r.id DESC, a.number"
    );
    let (before_ms, before_id) = before.unzip();
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(schedule_id)
        .bind(status.map(status_str))
        .bind(before_ms)
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
        .map_err(classify)?;
    runs_with_attempts(&rows)
}

/// What the dispatcher sends for a run's current attempt.
pub async fn dispatch_job(
    conn: &mut SqliteConnection,
    run_id: &str,
) -> Result<Option<DispatchJob>, StoreError> {
    let row = sqlx::query(
        "SELECT r.id, r.schedule_id, r.nominal_ms, r.status, r.attempt, r.dispatch_after_ms, \
         r.action, a.execution_key, a.deadline_ms, a.last_seq \
         FROM runs r JOIN attempts a ON a.run_id = r.id AND a.number = r.attempt WHERE r.id = ?",
    )
    .bind(run_id)
    .fetch_optional(conn)
    .await
    .map_err(classify)?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(DispatchJob {
        run_id: col(&row, "id")?,
        schedule_id: col(&row, "schedule_id")?,
        nominal_ms: col(&row, "nominal_ms")?,
        status: parse_status(&col::<String>(&row, "status")?)?,
        attempt: col::<i64>(&row, "attempt")? as u32,
        execution_key: col(&row, "execution_key")?,
        dispatch_after_ms: col::<Option<i64>>(&row, "dispatch_after_ms")?
            .unwrap_or_else(|| col(&row, "nominal_ms").unwrap_or_default()),
        deadline_ms: col(&row, "deadline_ms")?,
        last_seq: col::<i64>(&row, "last_seq")? as u64,
        action: json(&row, "action")?,
    }))
}

/// Applies one update inside the caller's transaction; one that no longer applies (the
/// attempt moved on, the run was deleted) changes nothing. Returns what it leaves to do.
pub async fn apply_update(
    conn: &mut SqliteConnection,
    update: &LedgerUpdate,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    match update {
        LedgerUpdate::Started {
            run_id,
            attempt,
            execution_id,
            started_ms,
            last_seq,
        } => {
            sqlx::query(
                "UPDATE attempts SET execution_id = ?, status = 'RUNNING', \
                 started_ms = COALESCE(started_ms, ?), last_seq = MAX(last_seq, ?) \
                 WHERE run_id = ? AND number = ? AND status IN ('PENDING', 'RUNNING')",
            )
            .bind(execution_id)
            .bind(started_ms)
            .bind(*last_seq as i64)
            .bind(run_id)
            .bind(i64::from(*attempt))
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
            let moved = sqlx::query(
                "UPDATE runs SET status = 'RUNNING', started_ms = COALESCE(started_ms, ?) \
                 WHERE id = ? AND attempt = ? AND status = 'PENDING'",
            )
            .bind(started_ms)
            .bind(run_id)
            .bind(i64::from(*attempt))
            .execute(&mut *conn)
            .await
            .map_err(classify)?
            .rows_affected();
            if moved == 0 {
                // Cancelled while its Execute was on the way: stop what started anyway.
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM runs WHERE id = ? AND attempt = ?")
                        .bind(run_id)
                        .bind(i64::from(*attempt))
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(classify)?;
                if status.as_deref() == Some("CANCELLED") {
                    return Ok(vec![Effect::CancelExecution {
                        run_id: run_id.clone(),
                        key: execution_key(run_id, *attempt),
                        mode: crate::model::CancelMode::Terminate,
                        reason: "the run was cancelled while its attempt was being sent".to_owned(),
                    }]);
                }
            }
        }
        LedgerUpdate::Finished {
            run_id,
            attempt,
            outcome,
        } => return finish_attempt(conn, run_id, *attempt, outcome, now_ms).await,
    }
    Ok(Vec::new())
}
