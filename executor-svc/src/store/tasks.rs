//! What the store keeps for `run_task`: queue tasks with their leases, and the process
//! groups of running commands. `TaskStore` is a part of `ExecutorStore` (a supertrait), so
//! every backend implements it; each method is one transaction, and every change of a
//! task is conditional on the state its caller saw (`TaskGuard`), so concurrent workers,
//! waiters and timers never overwrite each other.

use almanac_proto::executor::v1::Origin;
use async_trait::async_trait;
use serde_json::Value;

use crate::error::ExecutorError;

/// The state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Waiting in its queue for a worker.
    Queued,
    /// Held by a worker under a lease (which may have expired: the next poll takes it).
    Leased,
    /// A worker finished it with a result.
    Completed,
    /// A worker failed it, or it was delivered `max_deliveries` times in vain.
    Failed,
    /// The execution stopped waiting for it (terminated, or its deadline passed).
    Cancelled,
    /// A schedule-to-start or start-to-close timeout passed.
    TimedOut,
}

impl TaskStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Leased => "LEASED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::TimedOut => "TIMED_OUT",
        }
    }

    /// The value of a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "QUEUED" => Self::Queued,
            "LEASED" => Self::Leased,
            "COMPLETED" => Self::Completed,
            "FAILED" => Self::Failed,
            "CANCELLED" => Self::Cancelled,
            "TIMED_OUT" => Self::TimedOut,
            _ => return None,
        })
    }

    /// Whether nothing will ever change the task again.
    pub fn is_ended(self) -> bool {
        !matches!(self, Self::Queued | Self::Leased)
    }
}

/// A task to store (if no task has its id yet).
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Derived from the execution, the node and the try (see `engine::tasks::task_id`).
    pub id: String,
    /// The execution.
    pub execution_id: String,
    /// The node ("action" for a single action).
    pub node_id: String,
    /// The try of the action's retry policy, from 1.
    pub try_number: u32,
    /// The queue whose workers may take it.
    pub queue: String,
    /// The action's payload, a JSON object.
    pub payload: Value,
    /// The execution's key, handed to workers.
    pub idempotency_key: String,
    /// Where the work comes from.
    pub origin: Option<Origin>,
    /// The execution's deadline.
    pub deadline_ms: Option<i64>,
    /// Leases given before the task fails.
    pub max_deliveries: u32,
    /// A lease lasts this long after a poll or a heartbeat.
    pub heartbeat_timeout_ms: i64,
    /// The longest a task may wait in its queue (before a delivery and between them).
    pub schedule_to_start_ms: Option<i64>,
    /// The longest one delivery may last.
    pub start_to_close_ms: Option<i64>,
    /// Now.
    pub created_ms: i64,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// What it was created with.
    pub spec: NewTask,
    /// Its state.
    pub status: TaskStatus,
    /// Leases given so far.
    pub deliveries: u32,
    /// The current (or last) lease.
    pub lease_id: Option<String>,
    /// The worker holding (or who last held) it.
    pub worker_id: Option<String>,
    /// When the current lease ends unless a heartbeat extends it.
    pub lease_expires_ms: Option<i64>,
    /// The first delivery.
    pub started_ms: Option<i64>,
    /// The current delivery.
    pub leased_ms: Option<i64>,
    /// When the current delivery must be over (start-to-close).
    pub close_deadline_ms: Option<i64>,
    /// When it ended.
    pub ended_ms: Option<i64>,
    /// The worker's result, when COMPLETED.
    pub result: Option<Value>,
    /// Why it did not complete.
    pub error: String,
    /// Whether a new try may succeed.
    pub retryable: bool,
}

impl TaskRecord {
    /// The task's id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Whether `lease_id` is the task's current lease.
    pub fn holds(&self, lease_id: &str) -> bool {
        self.lease_id.as_deref() == Some(lease_id)
    }
}

/// How a task ends.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEnd {
    /// COMPLETED with the worker's result.
    Completed(Value),
    /// FAILED.
    Failed {
        /// Why.
        error: String,
        /// Whether a new try may succeed.
        retryable: bool,
    },
    /// TIMED_OUT (a new try may succeed).
    TimedOut(String),
    /// CANCELLED.
    Cancelled(String),
}

