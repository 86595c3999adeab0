//! Execution leases, for several executors on one database (DESIGN §8): the replica
//! running an execution owns it under a lease its heartbeat renews; an unfinished
//! execution whose lease expired is adopted (its epoch bumped) by whoever claims it first.
//! The runner's own writes are fenced by `ExecutorStore::append_as`; this trait holds the
//! rest: renewing, adopting, releasing, and reading the cancellations other replicas
//! recorded. Every statement here is one transaction.

use async_trait::async_trait;

use crate::error::ExecutorError;
use crate::model::{CancelMode, ExecutionRecord};

/// A runner's claim on an execution: the replica that holds it and the epoch it got.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The replica id.
    pub owner: String,
    /// The execution's `lease_epoch` when the lease was taken.
    pub epoch: u64,
}

impl Lease {
    /// Whether `record` is still held under this lease (same owner, same epoch).
    pub fn holds(&self, record: &ExecutionRecord) -> bool {
        record.owner.as_deref() == Some(self.owner.as_str()) && record.lease_epoch == self.epoch
    }
}

/// Which unfinished executions an adoption may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptScope {
    /// Those whose lease expired (or was never taken, or was released).
    Expired,
    /// Those, and those whose owner is the adopting replica (a restarted process with a
    /// stable replica id takes its executions back at once).
    ExpiredOrMine,
    /// Every one: a SQLite executor is the only process on its database.
    All,
}

/// A claim of unfinished executions by `owner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// The adopting replica.
    pub owner: String,
    /// Now, by the executor's clock: leases ending at or before it have expired.
    pub now_ms: i64,
    /// When the adopted leases end unless renewed.
    pub lease_until_ms: i64,
    /// Which executions qualify.
    pub scope: AdoptScope,
    /// Only this execution (an `Execute` or `Watch` adopting on the spot), if set.
    pub only: Option<String>,
    /// Only executions whose id sorts after this one (the previous batch's last), if set.
    pub after_id: Option<String>,
    /// At most this many, oldest first.
    pub limit: u32,
}

/// A lease that a heartbeat renewed, with the cancellation recorded on its execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The execution.
    pub execution_id: String,
    /// The cancellation asked for (maybe through another replica), if any.
    pub cancel_requested: Option<CancelMode>,
}

/// Leases of executions (see the module documentation).
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Moves the end of the given leases (execution id and epoch) held by `owner` to
    /// `until_ms`, in one statement, and returns those renewed: a lease missing from the
    /// answer was lost (the execution was adopted by someone else since).
    async fn renew_leases(
        &self,
        owner: &str,
        leases: &[(String, u64)],
        until_ms: i64,
    ) -> Result<Vec<Renewed>, ExecutorError>;

    /// Claims unfinished executions as `adoption` says (on PostgreSQL with `FOR UPDATE SKIP
    /// LOCKED`, so replicas sweeping at once take different ones): each gets the adopter
    /// as owner, its epoch plus one and a new lease. Returns them as they are now.
    async fn adopt(&self, adoption: &Adoption) -> Result<Vec<ExecutionRecord>, ExecutorError>;

    /// Gives the given leases (id and epoch) of `owner` up: they expire now, so another
    /// replica adopts their executions at once (a graceful stop hands over this way).
    async fn release_leases(
        &self,
        owner: &str,
        leases: &[(String, u64)],
    ) -> Result<(), ExecutorError>;

    /// Among `ids`, the unfinished executions with a cancellation recorded, and its mode.
    async fn cancel_requests(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, CancelMode)>, ExecutorError>;

    /// The database's own time (`clock_timestamp()`, in ms) on a backend shared by
    /// several processes, which then agree on one clock; `None` for SQLite.
    async fn database_now_ms(&self) -> Result<Option<i64>, ExecutorError>;
}
