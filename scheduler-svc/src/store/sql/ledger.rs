//! The ledger's writes and reads: claiming due fires, manual runs, the updates the
//! executor's events cause, and reading runs back with their attempts.

use super::outcomes::{finish_attempt, request_cancels};
use super::rows::{
    ATTEMPT_COLUMNS, RUN_COLUMNS, col, json, parse_status, runs_with_attempts, state_str,
    status_str, trigger_str,
};
use super::schedules::{in_flight_state, load_schedule, to_json};
use super::{Conn, Lock, leases, lock_schedule, params};
use crate::engine::policy::NewRun;
use crate::model::{DispatchJob, Run, RunStatus, Schedule, ScheduleState, execution_key};
use crate::store::{
    ClaimLease, Claimed, DuePlanner, Effect, FIRST_EPOCH, LedgerUpdate, ManualPlanner, RunCursor,
    StoreError,
};

/// How long after finding a due schedule locked by another transaction a claim looks again.
pub const BUSY_RETRY_MS: i64 = 25;

/// Claims one schedule's due fires inside the caller's transaction.
pub async fn claim_one(
    conn: &mut dyn Conn,
    id: &str,
    now_ms: i64,
    lease: Option<ClaimLease<'_>>,
    plan: &DuePlanner<'_>,
) -> Result<Claimed, StoreError> {
    let idle = |next_fire_ms| Claimed {
        schedule_id: id.to_string(),
        next_fire_ms,
        dispatch: Vec::new(),
        effects: Vec::new(),
    };
    match lock_schedule(conn, id, true).await? {
        Lock::Held => {}
        Lock::Absent => return Ok(idle(None)),
        Lock::Busy => {
            // Another transaction decides for it right now (a trigger, an update, another
            // replica's claim): look again a moment later, when that decision is committed
            // (claiming it at once would spin on the row as it stood before).
            let next = conn
                .fetch_optional(
                    "SELECT next_fire_ms FROM schedules WHERE id = $1 AND state = 'ACTIVE'",
                    params![id],
                )
                .await?;
            let next = match next {
                Some(row) => col::<Option<i64>>(&row, "next_fire_ms")?,
                None => None,
            };
            tracing::debug!(schedule_id = %id, "schedule locked elsewhere; not claimed this round");
            return Ok(idle(next.map(|next| next.max(now_ms + BUSY_RETRY_MS))));
        }
    }
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
    let (_, dispatch) = insert_runs(conn, &schedule, &plan.runs, now_ms, lease).await?;
    let effects = request_cancels(
        conn,
        &plan.cancel,
        "the overlap policy started a newer run",
        now_ms,
    )
    .await?;
    let state = if plan.completed.is_some() {
        ScheduleState::Completed
    } else {
        ScheduleState::Active
    };
    conn.execute(
        "UPDATE schedules SET next_fire_ms = $1, run_count = run_count + $2, state = $3, \
         completion_reason = COALESCE($4, completion_reason), \
         buffer_overruns = buffer_overruns + $5 WHERE id = $6",
        params![
            plan.next_fire_ms,
            plan.counted,
            state_str(state),
            plan.completed.as_deref(),
            plan.overruns,
            id,
        ],
    )
    .await?;
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
    conn: &mut dyn Conn,
    id: &str,
    now_ms: i64,
    problem: &str,
) -> Result<(), StoreError> {
    tracing::error!(schedule_id = %id, problem, "schedule cannot be planned; pausing it");
    let note = format!("paused by almanac: {problem}");
    conn.execute(
        "UPDATE schedules SET state = 'PAUSED', pause_note = $1, pause_identity = 'almanac', \
         paused_ms = $2, next_fire_ms = NULL WHERE id = $3",
        params![&note, now_ms, id],
    )
    .await?;
    Ok(())
}

