//! The scheduler's storage: one trait, one module per backend (DESIGN §8). Every write
//! that decides something — a claim, a trigger, a schedule change — runs inside one
//! transaction under the schedule's lock, with the decision made by a pure function the
//! engine passes in, so the database constraint and the decision see the same rows.
//! SQLite (the default) and PostgreSQL share their statements (`sql`); `open` picks one.

mod postgres;
mod sql;
mod sqlite;

#[cfg(test)]
mod conformance;

pub use postgres::{PostgresDb, PostgresStore, redacted as redacted_url};
pub use sql::store::SqlStore;
pub use sqlite::{SqliteDb, SqliteStore};

use async_trait::async_trait;

use crate::engine::overlap::InFlight;
use crate::engine::policy::{FirePlan, NewRun};
use crate::error::SchedulerError;
use crate::model::{
    AttemptOutcome, CancelMode, DispatchJob, Notification, Retention, Run, RunStatus, Schedule,
    ScheduleState,
};

/// A storage failure, classified once where the backend reports it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The row does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Optimistic concurrency: the row changed since it was read.
    #[error("version mismatch: expected {expected}, found {actual}")]
    VersionMismatch { expected: i64, actual: i64 },
    /// The operation does not fit the row's state (cancel a final run, …).
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached or is busy past its timeout.
    #[error("database unavailable")]
    Unavailable(#[source] BoxError),
    /// A stored value cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] BoxError),
}

/// A database driver's error (sqlx for PostgreSQL, rusqlite for SQLite).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The planner a claim runs for each due schedule: the schedule as stored, and a run
/// of what it has in flight. `Err` records the problem on the schedule and pauses it.
pub type DuePlanner<'a> =
    dyn Fn(&Schedule, &InFlight) -> Result<FirePlan, String> + Send + Sync + 'a;

/// The planner of a manual run: the row, the cancellations it asks for, and whether it
/// was an overrun of a full buffer.
pub type ManualPlanner<'a> =
    dyn Fn(&Schedule, &InFlight) -> (NewRun, Vec<(String, CancelMode)>, bool) + Send + Sync + 'a;

/// A change to a stored schedule, applied to the row as read under its lock.
pub type ScheduleChange<'a> =
    dyn Fn(&mut Schedule) -> Result<(), SchedulerError> + Send + Sync + 'a;

/// What a claim did to one schedule it was asked about.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub schedule_id: String,
    /// The schedule's next fire if it is ACTIVE, else `None` (drop it from the index).
    pub next_fire_ms: Option<i64>,
    /// Runs written PENDING, to dispatch, as the dispatcher would read them: under the
    /// claimer's lease (epoch `FIRST_EPOCH`) if the claim took one, else unowned (0).
    pub dispatch: Vec<DispatchJob>,
    /// What else the claim asks of the engine (cancellations of runs in flight, and runs
    /// they let go ahead).
    pub effects: Vec<Effect>,
}

/// The owner lease a claim takes on the runs it writes PENDING, for the replica that
/// claims: they go to its dispatcher at once, which then needs no transaction of its own
/// per run to take the lease (DESIGN §4.5).
#[derive(Debug, Clone, Copy)]
pub struct ClaimLease<'a> {
    pub owner: &'a str,
    pub until_ms: i64,
}

/// The epoch of the lease a run is written with (every later take-over adds one).
pub const FIRST_EPOCH: i64 = 1;

/// Work a committed ledger change leaves for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Dispatch this run's current attempt.
    Dispatch(String),
    /// Ask the executor to stop the execution of `key` (the run's current attempt).
    CancelExecution {
        run_id: String,
        key: String,
        mode: CancelMode,
        /// Recorded on the execution (and so on the run's error).
        reason: String,
    },
    /// Send the notification this run owes.
    Notify(String),
    /// The schedule was paused: the timer forgets it.
    Paused(String),
}

/// A ledger change reported by the executor's event stream; applied in batches. `fence`
/// is the lease epoch the dispatcher took the run with: an update whose run has since
/// been taken over (another epoch) is not applied. `None` applies unconditionally.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerUpdate {
    /// The execution started (its first event).
    Started {
        run_id: String,
        fence: Option<i64>,
        attempt: u32,
        execution_id: String,
        started_ms: i64,
        last_seq: u64,
    },
    /// The execution finished.
    Finished {
        run_id: String,
        fence: Option<i64>,
        attempt: u32,
        outcome: AttemptOutcome,
        /// Its start, when no `Started` was written for it: the dispatcher holds a start
        /// back for a moment, and the finish that follows within it carries the start
        /// (one write of the ledger instead of two).
        started: Option<AttemptStart>,
    },
}

/// The start of an attempt: the execution it became, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptStart {
    pub execution_id: String,
    pub started_ms: i64,
}

/// Where a page of runs starts: after this (nominal time, run id), newest first.
pub type RunCursor = (i64, String);

