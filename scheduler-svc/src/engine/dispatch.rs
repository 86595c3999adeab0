//! The dispatcher: sends each PENDING attempt to the executor and follows its event
//! stream until the execution finishes, writing what it learns to the ledger. An
//! unreachable executor or a broken stream is not a failure of the run: the same
//! attempt is sent again with the same key (DESIGN §4.4), re-attaching from the last seq.
//! A dispatch task drives a run only under the run's owner lease (DESIGN §4.5): it takes
//! the lease first, a heartbeat renews every lease this process holds, and the updates
//! it writes carry the lease's epoch, so a task whose run was adopted by another replica
//! writes nothing and stops.
//!
//! Memory is bounded under overload: at most `max_tasks` runs have a task here. A run
//! beyond that stays PENDING in the ledger — durable, counted by overlap policies — and
//! the dispatcher is then in *backlog*: fresh runs queue in the ledger too, and the
//! recovery sweep admits the oldest as tasks end, so the backlog drains oldest first.

mod follow;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use follow::Followed;

use super::clock::Clock;
use super::executor::ExecutorClient;
use super::ledger_writer::LedgerWriter;
use crate::model::DispatchJob;
use crate::store::{ClaimLease, FIRST_EPOCH, SchedulerStore, StoreError};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How many runs from the ledger one lease transaction takes (see `resume_all`): enough
/// that a backlog drains without a commit per run, few enough that the ledger writer,
/// which shares SQLite's one write connection, waits for one batch at most a few ms.
const LEASE_BATCH: usize = 256;

/// How much the dispatcher may do at once, and under which name it holds leases.
#[derive(Debug, Clone)]
pub struct Limits {
    /// At most this many attempts are sent (streams open) at once.
    pub max_in_flight: usize,
    /// At most this many runs have a dispatch task (sending, following, waiting to send
    /// or to retry); more wait PENDING in the ledger for the backlog sweep.
    pub max_tasks: usize,
    /// The owner name of this process's leases.
    pub owner: String,
    /// How long a lease lasts without a heartbeat.
    pub lease_ttl: Duration,
}

/// Sends attempts and follows them.
pub struct Dispatcher {
    store: Arc<dyn SchedulerStore>,
    owner: String,
    lease_ttl_ms: i64,
    clock: Arc<dyn Clock>,
    client: Arc<dyn ExecutorClient>,
    /// Runs with a dispatch task: filled before the task is spawned. A cache that
    /// avoids duplicate tasks in this process, never the judge of overlap.
    registry: Mutex<HashSet<String>>,
    max_tasks: usize,
    /// Runs wait in the ledger: fresh ones are not admitted ahead of them.
    backlog: AtomicBool,
    /// Wakes the sweep when a backlog has room to drain into.
    room: Notify,
    /// The dispatcher was full since its backlog last drained (logged once per episode).
    overloaded: AtomicBool,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    state: Mutex<Option<Running>>,
}

struct Running {
    cancel: CancellationToken,
    writer: LedgerWriter,
    writer_stop: CancellationToken,
    writer_task: tokio::task::JoinHandle<()>,
}