/// Inserts planned rows (and the first attempt of each PENDING one; a BUFFERED one keeps
/// the action too, for when it starts). A row whose fire already has a ledger row is not
/// written again. A PENDING row is written under `lease` when there is one (epoch
/// `FIRST_EPOCH`). Returns the ids written, and the dispatch job of each written PENDING.
pub async fn insert_runs(
    conn: &mut dyn Conn,
    schedule: &Schedule,
    runs: &[NewRun],
    now_ms: i64,
    lease: Option<ClaimLease<'_>>,
) -> Result<(Vec<String>, Vec<DispatchJob>), StoreError> {
    let mut written_ids = Vec::new();
    let mut pending = Vec::new();
    let action = to_json(&schedule.action)?;
    for run in runs {
        let is_pending = run.status == RunStatus::Pending;
        let keeps_action = is_pending || run.status == RunStatus::Buffered;
        let lease = lease.filter(|_| is_pending);
        // A conflict on any unique key (the fire's, or a manual run's request id) writes
        // nothing: the database decides a race between two writers of one fire.
        let written = conn
            .execute(
                "INSERT INTO runs (id, schedule_id, nominal_ms, trigger, status, attempt, \
                 dispatch_after_ms, reason, coalesced_into, missed_first_ms, missed_last_ms, \
                 missed_count, request_id, action, created_ms, owner, lease_until_ms, \
                 lease_epoch) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                 $16, $17, $18) \
                 ON CONFLICT DO NOTHING",
                params![
                    &run.id,
                    &schedule.id,
                    run.nominal_ms,
                    trigger_str(run.trigger),
                    status_str(run.status),
                    if is_pending { 1i64 } else { 0 },
                    run.dispatch_after_ms,
                    run.reason.as_deref(),
                    run.coalesced_into.as_deref(),
                    run.missed.map(|m| m.first_ms),
                    run.missed.map(|m| m.last_ms),
                    run.missed.map(|m| m.count),
                    run.request_id.as_deref(),
                    keeps_action.then_some(action.as_str()),
                    now_ms,
                    lease.map(|l| l.owner),
                    lease.map(|l| l.until_ms),
                    if lease.is_some() { FIRST_EPOCH } else { 0 },
                ],
            )
            .await?
            == 1;
        if !written {
            tracing::debug!(schedule_id = %schedule.id, nominal_ms = run.nominal_ms,
                "fire already has a ledger row; not written again");
            continue;
        }
        written_ids.push(run.id.clone());
        if is_pending {
            let key = execution_key(&run.id, 1);
            conn.execute(
                "INSERT INTO attempts (run_id, number, execution_key, deadline_ms, status) \
                 VALUES ($1, 1, $2, $3, 'PENDING')",
                params![&run.id, &key, run.deadline_ms],
            )
            .await?;
            pending.push(DispatchJob {
                run_id: run.id.clone(),
                schedule_id: schedule.id.clone(),
                nominal_ms: run.nominal_ms,
                status: RunStatus::Pending,
                attempt: 1,
                execution_key: key,
                dispatch_after_ms: run.dispatch_after_ms.unwrap_or(run.nominal_ms),
                deadline_ms: run.deadline_ms,
                last_seq: 0,
                action: schedule.action.clone(),
                lease_epoch: if lease.is_some() { FIRST_EPOCH } else { 0 },
            });
        }
    }
    Ok((written_ids, pending))
}

/// Writes a manual run inside the caller's transaction.
pub async fn trigger(
    conn: &mut dyn Conn,
    schedule_id: &str,
    request_id: Option<&str>,
    now_ms: i64,
    plan: &ManualPlanner<'_>,
) -> Result<(Run, Vec<Effect>), StoreError> {
    if lock_schedule(conn, schedule_id, false).await? == Lock::Absent {
        return Err(StoreError::NotFound(format!("schedule {schedule_id:?}")));
    }
    if let Some(request_id) = request_id {
        let existing = conn
            .fetch_optional(
                "SELECT id FROM runs WHERE schedule_id = $1 AND request_id = $2",
                params![schedule_id, request_id],
            )
            .await?;
        if let Some(row) = existing {
            let run_id: String = col(&row, "id")?;
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
    let mut effects: Vec<Effect> =
        insert_runs(conn, &schedule, std::slice::from_ref(&row), now_ms, None)
            .await?
            .1
            .into_iter()
            .map(|job| Effect::Dispatch(job.run_id))
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
        conn.execute(
            "UPDATE schedules SET buffer_overruns = buffer_overruns + 1 WHERE id = $1",
            params![schedule_id],
        )
        .await?;
    }
    let run = load_run(conn, &row.id).await?;
    run.map(|r| (r, effects))
        .ok_or_else(|| StoreError::NotFound(format!("run {:?}", row.id)))
}

/// One run with its attempts.
pub async fn load_run(conn: &mut dyn Conn, run_id: &str) -> Result<Option<Run>, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {ATTEMPT_COLUMNS} FROM runs r \
         LEFT JOIN attempts a ON a.run_id = r.id WHERE r.id = $1 ORDER BY a.number"
    );
    let rows = conn.fetch_all(&sql, params![run_id]).await?;
    Ok(runs_with_attempts(&rows)?.into_iter().next())
}

/// A page of a schedule's runs, newest nominal time first.
pub async fn list_runs(
    conn: &mut dyn Conn,
    schedule_id: &str,
    status: Option<RunStatus>,
    before: Option<RunCursor>,
    limit: u32,
) -> Result<Vec<Run>, StoreError> {
    let sql = format!(
        "SELECT {RUN_COLUMNS}, {ATTEMPT_COLUMNS} FROM \
           (SELECT * FROM runs WHERE schedule_id = $1 AND ($2 IS NULL OR status = $2) \
              AND ($3 IS NULL OR nominal_ms < $3 OR (nominal_ms = $3 AND id < $4)) \
            ORDER BY nominal_ms DESC, id DESC LIMIT $5) r \
         LEFT JOIN attempts a ON a.run_id = r.id \
         ORDER BY r.nominal_ms DESC, r.id DESC, a.number"
    );
    let (before_ms, before_id) = before.unzip();
    let rows = conn
        .fetch_all(
            &sql,
            params![
                schedule_id,
                status.map(status_str),
                before_ms,
                before_id.as_deref(),
                limit
            ],
        )
        .await?;
    runs_with_attempts(&rows)
}

