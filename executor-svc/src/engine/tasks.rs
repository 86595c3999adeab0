//! The task queues of `run_task` (DESIGN §5.2). The executor side submits a task (its id
//! derived from execution, node and try, so a resumed attempt re-attaches to it) and waits
//! for its end, enforcing on its own timers what no worker will: schedule-to-start,
//! start-to-close, and `max_deliveries` once the last lease expires. The worker side
//! (`Workers`, served as WorkerService) long-polls, heartbeats, completes and fails.
//!
//! The store decides every change (each conditional on the state its caller saw); the
//! in-memory signals only say when to look again, and periodic re-reads make nothing
//! depend on them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::task_timers::{Step, next_step};
use super::{Clock, Engine};
use crate::error::ExecutorError;
use crate::model::Transition;
use crate::store::ExecutorStore;
use crate::store::tasks::{NewTask, TaskEnd, TaskGuard, TaskRecord, TaskStatus, TaskUpdate};

/// A poll waits this long when it does not say.
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(30);
/// The longest a poll waits.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// A waiting poll looks at the store at least this often.
const POLL_RECHECK: Duration = Duration::from_secs(1);
/// A waiting handler re-reads its task at least this often.
const WAIT_RECHECK: Duration = Duration::from_secs(2);
/// The longest pause between tries after a store error.
const MAX_STORE_BACKOFF: Duration = Duration::from_secs(5);

/// The id of the task of one try of one node: the same for every attempt of that try
/// (a crash-resume re-attaches), another for the next try of the retry policy.
pub fn task_id(execution_id: &str, node_id: &str, try_number: u32) -> String {
    format!("{execution_id}/{node_id}/{try_number}")
}

/// A duration for people: `1.5s`, `2m`, `250ms`.
pub fn human_ms(ms: i64) -> String {
    match ms {
        ms if ms % 60_000 == 0 && ms >= 60_000 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 && ms >= 1_000 => format!("{}s", ms / 1_000),
        ms if ms >= 1_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        ms => format!("{ms}ms"),
    }
}

/// What a heartbeat found.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The task as it is now.
    pub task: TaskRecord,
    /// When the lease now ends.
    pub lease_expires_ms: i64,
    /// The task was cancelled or timed out: the worker should stop.
    pub cancel_requested: bool,
}

/// The queues: tasks, their leases, and the signals that wake pollers and waiters.
pub struct TaskQueues {
    store: Arc<dyn ExecutorStore>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    /// Moves when a task is queued: pollers look again.
    queued: watch::Sender<u64>,
    /// Moves when a task ends: waiting handlers look again.
    ended: watch::Sender<u64>,
    /// The cancel watchers of waiting handlers.
    background: TaskTracker,
}

impl std::fmt::Debug for TaskQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskQueues").finish_non_exhaustive()
    }
}