impl TaskEnd {
    /// The status it leaves the task in.
    pub fn status(&self) -> TaskStatus {
        match self {
            Self::Completed(_) => TaskStatus::Completed,
            Self::Failed { .. } => TaskStatus::Failed,
            Self::TimedOut(_) => TaskStatus::TimedOut,
            Self::Cancelled(_) => TaskStatus::Cancelled,
        }
    }
}

/// The state a change of a task requires, checked in the change's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskGuard {
    /// QUEUED or LEASED, under any lease.
    Open,
    /// QUEUED.
    Queued,
    /// LEASED under this lease, expired or not.
    Lease(String),
    /// LEASED under this lease, which has not expired at the change's time.
    LiveLease(String),
    /// LEASED under this lease, which has expired at the change's time.
    ExpiredLease(String),
}

/// Whether a conditional change of a task happened.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskUpdate {
    /// It did; the task as it is now.
    Applied(TaskRecord),
    /// The guard did not hold; the task as it is (`None`: no such task).
    NotApplied(Option<TaskRecord>),
}

impl TaskUpdate {
    /// The outcome of a conditional change that changed `changed` rows, given the task
    /// as it is after it.
    pub fn from_change(changed: u64, task: Option<TaskRecord>) -> Self {
        match task {
            Some(task) if changed == 1 => Self::Applied(task),
            other => Self::NotApplied(other),
        }
    }
}

/// A command's process group, recorded while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessGroupRecord {
    /// The group id (the leader's pid).
    pub pgid: i32,
    /// The leader's start time, in clock ticks after boot.
    pub start_time: u64,
    /// The kernel's boot id when it started.
    pub boot_id: String,
    /// The execution that started it.
    pub execution_id: String,
    /// Its node.
    pub node_id: String,
    /// The program.
    pub program: String,
    /// When it was recorded.
    pub recorded_ms: i64,
}

/// Tasks and process groups in the store.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores `task` as QUEUED unless a task with its id exists; returns the stored task
    /// and whether this call inserted it.
    async fn insert_task(&self, task: &NewTask) -> Result<(TaskRecord, bool), ExecutorError>;

    /// One task.
    async fn get_task(&self, id: &str) -> Result<Option<TaskRecord>, ExecutorError>;

    /// When a task of `queues` is (or will be) available to a poll: the earliest time a
    /// QUEUED task was created or a re-deliverable lease expires (`None`: nothing will be,
    /// short of a new task). Read-only: pollers call it before trying to claim.
    async fn next_available_ms(
        &self,
        queues: &[String],
        now_ms: i64,
    ) -> Result<Option<i64>, ExecutorError>;

    /// Atomically leases the oldest available task of `queues` to `worker_id` under
    /// `lease_id`: a QUEUED task within its schedule-to-start timeout, or a LEASED one
    /// whose lease expired, with deliveries left, within its schedule-to-start timeout
    /// counted from the expiry. The delivery count grows, the lease lasts the heartbeat
    /// timeout, and the start-to-close deadline starts.
    async fn claim_task(
        &self,
        queues: &[String],
        worker_id: &str,
        lease_id: &str,
        now_ms: i64,
    ) -> Result<Option<TaskRecord>, ExecutorError>;

    /// Extends a live lease by the task's heartbeat timeout from `now_ms`.
    async fn extend_lease(
        &self,
        id: &str,
        lease_id: &str,
        now_ms: i64,
    ) -> Result<TaskUpdate, ExecutorError>;

    /// Ends a task if `guard` holds at `now_ms`.
    async fn end_task(
        &self,
        id: &str,
        guard: &TaskGuard,
        end: &TaskEnd,
        now_ms: i64,
    ) -> Result<TaskUpdate, ExecutorError>;

    /// Cancels the open tasks of executions that have finished (left by a crash between
    /// the two); returns how many.
    async fn cancel_tasks_of_finished_executions(&self, now_ms: i64) -> Result<u64, ExecutorError>;

    /// Records a started process group.
    async fn record_process_group(&self, group: &ProcessGroupRecord) -> Result<(), ExecutorError>;

    /// Forgets a process group that is gone.
    async fn forget_process_group(&self, pgid: i32, start_time: u64) -> Result<(), ExecutorError>;

    /// Every recorded process group.
    async fn process_groups(&self) -> Result<Vec<ProcessGroupRecord>, ExecutorError>;
}
