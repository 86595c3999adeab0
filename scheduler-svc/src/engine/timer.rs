//! The timer (DESIGN §4.5): an in-memory index of ACTIVE schedules by next fire time,
//! loaded from the store (which stays the truth). It sleeps until the earliest fire or
//! until an API change wakes it, then claims every due schedule in one batched
//! transaction and hands the new runs to the dispatcher.
//!
//! With replicas (a store with concurrent writers: PostgreSQL), every replica's timer
//! tries the same due schedules; `FOR UPDATE SKIP LOCKED` gives each schedule to one of
//! them, and the others look again a moment later and find its next fire moved on. A
//! replica also polls the store for schedules due soon, so one created, resumed or
//! changed through another replica fires even if that replica dies.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::effects::Effects;
use super::policy::{DueContext, plan_due};
use super::spec_cache::SpecCache;
use crate::store::{SchedulerStore, StoreError};

/// Which due fires count as missed (DESIGN §4.4's catch-up applies to them).
#[derive(Debug, Clone, Copy)]
pub struct Missed {
    /// When this process started.
    pub boot_ms: i64,
    /// Whether other scheduler replicas were alive when it started.
    pub peers_alive: bool,
}

impl Missed {
    /// Fires due before this were missed: those due before this process started — unless
    /// other replicas were alive then. They were firing, so a fire this replica finds due
    /// at its start is one of theirs running late, not a fire the scheduler missed (a
    /// restarted replica must not apply the catch-up policy to its peers' late fires: a
    /// misfire-SKIP schedule would lose them). Fires older than the catch-up window are
    /// missed either way (`policy.rs`).
    pub fn before(&self, _now_ms: i64) -> i64 {
        if self.peers_alive {
            i64::MIN
        } else {
            self.boot_ms
        }
    }
}

/// How often a replica polls the store for schedules due soon.
const DUE_POLL_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Index {
    by_time: BTreeSet<(i64, String)>,
    by_id: HashMap<String, i64>,
}

impl Index {
    fn set(&mut self, id: &str, next: Option<i64>) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_time.remove(&(old, id.to_string()));
        }
        if let Some(next) = next {
            self.by_id.insert(id.to_string(), next);
            self.by_time.insert((next, id.to_string()));
        }
    }
}

