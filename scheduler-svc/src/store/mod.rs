//! The scheduler's storage: one trait, one module per backend (DESIGN §8). Every write
//! that decides something — a claim, a trigger, a schedule change — runs inside one
//! transaction under the schedule's lock, with the decision made by a pure function the
//! engine passes in, so the database constraint and the decision see the same rows.

mod sqlite;

pub use sqlite::SqliteStore;

use async_trait::async_trait;

use crate::engine::policy::{FirePlan, NewRun};
use crate::error::SchedulerError;
use crate::model::{AttemptOutcome, DispatchJob, Run, RunStatus, Schedule, ScheduleState};

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
    /// The database cannot be reached or is busy past its timeout.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// A stored value cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

/// The planner a claim runs for each due schedule: the schedule as stored, and a run
/// of it that is in flight. `Err` records the problem on the schedule and pauses it.
pub type DuePlanner<'a> =
    dyn Fn(&Schedule, Option<String>) -> Result<FirePlan, String> + Send + Sync + 'a;

/// The planner of a manual run.
pub type ManualPlanner<'a> = dyn Fn(&Schedule, Option<String>) -> NewRun + Send + Sync + 'a;

/// A change to a stored schedule, applied to the row as read under its lock.
pub type ScheduleChange<'a> =
    dyn Fn(&mut Schedule) -> Result<(), SchedulerError> + Send + Sync + 'a;

/// What a claim did to one schedule it was asked about.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub schedule_id: String,
    /// The schedule's next fire if it is ACTIVE, else `None` (drop it from the index).
    pub next_fire_ms: Option<i64>,
    /// Runs written PENDING, to dispatch.
    pub dispatch: Vec<String>,
}

/// A ledger change reported by the executor's event stream; applied in batches.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerUpdate {
    /// The execution started (its first event).
    Started {
        run_id: String,
        attempt: u32,
        execution_id: String,
        started_ms: i64,
        last_seq: u64,
    },
    /// The execution finished.
    Finished {
        run_id: String,
        attempt: u32,
        outcome: AttemptOutcome,
    },
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
    /// Claims the due fires of `ids` in one transaction: for each schedule that is
    /// ACTIVE with a next fire at or before `now_ms`, runs `plan` and writes its rows and
    /// the schedule's next fire. Returns one `Claimed` per id asked about.
    async fn claim_due(
        &self,
        ids: &[String],
        now_ms: i64,
        plan: &DuePlanner<'_>,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Writes a manual run in one transaction with the overlap check; a request id seen
    /// before returns the run it made. Returns the run and whether it must be dispatched.
    async fn trigger(
        &self,
        schedule_id: &str,
        request_id: Option<&str>,
        plan: &ManualPlanner<'_>,
    ) -> Result<(Run, bool), StoreError>;
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
    /// Ids of runs that are PENDING or RUNNING (recovery re-dispatches them).
    async fn in_flight_runs(&self) -> Result<Vec<String>, StoreError>;
    /// Applies ledger updates in one transaction; updates that no longer apply (the run
    /// moved on or was deleted) are ignored.
    async fn apply_updates(&self, updates: &[LedgerUpdate]) -> Result<(), StoreError>;
}