impl Dispatcher {
    /// A dispatcher allowing `max_in_flight` attempts at once.
    pub fn new(
        store: Arc<dyn SchedulerStore>,
        clock: Arc<dyn Clock>,
        client: Arc<dyn ExecutorClient>,
        limits: Limits,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            owner: limits.owner,
            lease_ttl_ms: i64::try_from(limits.lease_ttl.as_millis()).unwrap_or(i64::MAX / 4),
            clock,
            client,
            registry: Mutex::new(HashSet::new()),
            max_tasks: limits.max_tasks.max(1),
            backlog: AtomicBool::new(false),
            room: Notify::new(),
            overloaded: AtomicBool::new(false),
            permits: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            tracker: TaskTracker::new(),
            state: Mutex::new(None),
        })
    }

    /// Starts the ledger writer (its effects go to `effects`); dispatch tasks stop when
    /// `cancel` is cancelled.
    pub fn start(
        &self,
        cancel: CancellationToken,
        effects: tokio::sync::mpsc::UnboundedSender<Vec<crate::store::Effect>>,
    ) {
        tokio::spawn(heartbeat(
            self.store.clone(),
            self.clock.clone(),
            self.owner.clone(),
            self.lease_ttl_ms,
            cancel.clone(),
        ));
        let writer_stop = CancellationToken::new();
        let (writer, writer_task) = LedgerWriter::spawn(
            self.store.clone(),
            self.clock.clone(),
            effects,
            writer_stop.clone(),
        );
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            cancel,
            writer,
            writer_stop,
            writer_task,
        });
    }

    /// Dispatches a fresh run's current attempt, unless this process already is or the
    /// dispatcher is in backlog (the run then waits in the ledger for the sweep).
    pub fn dispatch(self: &Arc<Self>, run_id: String) {
        self.admit(run_id, None);
    }

    /// `dispatch` for a run this process's claim just wrote. Leased by the claim
    /// (`claim_lease`, epoch `FIRST_EPOCH`), it is sent as `job` says, with no transaction
    /// to take the lease and no read of the run; written unowned (epoch 0, the claim took
    /// no lease), it goes through the ledger like any other run.
    pub fn dispatch_claimed(self: &Arc<Self>, job: DispatchJob) {
        if job.lease_epoch == FIRST_EPOCH {
            self.admit(job.run_id.clone(), Some(job));
        } else {
            self.dispatch(job.run_id);
        }
    }

    /// The lease a claim made now takes, for this process, on the runs it writes — none
    /// while the dispatcher is in backlog or full: those runs wait in the ledger unowned,
    /// for whichever replica has room first.
    pub fn claim_lease(&self, now_ms: i64) -> Option<ClaimLease<'_>> {
        let full = self
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            >= self.max_tasks;
        (!full && !self.in_backlog()).then(|| ClaimLease {
            owner: &self.owner,
            until_ms: now_ms.saturating_add(self.lease_ttl_ms),
        })
    }

    /// Dispatches runs the sweep found in the ledger, oldest first, as many as there is
    /// room for; the rest stay for a later sweep. Their leases are taken and their jobs
    /// read `LEASE_BATCH` at a time (on SQLite one transaction per batch), not in a
    /// transaction and a read per run: a backlog of tens of thousands of runs drains
    /// without a commit per run. A run with a task here already is skipped. Returns how
    /// many runs were admitted, and whether the dispatcher filled up before all were.
    pub async fn resume_all(self: &Arc<Self>, run_ids: Vec<String>) -> (usize, bool) {
        let Some((cancel, writer)) = self.running() else {
            return (0, true);
        };
        // Registered before their leases are taken, as `admit` does: a claim's dispatch
        // of one of these runs meanwhile finds it driven here, and leaves it.
        let mut reserved = Vec::new();
        let mut full = false;
        {
            let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            for run_id in run_ids {
                if registry.contains(&run_id) {
                    continue;
                }
                if registry.len() >= self.max_tasks {
                    full = true;
                    break;
                }
                registry.insert(run_id.clone());
                reserved.push(run_id);
            }
        }
        let mut admitted = 0;
        for batch in reserved.chunks(LEASE_BATCH) {
            let now_ms = self.clock.now_ms();
            let leased = self
                .store
                .lease_jobs(batch, &self.owner, now_ms, now_ms + self.lease_ttl_ms)
                .await;
            let mut leased: HashMap<String, Option<DispatchJob>> = match leased {
                Ok(leased) => leased.into_iter().collect(),
                Err(e) => {
                    // Each run's own task takes its lease then, retrying as it does.
                    tracing::warn!(error = %e, runs = batch.len(),
                        "cannot take the leases of a batch of runs; taking them one by one");
                    batch.iter().map(|id| (id.clone(), None)).collect()
                }
            };
            for run_id in batch {
                match leased.remove(run_id) {
                    // A row that cannot be read is read again by the task, which fails it.
                    Some(job) => {
                        self.spawn_driver(run_id.clone(), job, cancel.clone(), writer.clone());
                        admitted += 1;
                    }
                    None => {
                        tracing::debug!(
                            run_id,
                            "run is final or another replica's; not dispatched here"
                        );
                        self.unregister(run_id);
                    }
                }
            }
        }
        (admitted, full)
    }

    /// Whether runs wait in the ledger for room, since the sweep last looked.
    pub fn in_backlog(&self) -> bool {
        self.backlog.load(Ordering::Acquire)
    }

    /// Marks the backlog drained (the sweep is about to read all that waits) and says
    /// whether there was one. A run refused meanwhile marks it again.
    pub fn take_backlog(&self) -> bool {
        self.backlog.swap(false, Ordering::AcqRel)
    }

    /// Marks that runs still wait in the ledger (the sweep could not admit them all).
    pub fn keep_backlog(&self) {
        self.backlog.store(true, Ordering::Release);
    }

    /// Marks the backlog drained for good (the sweep admitted all that waited).
    pub fn drained(&self) {
        if self.overloaded.swap(false, Ordering::AcqRel) {
            tracing::info!("dispatcher backlog drained");
        }
    }

    /// The most runs with a task here.
    pub fn max_tasks(&self) -> usize {
        self.max_tasks
    }

    /// Resolves when a backlog may drain: tasks ended, or a run was refused while few run.
    pub async fn room(&self) {
        self.room.notified().await;
    }

    /// Spawns a fresh run's task unless one is live, the dispatcher is full, or runs wait
    /// in the ledger ahead of it (the run is then left to the backlog sweep).
    fn admit(self: &Arc<Self>, run_id: String, claimed: Option<DispatchJob>) {
        let Some((cancel, writer)) = self.running() else {
            tracing::debug!(run_id = %run_id, "dispatcher not running; recovery will dispatch the run");
            return;
        };
        {
            let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            if registry.contains(&run_id) {
                return;
            }
            let full = registry.len() >= self.max_tasks;
            if full || self.in_backlog() {
                let few = registry.len() <= self.max_tasks / 2;
                drop(registry);
                self.backlog.store(true, Ordering::Release);
                if full && !self.overloaded.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        run_id = %run_id,
                        tasks = self.max_tasks,
                        "dispatcher full: runs wait PENDING in the ledger and go out oldest first"
                    );
                }
                if few {
                    self.room.notify_one();
                }
                return;
            }
            registry.insert(run_id.clone());
        }
        self.spawn_driver(run_id, claimed, cancel, writer);
    }

    /// The ledger writer and the token that stops dispatch tasks, while the dispatcher
    /// runs.
    fn running(&self) -> Option<(CancellationToken, LedgerWriter)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let running = state.as_ref()?;
        (!running.cancel.is_cancelled()).then(|| (running.cancel.clone(), running.writer.clone()))
    }

    /// Spawns the task that drives `run_id`, which the caller registered.
    fn spawn_driver(
        self: &Arc<Self>,
        run_id: String,
        claimed: Option<DispatchJob>,
        cancel: CancellationToken,
        writer: LedgerWriter,
    ) {
        let this = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = this.drive(&run_id, claimed, &writer) => {}
                () = cancel.cancelled() => {}
            }
            this.unregister(&run_id);
        });
    }

    /// Forgets a run's task, and wakes the backlog sweep when there is room for it.
    fn unregister(&self, run_id: &str) {
        let left = {
            let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            registry.remove(run_id);
            registry.len()
        };
        if left <= self.max_tasks / 2 && self.in_backlog() {
            self.room.notify_one();
        }
    }

    /// Waits until every dispatch task has stopped, then lets the ledger writer flush,
    /// both within `deadline`.
    pub async fn stopped(&self, deadline: Duration) {
        self.tracker.close();
        let _ = tokio::time::timeout(deadline, self.tracker.wait()).await;
        let running = self.state.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(running) = running {
            running.writer_stop.cancel();
            drop(running.writer);
            let _ = tokio::time::timeout(deadline, running.writer_task).await;
        }
    }

    /// Takes the run's lease: its epoch, or `None` if the run is final, gone or driven by
    /// another replica.
    async fn take_lease(&self, run_id: &str) -> Option<i64> {
        let mut backoff = MIN_BACKOFF;
        loop {
            let now_ms = self.clock.now_ms();
            match self
                .store
                .take_lease(run_id, &self.owner, now_ms, now_ms + self.lease_ttl_ms)
                .await
            {
                Ok(epoch) => return epoch,
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "cannot take the run's lease; retrying");
                    backoff = pause(backoff).await;
                }
            }
        }
    }

    /// Sends the run's current attempt until its execution finishes, the run is gone, or
    /// another replica takes it over. A run `claimed` comes leased to this process (by
    /// the claim that wrote it, or by the sweep's batch), and its first attempt is that
    /// job; any other run's lease is taken first. Every later attempt is read from the
    /// ledger.
    async fn drive(&self, run_id: &str, mut claimed: Option<DispatchJob>, writer: &LedgerWriter) {
        let epoch = match &claimed {
            Some(job) => job.lease_epoch,
            None => {
                let Some(epoch) = self.take_lease(run_id).await else {
                    tracing::debug!(
                        run_id,
                        "run is final or another replica's; not dispatched here"
                    );
                    return;
                };
                epoch
            }
        };
        let mut backoff = MIN_BACKOFF;
        let mut seen_seq = 0u64;
        let mut finished_attempt = None;
        loop {
            let read = match claimed.take() {
                Some(job) => Ok(Some(job)),
                None => self.store.dispatch_job(run_id).await,
            };
            let job = match read {
                Ok(Some(job)) if job.lease_epoch != epoch => {
                    tracing::info!(
                        run_id,
                        epoch,
                        now = job.lease_epoch,
                        "another replica took the run over; this one stops following it"
                    );
                    return;
                }
                // A finished attempt that the ledger did not close is not sent again here
                // (recovery decides); a new attempt of the run is.
                Ok(Some(job))
                    if job.status.is_in_flight() && finished_attempt != Some(job.attempt) =>
                {
                    job
                }
                Ok(_) => return,
                Err(StoreError::Corrupt(problem)) => {
                    tracing::error!(run_id, problem, "run cannot be read; failing it");
                    if let Err(e) = self
                        .store
                        .fail_unreadable_run(run_id, &problem, self.clock.now_ms())
                        .await
                    {
                        tracing::warn!(run_id, error = %e, "cannot record the unreadable run");
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(run_id, error = %e, "cannot read run to dispatch; retrying");
                    backoff = pause(backoff).await;
                    continue;
                }
            };
            while self.clock.now_ms() < job.dispatch_after_ms {
                self.clock.sleep_until(job.dispatch_after_ms).await;
            }
            let Ok(_permit) = self.permits.acquire().await else {
                return;
            };
            seen_seq = seen_seq.max(job.last_seq);
            match self.follow(&job, epoch, seen_seq, writer).await {
                // A success ends the run: nothing more to read.
                Followed::Finished {
                    committed: true,
                    succeeded: true,
                } => return,
                // The run may go on with a new attempt (a retry): this task drives it.
                Followed::Finished {
                    committed: true, ..
                } => {
                    backoff = MIN_BACKOFF;
                    seen_seq = 0;
                    finished_attempt = Some(job.attempt);
                }
                Followed::Finished {
                    committed: false, ..
                } => return,
                Followed::Broken { seq, error } => {
                    if seq > seen_seq {
                        backoff = MIN_BACKOFF;
                    }
                    seen_seq = seen_seq.max(seq);
                    tracing::warn!(run_id, attempt = job.attempt, error = %error,
                        "executor unreachable or stream broken; sending the same attempt again");
                    drop(_permit);
                    backoff = pause(backoff).await;
                }
            }
        }
    }
}

/// Renews this process's leases every third of their length until `stop`. A missed
/// renewal (the database unreachable, the process frozen) lets the leases expire, and
/// another replica adopts the runs; this one's writes are then fenced off.
async fn heartbeat(
    store: Arc<dyn SchedulerStore>,
    clock: Arc<dyn Clock>,
    owner: String,
    lease_ttl_ms: i64,
    stop: CancellationToken,
) {
    let every = Duration::from_millis((lease_ttl_ms / 3).max(100) as u64);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let until_ms = clock.now_ms() + lease_ttl_ms;
        if let Err(e) = store.renew_leases(&owner, until_ms).await {
            tracing::warn!(error = %e, "cannot renew run leases; they expire if this goes on");
        }
    }
}

async fn pause(backoff: Duration) -> Duration {
    tokio::time::sleep(backoff).await;
    (backoff * 2).min(MAX_BACKOFF)
}
