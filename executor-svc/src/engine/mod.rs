//! The executor's engine: plain Rust use cases over the store (no tonic, no SQL).
//! `executions` starts, attaches, cancels and resumes; `events` appends and fans out;
//! `runner` runs an execution's graph and `node` one node of it to its end; `plan` says
//! what that graph is; `pipelines` stores definitions; `tasks` holds the queues of
//! `run_task` and the worker use cases; `leases` keeps the leases of the executions this
//! process runs (heartbeat, adoption, cancellations recorded through other replicas).

mod book;
pub mod clock;
mod events;
mod executions;
mod leases;
mod node;
mod pipelines;
pub mod plan;
mod retention;
mod runner;
mod task_timers;
pub mod tasks;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions::ActionRegistry;
use crate::error::ExecutorError;
use crate::model::Event;
use crate::store::{ExecutorStore, Lease};

pub use clock::{Clock, DatabaseClock, SystemClock};
pub use executions::{ExecutionLookup, Page, StartRequest, fingerprint};

/// A stream of an execution's events, in seq order, ending after `ExecutionFinished`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ExecutorError>> + Send>>;

/// Runs executions and answers questions about them. One per process, shared as `Arc`.
pub struct Engine {
    store: Arc<dyn ExecutorStore>,
    clock: Arc<dyn Clock>,
    registry: ActionRegistry,
    /// Bounds how many executions run their actions at once.
    permits: Arc<Semaphore>,
    /// The executions this process is running, by id.
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// Executions this process is storing and has not started yet: not orphans, though
    /// no runner has them (an attach in that moment must not adopt them).
    creating: Mutex<std::collections::HashSet<String>>,
    /// Owns every runner task; shutdown waits for it with a deadline.
    tasks: TaskTracker,
    /// Fires when the process is shutting down: no new work, streams end, runners stop.
    shutdown: CancellationToken,
    /// Who this process is among the executors of its database, and its leases' length.
    leasing: Leasing,
}

/// How an engine holds the executions it runs (see `store::leases`).
#[derive(Debug, Clone)]
pub struct Leasing {
    /// This process's replica id: the owner of its leases.
    pub replica_id: String,
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// Whether other processes may use the database (PostgreSQL): then this one adopts
    /// only expired executions (and its own) and sweeps for orphans; on SQLite it takes
    /// every unfinished execution at start-up.
    pub shared_database: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("registry", &self.registry)
            .field("available_permits", &self.permits.available_permits())
            .field("shutting_down", &self.shutdown.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// The in-memory side of a running execution: the lease its writes are fenced by, the
/// latest committed seq (a signal for watchers, who always read the events themselves
/// from the store) and its cancel switches.
#[derive(Debug)]
pub(crate) struct Live {
    lease: Lease,
    seq: watch::Sender<u64>,
    /// The last events committed here, in seq order: what local watchers read instead
    /// of the store while they keep up (`events::Watcher`, which keeps it past the
    /// runner's end: it ends with the final event when the execution finished here).
    recent: Arc<Mutex<std::collections::VecDeque<crate::model::Event>>>,
    /// Transitions (with their times) held back to be committed with this runner's next
    /// write, in the same transaction (`Engine::stage`).
    staged: Mutex<Vec<(i64, crate::model::Transition)>>,
    /// Graceful or terminate: start nothing new.
    stop_new: CancellationToken,
    /// Terminate: abort the work in flight.
    abort: CancellationToken,
    /// The lease was lost (another replica adopted the execution): stop at once, write
    /// nothing more, leave shared work (queued tasks) to the adopter.
    lost: CancellationToken,
    /// The runner task has ended.
    ended: CancellationToken,
}

impl Live {
    fn new(lease: Lease) -> Self {
        Self {
            lease,
            seq: watch::Sender::new(0),
            recent: Arc::default(),
            staged: Mutex::default(),
            stop_new: CancellationToken::new(),
            abort: CancellationToken::new(),
            lost: CancellationToken::new(),
            ended: CancellationToken::new(),
        }
    }
}

impl Engine {
    /// An engine over `store`, running actions from `registry`, at most
    /// `max_concurrent_executions` at once, holding its executions as `leasing` says,
    /// until `shutdown` fires.
    pub fn new(
        store: Arc<dyn ExecutorStore>,
        registry: ActionRegistry,
        clock: Arc<dyn Clock>,
        max_concurrent_executions: usize,
        leasing: Leasing,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            clock,
            registry,
            permits: Arc::new(Semaphore::new(max_concurrent_executions.max(1))),
            live: Mutex::new(HashMap::new()),
            creating: Mutex::new(std::collections::HashSet::new()),
            tasks: TaskTracker::new(),
            shutdown,
            leasing,
        })
    }

    /// Stops taking new work and waits (at most `grace`) for the runners to stop; a runner
    /// stops at its next wait, after the event write in progress, and gives up its
    /// execution's lease, so another replica (or the next start) adopts it at once.
    /// Returns whether all did.
    pub async fn shut_down(&self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// The (execution id, epoch) of every lease this process holds.
    fn held_leases(&self) -> Vec<(String, u64)> {
        self.live_map()
            .iter()
            .map(|(id, live)| (id.clone(), live.lease.epoch))
            .collect()
    }

    fn live(&self, id: &str) -> Option<Arc<Live>> {
        self.live_map().get(id).cloned()
    }

    /// Whether this process is storing the execution `id` and has not started it yet.
    fn is_creating(&self, id: &str) -> bool {
        self.creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(id)
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // inserts and removes), so a poisoned lock is still usable.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
