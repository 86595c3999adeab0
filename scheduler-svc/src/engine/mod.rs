//! The scheduler's engine: API use cases, the timer that claims due fires, the dispatcher
//! that sends attempts to the executor and follows their events, and recovery. Plain
//! Rust over the store trait and an executor client trait; no tonic, no SQL.

pub mod clock;
pub mod dispatch;
pub mod effects;
pub mod executor;
pub mod finish;
pub mod ledger_writer;
pub mod notify;
pub mod overlap;
pub mod policy;
pub mod recovery;
pub mod retention;
pub mod runs;
pub mod schedules;
pub mod spec_cache;
pub mod timer;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use self::clock::Clock;
use self::dispatch::Dispatcher;
use self::effects::Effects;
use self::executor::ExecutorClient;
use self::notify::Notifier;
use self::spec_cache::SpecCache;
use self::timer::Timer;
use crate::store::SchedulerStore;

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// At most this many due schedules are claimed in one transaction.
    pub claim_batch: usize,
    /// At most this many attempts are dispatched (streams open) at once.
    pub max_in_flight_dispatches: usize,
    /// At most this many runs are held by dispatch tasks in memory; beyond it runs wait
    /// PENDING in the ledger and are dispatched oldest first as tasks end (back-pressure:
    /// an overloaded scheduler falls behind, durably, instead of growing without bound).
    pub max_dispatch_tasks: usize,
    /// How often retention prunes the ledger.
    pub retention_every: std::time::Duration,
    /// This process's name as the owner of the runs it drives (DESIGN §4.5). Unique among
    /// live replicas; a restarted replica that keeps its name resumes its runs at once.
    pub replica_id: String,
    /// How long a run's owner lease lasts without a heartbeat (renewed every third of it);
    /// after that another replica may adopt the run.
    pub lease_ttl: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            claim_batch: 1_000,
            max_in_flight_dispatches: 4_096,
            max_dispatch_tasks: 16_384,
            retention_every: std::time::Duration::from_secs(60),
            replica_id: uuid::Uuid::now_v7().to_string(),
            lease_ttl: std::time::Duration::from_secs(15),
        }
    }
}

/// The scheduler: everything the API and the background loops share.
pub struct Engine {
    pub(crate) store: Arc<dyn SchedulerStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) timer: Arc<Timer>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) specs: Arc<SpecCache>,
    pub(crate) executor: Arc<dyn ExecutorClient>,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) effects: Arc<Effects>,
    pub(crate) config: EngineConfig,
}

impl Engine {
    /// Builds the engine; nothing runs until [`Engine::start`].
    pub fn new(
        store: Arc<dyn SchedulerStore>,
        clock: Arc<dyn Clock>,
        executor: Arc<dyn ExecutorClient>,
        config: EngineConfig,
    ) -> Arc<Self> {
        let specs = Arc::new(SpecCache::default());
        let dispatcher = Dispatcher::new(
            store.clone(),
            clock.clone(),
            executor.clone(),
            dispatch::Limits {
                max_in_flight: config.max_in_flight_dispatches,
                max_tasks: config.max_dispatch_tasks,
                owner: config.replica_id.clone(),
                lease_ttl: config.lease_ttl,
            },
        );
        let timer = Timer::new(config.claim_batch);
        let notifier = Notifier::new(store.clone(), executor.clone());
        let effects = Effects::new(
            dispatcher.clone(),
            timer.clone(),
            executor.clone(),
            notifier.clone(),
        );
        Arc::new(Self {
            store,
            clock,
            timer,
            dispatcher,
            specs,
            executor,
            notifier,
            effects,
            config,
        })
    }

    /// Recovers (DESIGN §4.6) and starts the timer and the dispatcher's background work.
    /// Returns once the timer's index is loaded; recovery of in-flight runs goes on in
    /// the background while the API serves.
    pub async fn start(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), crate::store::StoreError> {
        let boot_ms = self.clock.now_ms();
        let me = self.config.replica_id.as_str();
        let peers_alive = self.store.live_peers(me, boot_ms).await? > 0;
        let lease_ms = i64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(i64::MAX / 4);
        // Alive from now on, for replicas starting after this one.
        self.store.renew_leases(me, boot_ms + lease_ms).await?;
        if peers_alive {
            tracing::info!(
                "other scheduler replicas are alive: fires due now are theirs, late, not missed"
            );
        }
        self.timer.load(self.store.as_ref()).await?;
        let (effects_tx, effects_rx) = tokio::sync::mpsc::unbounded_channel();
        self.effects.spawn_loop(effects_rx, shutdown.clone());
        self.dispatcher.start(shutdown.clone(), effects_tx);
        recovery::spawn(self.clone(), shutdown.clone());
        retention::spawn(self.clone(), shutdown.clone());
        self.timer.clone().spawn(
            self.store.clone(),
            self.clock.clone(),
            self.effects.clone(),
            self.specs.clone(),
            timer::Missed {
                boot_ms,
                peers_alive,
            },
            shutdown,
        );
        Ok(())
    }

    /// Waits for in-flight dispatches to stop and the ledger writes to land, up to
    /// `deadline`. Call after cancelling the token given to `start`.
    pub async fn stopped(&self, deadline: std::time::Duration) {
        let _ = tokio::time::timeout(deadline, self.timer.stopped()).await;
        self.dispatcher.stopped(deadline).await;
        // The runs this process followed are another replica's to adopt at once.
        let released =
            tokio::time::timeout(deadline, self.store.release_leases(&self.config.replica_id))
                .await;
        match released {
            Ok(Ok(n)) if n > 0 => tracing::info!(runs = n, "released the leases of runs in flight"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot release run leases; they expire"),
            Err(_) => tracing::warn!("releasing run leases timed out; they expire"),
        }
    }
}
