//! The timer (DESIGN §4.5): an in-memory index of ACTIVE schedules by next fire time,
//! loaded from the store (which stays the truth). It sleeps until the earliest fire or
//! until an API change wakes it, then claims every due schedule in one batched
//! transaction and hands the new runs to the dispatcher.

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
        boot_ms: i64,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        let handle = tokio::spawn(async move {
            tokio::select! {
                () = this.run(store, clock, effects, specs, boot_ms) => {}
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
            effects.apply(
                c.dispatch
                    .into_iter()
                    .map(crate::store::Effect::Dispatch)
                    .collect(),
            );
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
        boot_ms: i64,
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
            let planner = |schedule: &crate::model::Schedule,
                           in_flight: &super::overlap::InFlight| {
                let spec = specs
                    .get(schedule)
                    .map_err(|e| format!("stored spec is invalid: {e}"))?;
                Ok(plan_due(&DueContext {
                    schedule,
                    spec: &spec,
                    now_ms,
                    boot_ms,
                    in_flight: in_flight.clone(),
                }))
            };
            // Disjoint chunks claimed concurrently where the store allows it (PostgreSQL);
            // each chunk in id order, the order every ledger transaction locks schedules
            // in, so two transactions never wait on each other in a cycle.
            let mut due = due;
            due.sort_unstable();
            let chunk = due.len().div_ceil(store.claim_parallelism().max(1));
            let mut claims: FuturesUnordered<_> = due
                .chunks(chunk)
                .map(|ids| store.claim_due(ids, now_ms, &planner))
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
