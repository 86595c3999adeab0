//! The SQLite backend of the scheduler's store: WAL, one writer connection whose
//! transactions are `BEGIN IMMEDIATE` (the schedule's lock of DESIGN §4.3: concurrent
//! writers queue instead of failing), and a pool of readers that never wait behind it.

mod ledger;
mod maintenance;
mod outcomes;
mod rows;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::AssertSqlSafe;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use self::rows::{SCHEDULE_COLUMNS, col, schedule_from_row, state_str};
use super::{
    Claimed, DuePlanner, Effect, LedgerUpdate, ManualPlanner, RunCursor, ScheduleChange,
    SchedulerStore, StoreError,
};
use crate::engine::overlap::InFlight;
use crate::error::SchedulerError;
use crate::model::{
    CancelMode, DispatchJob, Notification, Retention, Run, RunStatus, Schedule, ScheduleState,
};

/// How long a statement waits for a lock before the store reports itself unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The scheduler's SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies the migrations.
    /// `synchronous_full` trades write speed for durability across power loss.
    pub async fn open(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(StoreError::Database)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        sqlx::migrate!("../migrations/scheduler/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await
            .map_err(classify)?;
        Ok(Self { writer, reader })
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(classify)
    }
}

/// Classifies a database error once: constraint violations become typed errors, lost
/// connections and lock timeouts become `Unavailable`.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::AlreadyExists(db.message().to_string())
        }
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("5" | "6" | "261" | "517")) =>
        {
            // SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            StoreError::Unavailable(e)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
        _ => StoreError::Database(e),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

async fn load_schedule(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<Schedule>, StoreError> {
    let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE id = ?");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(classify)?;
    row.as_ref().map(schedule_from_row).transpose()
}

/// Writes every column of a schedule (insert or replace by id).
async fn write_schedule(
    conn: &mut SqliteConnection,
    s: &Schedule,
    insert: bool,
) -> Result<(), StoreError> {
    let sql = if insert {
        "INSERT INTO schedules (display_name, description, spec, action, policy, state, \
         pause_note, pause_identity, paused_ms, next_fire_ms, run_count, version, request_id, \
         completion_reason, created_ms, updated_ms, consecutive_failures, buffer_overruns, id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    } else {
        "UPDATE schedules SET display_name = ?, description = ?, spec = ?, action = ?, \
         policy = ?, state = ?, pause_note = ?, pause_identity = ?, paused_ms = ?, \
         next_fire_ms = ?, run_count = ?, version = ?, request_id = ?, completion_reason = ?, \
         created_ms = ?, updated_ms = ?, consecutive_failures = ?, buffer_overruns = ? \
         WHERE id = ?"
    };
    let pause = s.pause.as_ref();
    sqlx::query(sql)
        .bind(&s.display_name)
        .bind(&s.description)
        .bind(to_json(&s.spec)?)
        .bind(to_json(&s.action)?)
        .bind(to_json(&s.policy)?)
        .bind(state_str(s.state))
        .bind(pause.map(|p| p.note.as_str()))
        .bind(pause.map(|p| p.identity.as_str()))
        .bind(pause.map(|p| p.at_ms))
        .bind(s.next_fire_ms)
        .bind(s.run_count)
        .bind(s.version)
        .bind(s.request_id.as_deref())
        .bind(s.completion_reason.as_deref())
        .bind(s.created_ms)
        .bind(s.updated_ms)
        .bind(s.consecutive_failures)
        .bind(s.buffer_overruns)
        .bind(&s.id)
        .execute(conn)
        .await
        .map_err(|e| match classify(e) {
            StoreError::AlreadyExists(msg) if msg.contains("request_id") => {
                StoreError::AlreadyExists(format!(
                    "a schedule created with request_id {:?}",
                    s.request_id.as_deref().unwrap_or_default()
                ))
            }
            StoreError::AlreadyExists(_) => {
                StoreError::AlreadyExists(format!("schedule {:?}", s.id))
            }
            other => other,
        })?;
    Ok(())
}

#[async_trait]
impl SchedulerStore for SqliteStore {
    async fn insert_schedule(&self, schedule: &Schedule) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        write_schedule(&mut tx, schedule, true).await?;
        tx.commit().await.map_err(classify)
    }

    async fn schedule_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Option<Schedule>, StoreError> {
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE request_id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(request_id)
            .fetch_optional(&self.reader)
            .await
            .map_err(classify)?;
        row.as_ref().map(schedule_from_row).transpose()
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        load_schedule(&mut conn, id).await
    }

    async fn list_schedules(
        &self,
        state: Option<ScheduleState>,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules \
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR id > ?2) ORDER BY id LIMIT ?3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(state.map(state_str))
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(classify)?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn modify_schedule(
        &self,
        id: &str,
        change: &ScheduleChange<'_>,
    ) -> Result<Schedule, SchedulerError> {
        let mut tx = self.begin().await?;
        let Some(current) = load_schedule(&mut tx, id).await? else {
            return Err(SchedulerError::NotFound(format!("schedule {id:?}")));
        };
        let mut changed = current.clone();
        change(&mut changed)?;
        changed.id = current.id.clone();
        changed.version = current.version + 1;
        write_schedule(&mut tx, &changed, false).await?;
        tx.commit().await.map_err(classify)?;
        Ok(changed)
    }

    async fn delete_schedule(
        &self,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM schedules WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(classify)?;
        let Some(version) = version else {
            return Err(StoreError::NotFound(format!("schedule {id:?}")));
        };
        if let Some(expected) = expected_version.filter(|&e| e != version) {
            return Err(StoreError::VersionMismatch {
                expected,
                actual: version,
            });
        }
        for sql in [
            "DELETE FROM attempts WHERE run_id IN (SELECT id FROM runs WHERE schedule_id = ?)",
            "DELETE FROM runs WHERE schedule_id = ?",
            "DELETE FROM schedules WHERE id = ?",
        ] {
            sqlx::query(sql)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }

    async fn due_index(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, next_fire_ms FROM schedules \
             WHERE state = 'ACTIVE' AND next_fire_ms IS NOT NULL",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| Ok((col(r, "id")?, col(r, "next_fire_ms")?)))
            .collect()
    }

    async fn claim_due(
        &self,
        ids: &[String],
        now_ms: i64,
        plan: &DuePlanner<'_>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(ledger::claim_one(&mut tx, id, now_ms, plan).await?);
        }
        tx.commit().await.map_err(classify)?;
        Ok(out)
    }

    async fn trigger(
        &self,
        schedule_id: &str,
        request_id: Option<&str>,
        now_ms: i64,
        plan: &ManualPlanner<'_>,
    ) -> Result<(Run, Vec<Effect>), StoreError> {
        let mut tx = self.begin().await?;
        let outcome = ledger::trigger(&mut tx, schedule_id, request_id, now_ms, plan).await?;
        tx.commit().await.map_err(classify)?;
        Ok(outcome)
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<Run>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        ledger::load_run(&mut conn, run_id).await
    }

    async fn list_runs(
        &self,
        schedule_id: &str,
        status: Option<RunStatus>,
        before: Option<RunCursor>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        ledger::list_runs(&mut conn, schedule_id, status, before, limit).await
    }

    async fn dispatch_job(&self, run_id: &str) -> Result<Option<DispatchJob>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        ledger::dispatch_job(&mut conn, run_id).await
    }

    async fn in_flight_runs(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM runs WHERE status IN ('PENDING', 'RUNNING') ORDER BY dispatch_after_ms",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(classify)?;
        rows.iter().map(|r| col(r, "id")).collect()
    }

    async fn fail_unreadable_run(
        &self,
        run_id: &str,
        problem: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let error = format!("the run cannot be read: {problem}");
        sqlx::query(
            "UPDATE attempts SET status = 'FAILED', error = ?, finished_ms = ? \
             WHERE run_id = ? AND finished_ms IS NULL",
        )
        .bind(&error)
        .bind(now_ms)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        sqlx::query(
            "UPDATE runs SET status = 'FAILED', error = ?, finished_ms = ? \
             WHERE id = ? AND status IN ('PENDING', 'RUNNING')",
        )
        .bind(&error)
        .bind(now_ms)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn apply_updates(
        &self,
        updates: &[LedgerUpdate],
        now_ms: i64,
    ) -> Result<Vec<Effect>, StoreError> {
        let mut tx = self.begin().await?;
        let mut effects = Vec::new();
        for update in updates {
            effects.extend(ledger::apply_update(&mut tx, update, now_ms).await?);
        }
        tx.commit().await.map_err(classify)?;
        Ok(effects)
    }

    async fn cancel_run(
        &self,
        run_id: &str,
        mode: CancelMode,
        reason: &str,
        now_ms: i64,
    ) -> Result<(Run, Vec<Effect>), StoreError> {
        let mut tx = self.begin().await?;
        let out = outcomes::cancel_run(&mut tx, run_id, mode, reason, now_ms).await?;
        tx.commit().await.map_err(classify)?;
        Ok(out)
    }

    async fn rerun_run(&self, run_id: &str, now_ms: i64) -> Result<(Run, Vec<Effect>), StoreError> {
        let mut tx = self.begin().await?;
        let out = outcomes::rerun_run(&mut tx, run_id, now_ms).await?;
        tx.commit().await.map_err(classify)?;
        Ok(out)
    }

    async fn backfill(
        &self,
        schedule_id: &str,
        fires: &[i64],
        buffered: bool,
        spacing_ms: i64,
        now_ms: i64,
    ) -> Result<(Vec<String>, i64, Vec<Effect>), StoreError> {
        let mut tx = self.begin().await?;
        let out = maintenance::backfill(&mut tx, schedule_id, fires, buffered, spacing_ms, now_ms)
            .await?;
        tx.commit().await.map_err(classify)?;
        Ok(out)
    }

    async fn skip_buffered(
        &self,
        schedule_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = outcomes::skip_buffered(&mut tx, schedule_id, reason, now_ms).await?;
        tx.commit().await.map_err(classify)?;
        Ok(n)
    }

    async fn prune_runs(
        &self,
        schedule_id: &str,
        keep_last: u32,
        older_than_ms: Option<i64>,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n =
            maintenance::prune_runs(&mut tx, schedule_id, keep_last, older_than_ms, batch).await?;
        tx.commit().await.map_err(classify)?;
        Ok(n)
    }

    async fn retained_schedules(&self) -> Result<Vec<(String, Retention)>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        maintenance::retained_schedules(&mut conn).await
    }

    async fn pending_notifications(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        maintenance::pending_notifications(&mut conn).await
    }

    async fn notification_job(
        &self,
        run_id: &str,
    ) -> Result<Option<(Schedule, Run, Notification)>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(classify)?;
        maintenance::notification_job(&mut conn, run_id).await
    }

    async fn notification_done(&self, run_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        maintenance::notification_done(&mut tx, run_id, error).await?;
        tx.commit().await.map_err(classify)
    }
}

/// What a schedule has in flight (PENDING or RUNNING runs) and waiting (BUFFERED), read
/// inside the caller's transaction.
async fn in_flight_state(
    conn: &mut SqliteConnection,
    schedule_id: &str,
) -> Result<InFlight, StoreError> {
    let rows = sqlx::query(
        "SELECT id, status FROM runs WHERE schedule_id = ? \
         AND status IN ('PENDING', 'RUNNING', 'BUFFERED') ORDER BY nominal_ms",
    )
    .bind(schedule_id)
    .fetch_all(conn)
    .await
    .map_err(classify)?;
    let mut state = InFlight::default();
    for row in &rows {
        let status: String = col(row, "status")?;
        if status == "BUFFERED" {
            state.buffered += 1;
        } else {
            state.running.push(col(row, "id")?);
        }
    }
    Ok(state)
}
