//! The executor's storage: one object-safe trait (`ExecutorStore`, used as
//! `Arc<dyn ExecutorStore>`), one module per backend (SQLite, PostgreSQL) sharing the row
//! codecs of `rows`, and `select`, which picks the backend a configuration names. Each
//! method is one use case and one transaction, so backends agree on what is atomic; the
//! engine never sees SQL.

pub mod leases;
pub mod pipelines;
pub mod postgres;
mod rows;
mod select;
pub mod sqlite;
pub mod tasks;

#[cfg(test)]
mod conformance;

use async_trait::async_trait;

use crate::error::ExecutorError;
use crate::model::{
    CancelMode, Event, ExecutionRecord, ListQuery, NewExecution, NodeRunRecord, Transition,
};

pub use leases::{AdoptScope, Adoption, Lease, LeaseStore, Renewed};
pub use pipelines::PipelineStore;
pub use postgres::PostgresStore;
pub use select::{Backend, redact_url};
pub use sqlite::SqliteStore;
pub use tasks::TaskStore;

/// Where executions, their node runs and their events live (and, through `TaskStore`,
/// the tasks and process groups of `run_task`; through `LeaseStore`, who runs what).
#[async_trait]
pub trait ExecutorStore: TaskStore + PipelineStore + LeaseStore + Send + Sync + 'static {
    /// Stores a new execution (RUNNING) and its first event, `ExecutionStarted` with seq 1,
    /// in one transaction; its creator (`new.owner`) holds its lease, epoch 1. A taken idempotency key is `ExecutorError::AlreadyExists`: the
    /// unique constraint decides races, and the caller then loads the existing execution.
    async fn create_execution(&self, new: &NewExecution) -> Result<ExecutionRecord, ExecutorError>;

    /// One execution by id.
    async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, ExecutorError>;

    /// One execution by its idempotency key.
    async fn find_by_key(&self, key: &str) -> Result<Option<ExecutionRecord>, ExecutorError>;

    /// Executions matching `query`, newest (greatest id) first, at most `query.limit`.
    async fn list_executions(
        &self,
        query: &ListQuery,
    ) -> Result<Vec<ExecutionRecord>, ExecutorError>;

    /// Every execution not finished (PENDING or RUNNING), oldest first. (A start-up
    /// resumes them through `LeaseStore::adopt`, which also takes their leases.)
    async fn list_unfinished(&self) -> Result<Vec<ExecutionRecord>, ExecutorError>;

    /// The node table of an execution: one row per node attempt, by node then attempt.
    async fn node_runs(&self, execution_id: &str) -> Result<Vec<NodeRunRecord>, ExecutorError>;

    /// Events with `seq > after_seq`, in order, at most `limit`.
    async fn events_after(
        &self,
        execution_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Event>, ExecutorError>;

    /// Appends the events of `transitions` (each with its time) with the next seqs, in
    /// order, and applies the row updates they imply, in one transaction: all or nothing.
    /// With `lease`, it applies only while the execution is still held under it (same
    /// owner, same epoch); otherwise nothing is written and the answer is
    /// `ExecutorError::LeaseLost`. An unknown execution is `NotFound`; a finished one is
    /// `AlreadyFinished` (nothing is ever appended after `ExecutionFinished`).
    async fn append_all(
        &self,
        execution_id: &str,
        lease: Option<&Lease>,
        transitions: Vec<(i64, Transition)>,
    ) -> Result<Vec<Event>, ExecutorError>;

    /// One transition, unfenced: for writers that do not run the execution (a worker's
    /// progress report) and for tests.
    async fn append(
        &self,
        execution_id: &str,
        at_ms: i64,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        let events = self
            .append_all(execution_id, None, vec![(at_ms, transition)])
            .await?;
        only(events)
    }

    /// One transition, fenced by `lease`: every write of a runner goes through here (or
    /// `append_all_as`).
    async fn append_as(
        &self,
        execution_id: &str,
        lease: &Lease,
        at_ms: i64,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        let events = self
            .append_all(execution_id, Some(lease), vec![(at_ms, transition)])
            .await?;
        only(events)
    }

    /// Several transitions, fenced by `lease`, all or nothing: a runner commits a
    /// single-node execution's node result together with its end this way.
    async fn append_all_as(
        &self,
        execution_id: &str,
        lease: &Lease,
        transitions: Vec<(i64, Transition)>,
    ) -> Result<Vec<Event>, ExecutorError> {
        self.append_all(execution_id, Some(lease), transitions)
            .await
    }

    /// Records a cancellation request durably (the stronger mode wins; the first reason is
    /// kept) and returns the execution as it is now. A finished execution is returned
    /// unchanged.
    async fn request_cancel(
        &self,
        execution_id: &str,
        mode: CancelMode,
        reason: &str,
    ) -> Result<ExecutionRecord, ExecutorError>;

    /// Deletes at most `batch` finished executions that finished before `before_ms`, with
    /// their events, node runs and tasks; returns how many. An execution not finished is
    /// never touched.
    async fn prune_finished(&self, before_ms: i64, batch: u32) -> Result<u64, ExecutorError>;

    /// Closes the store, waiting for writes in progress; later calls fail with
    /// `StoreUnavailable`.
    async fn close(&self);
}

/// The one event of a one-transition append.
fn only(mut events: Vec<Event>) -> Result<Event, ExecutorError> {
    match (events.pop(), events.is_empty()) {
        (Some(event), true) => Ok(event),
        _ => Err(ExecutorError::Corrupt(
            "a one-transition append returned another number of events".into(),
        )),
    }
}