/// What the dispatcher sends for a run's current attempt.
pub async fn dispatch_job(
    conn: &mut dyn Conn,
    run_id: &str,
) -> Result<Option<DispatchJob>, StoreError> {
    let row = conn
        .fetch_optional(
            "SELECT r.id, r.schedule_id, r.nominal_ms, r.status, r.attempt, \
             r.dispatch_after_ms, r.action, r.lease_epoch, a.execution_key, a.deadline_ms, \
             a.last_seq \
             FROM runs r JOIN attempts a ON a.run_id = r.id AND a.number = r.attempt \
             WHERE r.id = $1",
            params![run_id],
        )
        .await?;
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
        lease_epoch: col(&row, "lease_epoch")?,
    }))
}

/// Applies one update inside the caller's transaction; one that no longer applies (the
/// attempt moved on, the run was deleted, another replica took the run over: its lease
/// epoch is not the update's fence) changes nothing. Returns what it leaves to do.
pub async fn apply_update(
    conn: &mut dyn Conn,
    update: &LedgerUpdate,
    now_ms: i64,
) -> Result<Vec<Effect>, StoreError> {
    let (LedgerUpdate::Started { run_id, fence, .. }
    | LedgerUpdate::Finished { run_id, fence, .. }) = update;
    if let Some(fence) = *fence {
        let epoch = leases::epoch_for_update(conn, run_id).await?;
        if epoch != Some(fence) {
            tracing::info!(run_id = %run_id, fence, epoch = ?epoch,
                "ledger update fenced off: another replica took the run over");
            return Ok(Vec::new());
        }
    }
    match update {
        LedgerUpdate::Started {
            run_id,
            attempt,
            execution_id,
            started_ms,
            last_seq,
            ..
        } => {
            conn.execute(
                "UPDATE attempts SET execution_id = $1, status = 'RUNNING', \
                 started_ms = COALESCE(started_ms, $2), \
                 last_seq = CASE WHEN last_seq > $3 THEN last_seq ELSE $3 END \
                 WHERE run_id = $4 AND number = $5 AND status IN ('PENDING', 'RUNNING')",
                params![
                    execution_id,
                    *started_ms,
                    *last_seq as i64,
                    run_id,
                    *attempt
                ],
            )
            .await?;
            let moved = conn
                .execute(
                    "UPDATE runs SET status = 'RUNNING', started_ms = COALESCE(started_ms, $1) \
                     WHERE id = $2 AND attempt = $3 AND status = 'PENDING'",
                    params![*started_ms, run_id, *attempt],
                )
                .await?;
            if moved == 0 {
                // Cancelled while its Execute was on the way: stop what started anyway.
                let status = match conn
                    .fetch_optional(
                        "SELECT status FROM runs WHERE id = $1 AND attempt = $2",
                        params![run_id, *attempt],
                    )
                    .await?
                {
                    Some(row) => Some(col::<String>(&row, "status")?),
                    None => None,
                };
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
            started,
            ..
        } => {
            return finish_attempt(conn, run_id, *attempt, outcome, started.as_ref(), now_ms).await;
        }
    }
    Ok(Vec::new())
}

/// Locks the schedules of the runs whose attempts `updates` finish, in id order, so two
/// writers of updates for the same schedules never wait on each other in a cycle. A
/// start touches only its run's row and decides nothing for the schedule: it takes no
/// schedule lock, so starts never queue behind another replica's claims.
pub async fn lock_schedules_of(
    conn: &mut dyn Conn,
    updates: &[LedgerUpdate],
) -> Result<(), StoreError> {
    if conn.dialect() == super::Dialect::Sqlite {
        return Ok(());
    }
    let mut run_ids: Vec<&str> = updates
        .iter()
        .filter_map(|u| match u {
            LedgerUpdate::Started { .. } => None,
            LedgerUpdate::Finished { run_id, .. } => Some(run_id.as_str()),
        })
        .collect();
    run_ids.sort_unstable();
    run_ids.dedup();
    let mut schedule_ids = Vec::with_capacity(run_ids.len());
    for run_id in run_ids {
        if let Some(row) = conn
            .fetch_optional(
                "SELECT schedule_id FROM runs WHERE id = $1",
                params![run_id],
            )
            .await?
        {
            schedule_ids.push(col::<String>(&row, "schedule_id")?);
        }
    }
    schedule_ids.sort_unstable();
    schedule_ids.dedup();
    for id in &schedule_ids {
        lock_schedule(conn, id, false).await?;
    }
    Ok(())
}