/// The scheduler's store.
#[async_trait]
pub trait SchedulerStore: Send + Sync + 'static {
    /// Inserts a new schedule; `AlreadyExists` if its id or request id is taken.
    async fn insert_schedule(&self, schedule: &Schedule) -> Result<(), StoreError>;
    /// The schedule a create with this request id made.
    async fn schedule_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Option<Schedule>, StoreError>;
    /// One schedule.
    async fn get_schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError>;
    /// Schedules by id after `after_id`, optionally in one state.
    async fn list_schedules(
        &self,
        state: Option<ScheduleState>,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Schedule>, StoreError>;
    /// Applies `change` to the schedule under its lock, bumps its version, stores it and
    /// returns it. `NotFound` if it does not exist.
    async fn modify_schedule(
        &self,
        id: &str,
        change: &ScheduleChange<'_>,
    ) -> Result<Schedule, SchedulerError>;
    /// Deletes a schedule and its ledger; with `expected_version`, only at that version.
    async fn delete_schedule(
        &self,
        id: &str,
        expected_version: Option<i64>,
    ) -> Result<(), StoreError>;
    /// (id, next fire) of every ACTIVE schedule that has a next fire: the timer's index.
    async fn due_index(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// How many `claim_due` calls may usefully run at once, over disjoint schedules.
    fn claim_parallelism(&self) -> usize {
        1
    }

    /// Claims the due fires of `ids` in one transaction: for each schedule that is
    /// ACTIVE with a next fire at or before `now_ms`, runs `plan` and writes its rows and
    /// the schedule's next fire, its PENDING runs leased under `lease` if given. Returns one
    /// `Claimed` per id asked about.
    async fn claim_due(
        &self,
        ids: &[String],
        now_ms: i64,
        lease: Option<ClaimLease<'_>>,
        plan: &DuePlanner<'_>,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Writes a manual run in one transaction with the overlap check; a request id seen
    /// before returns the run it made (and no effects).
    async fn trigger(
        &self,
        schedule_id: &str,
        request_id: Option<&str>,
        now_ms: i64,
        plan: &ManualPlanner<'_>,
    ) -> Result<(Run, Vec<Effect>), StoreError>;
    /// One run with its attempts.
    async fn get_run(&self, run_id: &str) -> Result<Option<Run>, StoreError>;
    /// A schedule's runs, newest nominal time first, with their attempts.
    async fn list_runs(
        &self,
        schedule_id: &str,
        status: Option<RunStatus>,
        before: Option<RunCursor>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError>;
    /// What the dispatcher sends for a run's current attempt; `None` if the run is gone.
    async fn dispatch_job(&self, run_id: &str) -> Result<Option<DispatchJob>, StoreError>;
    /// Ids of runs that are PENDING or RUNNING.
    async fn in_flight_runs(&self) -> Result<Vec<String>, StoreError>;
    /// Takes the owner lease of an in-flight run for `owner` until `until_ms` (DESIGN
    /// §4.5): when nobody holds it, `owner` already does, it expired before `now_ms` with
    /// its owner not alive then (see `renew_leases`), or the store serves one scheduler
    /// per database (SQLite). Returns the new lease epoch (the fence of the updates its
    /// dispatcher sends), or `None`: final, gone, or held.
    async fn take_lease(
        &self,
        run_id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// `take_lease` for each of `run_ids`, with the job of each run leased read in the
    /// same transaction: the recovery sweep admits a backlog this way, a batch at a time,
    /// rather than with a lease transaction and a read per run. On SQLite (one writer)
    /// the batch is one transaction; on PostgreSQL each run's lease is a transaction of
    /// its own (several at once), so a batch never holds many row locks that a ledger
    /// writer could be waiting on in another order. Returns each run leased with its job
    /// (its new epoch), or `None` when its row cannot be read (the caller reads it alone,
    /// which fails it); runs final, gone or held by another replica are left out.
    async fn lease_jobs(
        &self,
        run_ids: &[String],
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<(String, Option<DispatchJob>)>, StoreError>;
    /// Records `owner` as a replica alive until `until_ms`: every lease it holds on a run
    /// in flight lasts until then (a lease past its own `lease_until_ms` is adopted only
    /// once its owner is not alive). One row, however many runs `owner` drives.
    async fn renew_leases(&self, owner: &str, until_ms: i64) -> Result<(), StoreError>;
    /// How many scheduler replicas other than `owner` are alive at `now_ms` (always 0 on
    /// SQLite, which serves one scheduler).
    async fn live_peers(&self, owner: &str, now_ms: i64) -> Result<u64, StoreError>;
    /// Ends every lease `owner` holds now (a graceful stop), so another replica adopts
    /// its runs at its next sweep rather than a lease later, and forgets the replica;
    /// how many leases.
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;
    /// In-flight runs `owner` may drive (recovery dispatches them), oldest due first: its
    /// own, unowned ones written before `unowned_before_ms`, and those whose lease expired
    /// before `now_ms` with their owner not alive then (on SQLite: all of them).
    async fn drivable_runs(
        &self,
        owner: &str,
        now_ms: i64,
        unowned_before_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// The database's clock in milliseconds where replicas share one (PostgreSQL's
    /// `clock_timestamp()`); `None` for a store with one process (SQLite).
    async fn database_time_ms(&self) -> Result<Option<i64>, StoreError>;
    /// ACTIVE schedules with a next fire at or before `until_ms`: what another replica
    /// may have created or changed that this replica's timer must know of in time.
    async fn due_before(&self, until_ms: i64) -> Result<Vec<(String, i64)>, StoreError>;
    /// Ends a run whose row cannot be read FAILED with `problem` (and its open attempt),
    /// so one bad row is recorded on its run and never retried forever (DESIGN §4.6).
    async fn fail_unreadable_run(
        &self,
        run_id: &str,
        problem: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Applies ledger updates in one transaction; updates that no longer apply (the run
    /// moved on or was deleted) are ignored. A finished attempt is planned by
    /// `engine::finish` (a retry, or a final status with its failures in a row,
    /// pause_on_failure and notification), and a final run lets the oldest BUFFERED run
    /// of its schedule start.
    async fn apply_updates(
        &self,
        updates: &[LedgerUpdate],
        now_ms: i64,
    ) -> Result<Vec<Effect>, StoreError>;

    /// Cancels a run: BUFFERED or PENDING ones end CANCELLED now (the next BUFFERED one may
    /// start); a RUNNING one is marked and its execution asked to stop. `NotFound`, or
    /// `Conflict` for a run already final.
    async fn cancel_run(
        &self,
        run_id: &str,
        mode: CancelMode,
        reason: &str,
        now_ms: i64,
    ) -> Result<(Run, Vec<Effect>), StoreError>;

    /// Adds attempt n+1 to a final run and makes it PENDING now (its action as it was, or
    /// the schedule's for a run that never ran). `Conflict` for a run that is not final or
    /// stands for a range.
    async fn rerun_run(&self, run_id: &str, now_ms: i64) -> Result<(Run, Vec<Effect>), StoreError>;

    /// Writes BACKFILL rows for `fires` (nominal times, oldest first), leaving fires that
    /// already have a row untouched: `ALLOW_ALL` makes them PENDING `spacing_ms` apart from
    /// now, `BUFFER_ALL` makes the first PENDING (if nothing is in flight) and the rest
    /// BUFFERED. Returns the rows written (ids, oldest first), how many existed, effects.
    async fn backfill(
        &self,
        schedule_id: &str,
        fires: &[i64],
        buffered: bool,
        spacing_ms: i64,
        now_ms: i64,
    ) -> Result<(Vec<String>, i64, Vec<Effect>), StoreError>;

    /// Marks a schedule's BUFFERED runs SKIPPED with `reason` (a pause); how many.
    async fn skip_buffered(
        &self,
        schedule_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Deletes at most `batch` final runs of a schedule beyond the newest `keep_last`
    /// (0: none kept by count) or with a nominal time before `older_than_ms`. Never a run
    /// in flight or waiting. Returns how many were deleted.
    async fn prune_runs(
        &self,
        schedule_id: &str,
        keep_last: u32,
        older_than_ms: Option<i64>,
        batch: u32,
    ) -> Result<u64, StoreError>;

    /// Schedules with runs and a bounded retention, with it (a schedule that never
    /// fired has nothing to prune, and is not read).
    async fn retained_schedules(&self) -> Result<Vec<(String, Retention)>, StoreError>;

    /// Runs that owe a notification not sent yet.
    async fn pending_notifications(&self) -> Result<Vec<String>, StoreError>;

    /// What a run owes: its schedule, the run, and which notification (if still pending).
    async fn notification_job(
        &self,
        run_id: &str,
    ) -> Result<Option<(Schedule, Run, Notification)>, StoreError>;

    /// Records how a run's notification ended (SENT, or FAILED with the error).
    async fn notification_done(&self, run_id: &str, error: Option<&str>) -> Result<(), StoreError>;
}

/// Where the scheduler keeps its ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location<'a> {
    /// A SQLite file.
    Sqlite(&'a std::path::Path),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`).
    Postgres(&'a str),
}

impl<'a> Location<'a> {
    /// The database URL if one is given (it must name PostgreSQL), else the SQLite file.
    /// `Err` names the scheme of a URL no backend serves.
    pub fn choose(url: Option<&'a str>, path: &'a std::path::Path) -> Result<Self, String> {
        let Some(url) = url else {
            return Ok(Self::Sqlite(path));
        };
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("postgres" | "postgresql") => Ok(Self::Postgres(url)),
            Some(scheme) => Err(scheme.to_owned()),
            None => Err(String::new()),
        }
    }

    /// How the location appears in logs: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres(url) => redacted_url(url),
        }
    }

    /// Opens the store there (applying its migrations).
    pub async fn open(
        &self,
        synchronous_full: bool,
    ) -> Result<std::sync::Arc<dyn SchedulerStore>, StoreError> {
        Ok(match self {
            Self::Sqlite(path) => {
                std::sync::Arc::new(SqliteStore::open(path, synchronous_full).await?)
            }
            Self::Postgres(url) => std::sync::Arc::new(PostgresStore::connect(url).await?),
        })
    }
}