/// The timer and its index.
pub struct Timer {
    index: Mutex<Index>,
    wake: Notify,
    claim_batch: usize,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Timer {
    /// A timer claiming at most `claim_batch` schedules per transaction.
    pub fn new(claim_batch: usize) -> Arc<Self> {
        Arc::new(Self {
            index: Mutex::new(Index::default()),
            wake: Notify::new(),
            claim_batch: claim_batch.max(1),
            task: Mutex::new(None),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the index from the store.
    pub async fn load(&self, store: &dyn SchedulerStore) -> Result<(), StoreError> {
        let entries = store.due_index().await?;
        let mut index = self.index();
        for (id, next) in entries {
            index.set(&id, Some(next));
        }
        Ok(())
    }

    /// Records a schedule's next fire (`None`: not firing) and wakes the loop.
    pub fn upsert(&self, id: &str, next_fire_ms: Option<i64>) {
        self.index().set(id, next_fire_ms);
        self.wake.notify_one();
    }

    /// How many schedules the index holds.
    pub fn len(&self) -> usize {
        self.index().by_id.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts the loop; it stops when `shutdown` is cancelled.
    pub fn spawn(
        self: Arc<Self>,
        store: Arc<dyn SchedulerStore>,
        clock: Arc<dyn Clock>,
        effects: Arc<Effects>,
        specs: Arc<SpecCache>,
        missed: Missed,
        shutdown: CancellationToken,
    ) {
        if store.claim_parallelism() > 1 {
            let this = self.clone();
            let (store, clock, shutdown) = (store.clone(), clock.clone(), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = this.poll_due_soon(store, clock) => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        let this = self.clone();
        let handle = tokio::spawn(async move {
            tokio::select! {
                () = this.run(store, clock, effects, specs, missed) => {}
                () = shutdown.cancelled() => {}
            }
        });
        *self.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    /// Resolves when the loop has stopped.
    pub async fn stopped(&self) {
        let handle = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Every `DUE_POLL_EVERY`, learns the schedules due within the next two polls from the
    /// store: those written through another replica, which did not wake this one.
    async fn poll_due_soon(&self, store: Arc<dyn SchedulerStore>, clock: Arc<dyn Clock>) {
        loop {
            tokio::time::sleep(DUE_POLL_EVERY).await;
            let horizon = clock.now_ms() + 2 * DUE_POLL_EVERY.as_millis() as i64;
            match store.due_before(horizon).await {
                Ok(due) => {
                    let mut learned = 0usize;
                    {
                        let mut index = self.index();
                        for (id, next) in due {
                            if index.by_id.get(&id).is_none_or(|known| *known > next) {
                                index.set(&id, Some(next));
                                learned += 1;
                            }
                        }
                    }
                    if learned > 0 {
                        tracing::debug!(
                            schedules = learned,
                            "learned due schedules from the store"
                        );
                        self.wake.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot poll the store for due schedules"),
            }
        }
    }

    /// Records claimed schedules' next fires and starts what the claims ask for.
    fn apply_claims(&self, claimed: Vec<crate::store::Claimed>, effects: &Effects) {
        {
            let mut index = self.index();
            for c in &claimed {
                index.set(&c.schedule_id, c.next_fire_ms);
            }
        }
        let mut fired = 0usize;
        for c in claimed {
            fired += c.dispatch.len();
            effects.dispatch_claimed(c.dispatch);
            effects.apply(c.effects);
        }
        tracing::debug!(dispatched = fired, "claimed due fires");
    }

    async fn run(
        &self,
        store: Arc<dyn SchedulerStore>,
        clock: Arc<dyn Clock>,
        effects: Arc<Effects>,
        specs: Arc<SpecCache>,
        missed: Missed,
    ) {
        loop {
            let now_ms = clock.now_ms();
            let (due, earliest) = {
                let index = self.index();
                let due: Vec<String> = index
                    .by_time
                    .iter()
                    .take_while(|(t, _)| *t <= now_ms)
                    .take(self.claim_batch)
                    .map(|(_, id)| id.clone())
                    .collect();
                (due, index.by_time.first().map(|(t, _)| *t))
            };
            if due.is_empty() {
                let wake = self.wake.notified();
                match earliest {
                    Some(t) => {
                        tokio::select! {
                            () = clock.sleep_until(t) => {}
                            () = wake => {}
                        }
                    }
                    None => wake.await,
                }
                continue;
            }
            let missed_before = missed.before(now_ms);
            let planner = |schedule: &crate::model::Schedule,
                           in_flight: &super::overlap::InFlight| {
                let spec = specs
                    .get(schedule)
                    .map_err(|e| format!("stored spec is invalid: {e}"))?;
                Ok(plan_due(&DueContext {
                    schedule,
                    spec: &spec,
                    now_ms,
                    boot_ms: missed_before,
                    in_flight: in_flight.clone(),
                }))
            };
            // Disjoint chunks claimed concurrently where the store allows it (PostgreSQL);
            // each chunk in id order, the order every ledger transaction locks schedules
            // in, so two transactions never wait on each other in a cycle.
            let mut due = due;
            due.sort_unstable();
            let chunk = due.len().div_ceil(store.claim_parallelism().max(1));
            // The runs claimed go straight to this process's dispatcher, leased to it by
            // the claim itself — unless it is in backlog (`Dispatcher::claim_lease`).
            let lease = effects.claim_lease(now_ms);
            let mut claims: FuturesUnordered<_> = due
                .chunks(chunk)
                .map(|ids| store.claim_due(ids, now_ms, lease, &planner))
                .collect();
            let mut failed = false;
            while let Some(result) = claims.next().await {
                match result {
                    Ok(claimed) => self.apply_claims(claimed, &effects),
                    Err(e) => {
                        tracing::warn!(error = %e, schedules = due.len(), "claim failed; retrying");
                        failed = true;
                    }
                }
            }
            drop(claims);
            if failed {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Missed;

    #[test]
    fn alone_every_fire_due_before_the_start_is_missed() {
        let missed = Missed {
            boot_ms: 10_000,
            peers_alive: false,
        };
        assert_eq!(missed.before(10_500), 10_000);
        assert_eq!(missed.before(60_000), 10_000);
    }

    #[test]
    fn joining_live_replicas_no_fire_is_missed_by_the_start() {
        let missed = Missed {
            boot_ms: 10_000,
            peers_alive: true,
        };
        assert_eq!(missed.before(10_500), i64::MIN);
    }
}
