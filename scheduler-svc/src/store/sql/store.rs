//! `SqlStore`: the scheduler's store over either backend. Every write is one transaction
//! that first takes the lock of the schedule it decides for (`lock_schedule`); a
//! transaction PostgreSQL aborts as a deadlock or serialization failure is run again, a
//! bounded number of times (the planners it calls are pure, so a rerun decides afresh).

use async_trait::async_trait;
use futures::StreamExt;

use super::rows::{SCHEDULE_COLUMNS, col, schedule_from_row, state_str};
use super::schedules::{load_schedule, write_schedule};
use super::{
    Backend, Lock, leases, ledger, lock_run_schedule, lock_schedule, maintenance, outcomes, params,
};
use crate::error::SchedulerError;
use crate::model::{
    CancelMode, DispatchJob, Notification, Retention, Run, RunStatus, Schedule, ScheduleState,
};
use crate::store::{
    ClaimLease, Claimed, DuePlanner, Effect, LedgerUpdate, ManualPlanner, RunCursor,
    ScheduleChange, SchedulerStore, StoreError,
};

/// How many times a write transaction runs before a transient abort is reported.
const TX_ATTEMPTS: u32 = 5;

/// Lease transactions `lease_jobs` runs at once on a store with concurrent writers
/// (PostgreSQL): half its pool, as the timer's claims.
const CONCURRENT_LEASES: usize = 8;

/// The scheduler's store on backend `B`.
#[derive(Debug)]
pub struct SqlStore<B> {
    pub(crate) db: B,
}

/// Whether an error is a transaction PostgreSQL aborted to break a deadlock or a
/// serialization conflict: running it again is the documented remedy.
pub(crate) fn is_retryable(e: &StoreError) -> bool {
    match e {
        StoreError::Unavailable(source) => match source.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        },
        _ => false,
    }
}

fn scheduler_error_retryable(e: &SchedulerError) -> bool {
    matches!(e, SchedulerError::Unavailable(inner) if is_retryable(inner))
}

/// Runs `$body` with `$conn: &mut dyn Conn` inside a write transaction and commits it,
/// again (bounded) when the database aborted it as a deadlock or serialization failure.
macro_rules! write_tx {
    ($self:ident, $err:ty, $retryable:path, |$conn:ident| $body:expr) => {{
        let mut tries = 0u32;
        loop {
            tries += 1;
            let result: Result<_, $err> = async {
                let mut tx = $self.db.begin().await?;
                let out = {
                    let $conn = tx.conn();
                    $body
                };
                tx.commit().await?;
                Ok(out)
            }
            .await;
            match result {
                Err(e) if tries < TX_ATTEMPTS && $retryable(&e) => {
                    tracing::debug!(error = %e, tries, "transaction aborted by the database; running it again");
                }
                other => break other,
            }
        }
    }};
    ($self:ident, |$conn:ident| $body:expr) => {
        write_tx!($self, StoreError, is_retryable, |$conn| $body)
    };
}

#[async_trait]
impl<B: Backend> SchedulerStore for SqlStore<B> {
    fn claim_parallelism(&self) -> usize {
        self.db.concurrent_writers()
    }

    async fn insert_schedule(&self, schedule: &Schedule) -> Result<(), StoreError> {
        write_tx!(self, |conn| write_schedule(conn, schedule, true).await?)
    }