impl TaskQueues {
    /// Queues over `store`, until `shutdown`.
    pub fn new(
        store: Arc<dyn ExecutorStore>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            shutdown,
            queued: watch::Sender::new(0),
            ended: watch::Sender::new(0),
            background: TaskTracker::new(),
        })
    }

    /// At start-up: cancels the open tasks of executions that finished while a previous
    /// process was stopping (their handler will never wait for them again).
    pub async fn recover(&self) -> Result<u64, ExecutorError> {
        let cancelled = self
            .store
            .cancel_tasks_of_finished_executions(self.clock.now_ms())
            .await?;
        if cancelled > 0 {
            tracing::info!(
                cancelled,
                "cancelled open tasks of executions that had finished"
            );
        }
        Ok(cancelled)
    }

    /// Waits (at most `grace`) for the cancel watchers, which stop at shutdown.
    pub async fn shut_down(&self, grace: Duration) -> bool {
        self.background.close();
        tokio::time::timeout(grace, self.background.wait())
            .await
            .is_ok()
    }

    /// Queues `task` unless its id exists (a resumed attempt): returns the stored task.
    pub async fn submit(&self, task: NewTask) -> Result<TaskRecord, ExecutorError> {
        let (stored, inserted) = self.store.insert_task(&task).await?;
        if inserted {
            tracing::info!(task_id = %task.id, queue = %task.queue, execution_id = %task.execution_id, "task queued");
            self.queued.send_modify(|n| *n = n.wrapping_add(1));
        } else {
            tracing::info!(task_id = %task.id, status = stored.status.as_str(), "re-attached to the task");
        }
        Ok(stored)
    }

    /// Waits for the task to end and returns it. When `cancel` fires before that (the
    /// execution was terminated or passed its deadline, and this future is dropped), the
    /// task is cancelled — unless the executor is shutting down or `handover` fired
    /// (another replica adopted the execution): then it stays as it is for the next
    /// runner to re-attach to.
    pub async fn wait(
        self: &Arc<Self>,
        task_id: &str,
        cancel: CancellationToken,
        handover: CancellationToken,
    ) -> Result<TaskRecord, ExecutorError> {
        let finished = Arc::new(AtomicBool::new(false));
        self.cancel_on(task_id.to_owned(), cancel, handover, Arc::clone(&finished));
        let ended = self.wait_for_end(task_id).await;
        finished.store(true, Ordering::SeqCst);
        ended
    }

    fn cancel_on(
        self: &Arc<Self>,
        task_id: String,
        cancel: CancellationToken,
        handover: CancellationToken,
        finished: Arc<AtomicBool>,
    ) {
        let this = Arc::clone(self);
        self.background.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = this.shutdown.cancelled() => return,
                () = handover.cancelled() => return,
            }
            if this.shutdown.is_cancelled()
                || handover.is_cancelled()
                || finished.load(Ordering::SeqCst)
            {
                return;
            }
            let end = TaskEnd::Cancelled(
                "cancelled: the execution stopped waiting for the task (terminated, or past its deadline)".into(),
            );
            let now = this.clock.now_ms();
            match this.store.end_task(&task_id, &TaskGuard::Open, &end, now).await {
                Ok(TaskUpdate::Applied(_)) => {
                    tracing::info!(task_id, "task cancelled");
                    this.signal_ended();
                }
                Ok(TaskUpdate::NotApplied(_)) => {}
                Err(error) => tracing::warn!(task_id, %error, "cannot cancel the task"),
            }
        });
    }

    fn signal_ended(&self) {
        self.ended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Loops until the task ends: each turn reads it, ends it if a timer passed, or waits
    /// for a signal, its next timer, or the re-check. Store errors are retried (this
    /// future is dropped when the execution stops).
    async fn wait_for_end(&self, task_id: &str) -> Result<TaskRecord, ExecutorError> {
        let mut ended = self.ended.subscribe();
        let mut backoff = Duration::from_millis(200);
        loop {
            ended.borrow_and_update();
            let now = self.clock.now_ms();
            let task = match self.store.get_task(task_id).await {
                Ok(Some(task)) => task,
                Ok(None) => {
                    return Err(ExecutorError::Corrupt(format!("task {task_id} vanished")));
                }
                Err(error) => {
                    tracing::warn!(task_id, %error, "cannot read the task; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            match next_step(&task, now) {
                Step::Ended => return Ok(task),
                Step::Expire(guard, end) => {
                    match self.store.end_task(task_id, &guard, &end, now).await {
                        Ok(TaskUpdate::Applied(task)) => {
                            tracing::info!(task_id, status = task.status.as_str(), error = %task.error, "task ended by its timers");
                            self.signal_ended();
                            return Ok(task);
                        }
                        // It changed since it was read: look again.
                        Ok(TaskUpdate::NotApplied(_)) => {}
                        Err(error) => {
                            tracing::warn!(task_id, %error, "cannot end the task; trying again");
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
                Step::Wait(until) => {
                    let timer = until.map_or(WAIT_RECHECK, |t| {
                        // One millisecond past the time, so that it has passed on waking.
                        Duration::from_millis((t - now + 1).max(1) as u64).min(WAIT_RECHECK)
                    });
                    tokio::select! {
                        _ = ended.changed() => {}
                        () = tokio::time::sleep(timer) => {}
                    }
                }
            }
        }
    }

    /// Leases the oldest available task of `queues` to `worker_id`, waiting up to `wait`
    /// for one; `None` when none came in time.
    pub async fn poll(
        &self,
        worker_id: &str,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<TaskRecord>, ExecutorError> {
        let until = tokio::time::Instant::now() + wait;
        let mut queued = self.queued.subscribe();
        // Bounded: every turn either returns or sleeps, and `until` ends the loop.
        loop {
            if self.shutdown.is_cancelled() {
                return Err(ExecutorError::ShuttingDown);
            }
            queued.borrow_and_update();
            let now = self.clock.now_ms();
            let next = self.store.next_available_ms(queues, now).await?;
            if next.is_some_and(|t| t <= now) {
                let lease_id = uuid::Uuid::new_v4().to_string();
                if let Some(task) = self
                    .store
                    .claim_task(queues, worker_id, &lease_id, now)
                    .await?
                {
                    tracing::info!(task_id = %task.spec.id, worker_id, delivery = task.deliveries, "task leased");
                    return Ok(Some(task));
                }
            }
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let soonest = next.map_or(POLL_RECHECK, |t| {
                Duration::from_millis((t - now).clamp(10, i64::MAX) as u64)
            });
            tokio::select! {
                _ = queued.changed() => {}
                () = tokio::time::sleep(left.min(POLL_RECHECK).min(soonest)) => {}
                () = self.shutdown.cancelled() => return Err(ExecutorError::ShuttingDown),
            }
        }
    }

    /// Extends a live lease. A cancelled or timed-out task answers `cancel_requested`
    /// to its last lease holder; anything else is refused with the reason.
    pub async fn heartbeat(
        &self,
        task_id: &str,
        lease_id: &str,
    ) -> Result<Heartbeat, ExecutorError> {
        let now = self.clock.now_ms();
        match self.store.extend_lease(task_id, lease_id, now).await? {
            TaskUpdate::Applied(task) => Ok(Heartbeat {
                lease_expires_ms: task.lease_expires_ms.unwrap_or(now),
                task,
                cancel_requested: false,
            }),
            TaskUpdate::NotApplied(Some(task))
                if task.holds(lease_id)
                    && matches!(task.status, TaskStatus::Cancelled | TaskStatus::TimedOut) =>
            {
                Ok(Heartbeat {
                    lease_expires_ms: task.lease_expires_ms.unwrap_or(now),
                    task,
                    cancel_requested: true,
                })
            }
            TaskUpdate::NotApplied(task) => Err(refusal(task, task_id, lease_id)),
        }
    }

    /// Completes a task held under a live lease. Repeating the call that completed it
    /// (same lease) is accepted, so a worker may retry after a lost answer.
    pub async fn complete(
        &self,
        task_id: &str,
        lease_id: &str,
        result: Value,
    ) -> Result<TaskRecord, ExecutorError> {
        self.finish(task_id, lease_id, TaskEnd::Completed(result))
            .await
    }

    /// Fails a task held under a live lease (same retry rule as `complete`).
    pub async fn fail(
        &self,
        task_id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
    ) -> Result<TaskRecord, ExecutorError> {
        let task = self.store.get_task(task_id).await?;
        let worker = task
            .as_ref()
            .and_then(|t| t.worker_id.clone())
            .unwrap_or_default();
        let end = TaskEnd::Failed {
            error: format!("worker {worker} failed the task: {error}"),
            retryable,
        };
        self.finish(task_id, lease_id, end).await
    }

    async fn finish(
        &self,
        task_id: &str,
        lease_id: &str,
        end: TaskEnd,
    ) -> Result<TaskRecord, ExecutorError> {
        let now = self.clock.now_ms();
        let guard = TaskGuard::LiveLease(lease_id.to_owned());
        match self.store.end_task(task_id, &guard, &end, now).await? {
            TaskUpdate::Applied(task) => {
                tracing::info!(
                    task_id,
                    status = task.status.as_str(),
                    worker_id = task.worker_id.as_deref().unwrap_or(""),
                    "task ended by its worker"
                );
                self.signal_ended();
                Ok(task)
            }
            TaskUpdate::NotApplied(Some(task))
                if task.holds(lease_id) && task.status == end.status() =>
            {
                Ok(task)
            }
            TaskUpdate::NotApplied(task) => Err(refusal(task, task_id, lease_id)),
        }
    }
}

/// Why a worker's call about a task under `lease_id` is refused.
fn refusal(task: Option<TaskRecord>, task_id: &str, lease_id: &str) -> ExecutorError {
    let Some(task) = task else {
        return ExecutorError::NotFound(format!("task {task_id}"));
    };
    if !task.holds(lease_id) {
        return ExecutorError::TaskPrecondition(if task.lease_id.is_some() {
            "lease expired: the task was re-leased".to_owned()
        } else {
            "no such lease: the task has not been delivered".to_owned()
        });
    }
    let error = &task.error;
    ExecutorError::TaskPrecondition(match task.status {
        TaskStatus::Leased | TaskStatus::Queued => format!(
            "lease expired: no heartbeat came within {}",
            human_ms(task.spec.heartbeat_timeout_ms)
        ),
        TaskStatus::Completed => "the task has already been completed".to_owned(),
        TaskStatus::Failed => format!("the task has already failed: {error}"),
        TaskStatus::Cancelled => format!("the task was cancelled: {error}"),
        TaskStatus::TimedOut => format!("the task timed out: {error}"),
    })
}

/// The worker side as WorkerService serves it: the queues, plus the engine for the
/// Progress events heartbeats report.
#[derive(Debug, Clone)]
pub struct Workers {
    engine: Arc<Engine>,
    queues: Arc<TaskQueues>,
}

impl Workers {
    /// Workers of `queues`, reporting progress through `engine`.
    pub fn new(engine: Arc<Engine>, queues: Arc<TaskQueues>) -> Self {
        Self { engine, queues }
    }

    /// See [`TaskQueues::poll`].
    pub async fn poll(
        &self,
        worker_id: &str,
        queues: &[String],
        wait: Duration,
    ) -> Result<Option<TaskRecord>, ExecutorError> {
        self.queues.poll(worker_id, queues, wait).await
    }

    /// Extends the lease and, with `progress` (percent, message), appends a Progress
    /// event with the task's node to its execution.
    pub async fn heartbeat(
        &self,
        task_id: &str,
        lease_id: &str,
        progress: Option<(f64, String)>,
    ) -> Result<Heartbeat, ExecutorError> {
        let beat = self.queues.heartbeat(task_id, lease_id).await?;
        if let Some((percent, message)) = progress
            && !beat.cancel_requested
        {
            let spec = &beat.task.spec;
            let progress = Transition::Progress {
                node_id: spec.node_id.clone(),
                percent,
                message,
            };
            match self.engine.append(&spec.execution_id, progress).await {
                // The execution ended meanwhile: the progress no longer matters.
                Ok(_) | Err(ExecutorError::AlreadyFinished(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(beat)
    }

    /// See [`TaskQueues::complete`].
    pub async fn complete(
        &self,
        task_id: &str,
        lease_id: &str,
        result: Value,
    ) -> Result<(), ExecutorError> {
        self.queues
            .complete(task_id, lease_id, result)
            .await
            .map(drop)
    }

    /// See [`TaskQueues::fail`].
    pub async fn fail(
        &self,
        task_id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
    ) -> Result<(), ExecutorError> {
        self.queues
            .fail(task_id, lease_id, error, retryable)
            .await
            .map(drop)
    }
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