    async fn schedule_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Option<Schedule>, StoreError> {
        let mut reader = self.db.reader().await?;
        let sql = format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE request_id = $1");
        let row = reader
            .conn()
            .fetch_optional(&sql, params![request_id])
            .await?;
        row.as_ref().map(schedule_from_row).transpose()
    }

    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let mut reader = self.db.reader().await?;
        load_schedule(reader.conn(), id).await
    }

    async fn list_schedules(
        &self,
        state: Option<ScheduleState>,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError> {
        let sql = format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules \
             WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
        );
        let mut reader = self.db.reader().await?;
        let rows = reader
            .conn()
            .fetch_all(&sql, params![state.map(state_str), after_id, limit])
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    async fn modify_schedule(
        &self,
        id: &str,
        change: &ScheduleChange<'_>,
    ) -> Result<Schedule, SchedulerError> {
        write_tx!(self, SchedulerError, scheduler_error_retryable, |conn| {
            lock_schedule(conn, id, false).await?;
            let Some(current) = load_schedule(conn, id).await? else {
                return Err(SchedulerError::NotFound(format!("schedule {id:?}")));
            };
            let mut changed = current.clone();
            change(&mut changed)?;
            changed.id = current.id.clone();
            changed.version = current.version + 1;
            write_schedule(conn, &changed, false).await?;
            changed
        })
    }

    async fn delete_schedule(
        &self,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<(), StoreError> {
        write_tx!(self, |conn| {
            if lock_schedule(conn, id, false).await? == Lock::Absent {
                return Err(StoreError::NotFound(format!("schedule {id:?}")));
            }
            let row = conn
                .fetch_optional("SELECT version FROM schedules WHERE id = $1", params![id])
                .await?;
            let Some(row) = row else {
                return Err(StoreError::NotFound(format!("schedule {id:?}")));
            };
            let version: i64 = col(&row, "version")?;
            if let Some(expected) = expected_version.filter(|&e| e != version) {
                return Err(StoreError::VersionMismatch {
                    expected,
                    actual: version,
                });
            }
            for sql in [
                "DELETE FROM attempts WHERE run_id IN (SELECT id FROM runs WHERE schedule_id = $1)",
                "DELETE FROM runs WHERE schedule_id = $1",
                "DELETE FROM schedules WHERE id = $1",
            ] {
                conn.execute(sql, params![id]).await?;
            }
        })
    }

    async fn due_index(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut reader = self.db.reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT id, next_fire_ms FROM schedules \
                 WHERE state = 'ACTIVE' AND next_fire_ms IS NOT NULL",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((col(r, "id")?, col(r, "next_fire_ms")?)))
            .collect()
    }

    async fn claim_due(
        &self,
        ids: &[String],
        now_ms: i64,
        lease: Option<ClaimLease<'_>>,
        plan: &DuePlanner<'_>,
    ) -> Result<Vec<Claimed>, StoreError> {
        write_tx!(self, |conn| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(ledger::claim_one(conn, id, now_ms, lease, plan).await?);
            }
            out
        })
    }

    async fn trigger(
        &self,
        schedule_id: &str,
        request_id: Option<&str>,
        now_ms: i64,
        plan: &ManualPlanner<'_>,
    ) -> Result<(Run, Vec<Effect>), StoreError> {
        write_tx!(self, |conn| ledger::trigger(
            conn,
            schedule_id,
            request_id,
            now_ms,
            plan
        )
        .await?)
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<Run>, StoreError> {
        let mut reader = self.db.reader().await?;
        ledger::load_run(reader.conn(), run_id).await
    }

    async fn list_runs(
        &self,
        schedule_id: &str,
        status: Option<RunStatus>,
        before: Option<RunCursor>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        let mut reader = self.db.reader().await?;
        ledger::list_runs(reader.conn(), schedule_id, status, before, limit).await
    }

    async fn dispatch_job(&self, run_id: &str) -> Result<Option<DispatchJob>, StoreError> {
        let mut reader = self.db.reader().await?;
        ledger::dispatch_job(reader.conn(), run_id).await
    }

    async fn in_flight_runs(&self) -> Result<Vec<String>, StoreError> {
        let mut reader = self.db.reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT id FROM runs WHERE status IN ('PENDING', 'RUNNING') \
                 ORDER BY dispatch_after_ms, id",
                &[],
            )
            .await?;
        rows.iter().map(|r| col(r, "id")).collect()
    }

    async fn take_lease(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let exclusive = self.db.concurrent_writers() == 1;
        write_tx!(self, |conn| {
            leases::take(conn, run_id, owner, now_ms, until_ms, exclusive).await?
        })
    }

    async fn lease_jobs(
        &self,
        run_ids: &[String],
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(String, Option<DispatchJob>)>, StoreError> {
        if self.db.concurrent_writers() == 1 {
            return write_tx!(self, |conn| {
                let mut leased = Vec::with_capacity(run_ids.len());
                for run_id in run_ids {
                    if let Some(job) =
                        leases::take_with_job(conn, run_id, owner, now_ms, until_ms, true).await?
                    {
                        leased.push((run_id.clone(), job));
                    }
                }
                leased
            });
        }
        // A transaction per run, `CONCURRENT_LEASES` at once over the pool: one lock each,
        // so none waits on a ledger writer holding runs in another order, and a batch
        // takes a few round trips' time, not one per run.
        let taken: Vec<Result<_, StoreError>> = futures::stream::iter(run_ids.iter().cloned())
            .map(|run_id: String| async move {
                let job = write_tx!(self, |conn| {
                    leases::take_with_job(conn, &run_id, owner, now_ms, until_ms, false).await?
                })?;
                Ok(job.map(|job| (run_id, job)))
            })
            .buffered(CONCURRENT_LEASES)
            .collect()
            .await;
        let mut leased = Vec::with_capacity(run_ids.len());
        for run in taken {
            leased.extend(run?);
        }
        Ok(leased)
    }

    async fn renew_leases(&self, owner: &str, until_ms: i64) -> Result<(), StoreError> {
        write_tx!(self, |conn| leases::renew(conn, owner, until_ms).await?)
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        write_tx!(self, |conn| leases::release(conn, owner).await?)
    }

    async fn live_peers(&self, owner: &str, now_ms: i64) -> Result<u64, StoreError> {
        if self.db.concurrent_writers() == 1 {
            return Ok(0); // one scheduler per SQLite file
        }
        let mut reader = self.db.reader().await?;
        let n = leases::live_peers(reader.conn(), owner, now_ms).await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn drivable_runs(
        &self,
        owner: &str,
        now_ms: i64,
        unowned_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let exclusive = self.db.concurrent_writers() == 1;
        let mut reader = self.db.reader().await?;
        leases::drivable(
            reader.conn(),
            owner,
            now_ms,
            unowned_before_ms,
            exclusive,
            limit,
        )
        .await
    }

    async fn database_time_ms(&self) -> Result<Option<i64>, StoreError> {
        let mut reader = self.db.reader().await?;
        leases::database_time_ms(reader.conn()).await
    }

    async fn due_before(&self, until_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let mut reader = self.db.reader().await?;
        let rows = reader
            .conn()
            .fetch_all(
                "SELECT id, next_fire_ms FROM schedules \
                 WHERE state = 'ACTIVE' AND next_fire_ms <= $1 ORDER BY next_fire_ms",
                params![until_ms],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((col(r, "id")?, col(r, "next_fire_ms")?)))
            .collect()
    }

    async fn fail_unreadable_run(
        &self,
        run_id: &str,
        problem: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let error = format!("the run cannot be read: {problem}");
        write_tx!(self, |conn| {
            lock_run_schedule(conn, run_id).await?;
            conn.execute(
                "UPDATE attempts SET status = 'FAILED', error = $1, finished_ms = $2 \
                 WHERE run_id = $3 AND finished_ms IS NULL",
                params![&error, now_ms, run_id],
            )
            .await?;
            conn.execute(
                "UPDATE runs SET status = 'FAILED', error = $1, finished_ms = $2 \
                 WHERE id = $3 AND status IN ('PENDING', 'RUNNING')",
                params![&error, now_ms, run_id],
            )
            .await?;
        })
    }

    async fn apply_updates(
        &self,
        updates: &[LedgerUpdate],
        now_ms: i64,
    ) -> Result<Vec<Effect>, StoreError> {
        write_tx!(self, |conn| {
            ledger::lock_schedules_of(conn, updates).await?;
            let mut effects = Vec::new();
            for update in updates {
                effects.extend(ledger::apply_update(conn, update, now_ms).await?);
            }
            effects
        })
    }

    async fn cancel_run(
        &self,
        run_id: &str,
        mode: CancelMode,
        reason: &str,
        now_ms: i64,
    ) -> Result<(Run, Vec<Effect>), StoreError> {
        write_tx!(self, |conn| {
            lock_run_schedule(conn, run_id).await?;
            outcomes::cancel_run(conn, run_id, mode, reason, now_ms).await?
        })
    }

    async fn rerun_run(&self, run_id: &str, now_ms: i64) -> Result<(Run, Vec<Effect>), StoreError> {
        write_tx!(self, |conn| {
            lock_run_schedule(conn, run_id).await?;
            outcomes::rerun_run(conn, run_id, now_ms).await?
        })
    }

    async fn backfill(
        &self,
        schedule_id: &str,
        fires: &[i64],
        buffered: bool,
        spacing_ms: i64,
        now_ms: i64,
    ) -> Result<(Vec<String>, i64, Vec<Effect>), StoreError> {
        write_tx!(self, |conn| {
            lock_schedule(conn, schedule_id, false).await?;
            maintenance::backfill(conn, schedule_id, fires, buffered, spacing_ms, now_ms).await?
        })
    }

    async fn skip_buffered(
        &self,
        schedule_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        write_tx!(self, |conn| {
            lock_schedule(conn, schedule_id, false).await?;
            outcomes::skip_buffered(conn, schedule_id, reason, now_ms).await?
        })
    }

    async fn prune_runs(
        &self,
        schedule_id: &str,
        keep_last: u32,
        older_than_ms: Option<i64>,
        batch: u32,
    ) -> Result<u64, StoreError> {
        write_tx!(self, |conn| {
            lock_schedule(conn, schedule_id, false).await?;
            maintenance::prune_runs(conn, schedule_id, keep_last, older_than_ms, batch).await?
        })
    }

    async fn retained_schedules(&self) -> Result<Vec<(String, Retention)>, StoreError> {
        let mut reader = self.db.reader().await?;
        maintenance::retained_schedules(reader.conn()).await
    }

    async fn pending_notifications(&self) -> Result<Vec<String>, StoreError> {
        let mut reader = self.db.reader().await?;
        maintenance::pending_notifications(reader.conn()).await
    }

    async fn notification_job(
        &self,
        run_id: &str,
    ) -> Result<Option<(Schedule, Run, Notification)>, StoreError> {
        let mut reader = self.db.reader().await?;
        maintenance::notification_job(reader.conn(), run_id).await
    }

    async fn notification_done(&self, run_id: &str, error: Option<&str>) -> Result<(), StoreError> {
        write_tx!(self, |conn| maintenance::notification_done(
            conn, run_id, error
        )
        .await?)
    }
}
