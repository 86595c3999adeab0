//! Holding executions under leases, for several executors on one database (DESIGN §8).
//! One keeper task per process renews, every third of the TTL and in one statement, the
//! leases of the executions it runs (a lease found lost stops its runner at once); reads,
//! every `CANCEL_POLL`, the cancellations recorded through other replicas; and, on a
//! shared database, sweeps every half TTL for unfinished executions whose lease expired
//! and adopts them (bumping their epoch), resuming each from its committed state.
//! Start-up adopts at once what a previous process left (SQLite: everything).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Engine;
use crate::error::ExecutorError;
use crate::model::{CancelMode, ExecutionRecord};
use crate::store::{AdoptScope, Adoption};

/// How often the keeper reads the cancellations of the executions this process runs.
pub const CANCEL_POLL: Duration = Duration::from_millis(500);
/// Executions claimed by one adoption statement.
const ADOPT_BATCH: u32 = 100;
/// Batches one periodic sweep claims at most (the next sweep takes the rest).
const MAX_SWEEP_BATCHES: usize = 10;
/// Batches the start-up adoption claims at most (a bound, not an expected size).
const MAX_START_BATCHES: usize = 100_000;

impl Engine {
    /// When a lease taken or renewed now ends.
    pub(super) fn lease_until(&self) -> i64 {
        let ttl = i64::try_from(self.leasing.ttl.as_millis()).unwrap_or(i64::MAX / 2);
        self.clock.now_ms().saturating_add(ttl)
    }

    fn adoption(&self, scope: AdoptScope) -> Adoption {
        Adoption {
            owner: self.leasing.replica_id.clone(),
            now_ms: self.clock.now_ms(),
            lease_until_ms: self.lease_until(),
            scope,
            only: None,
            after_id: None,
            limit: ADOPT_BATCH,
        }
    }

    /// At start-up: adopts and resumes what previous processes left unfinished — on
    /// SQLite every such execution, on a shared database those whose lease expired and
    /// those this replica id held (a restart with a stable id). Returns how many.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, ExecutorError> {
        let scope = if self.leasing.shared_database {
            AdoptScope::ExpiredOrMine
        } else {
            AdoptScope::All
        };
        let mut adoption = self.adoption(scope);
        let mut total = 0;
        for _ in 0..MAX_START_BATCHES {
            let adopted = self.store.adopt(&adoption).await?;
            for record in &adopted {
                tracing::info!(execution_id = %record.id, last_seq = record.last_seq,
                    epoch = record.lease_epoch, "resuming execution");
                self.start_runner(record.id.clone(), record.lease_epoch, None);
            }
            total += adopted.len();
            match adopted.last() {
                Some(last) if adopted.len() == ADOPT_BATCH as usize => {
                    adoption.after_id = Some(last.id.clone());
                }
                _ => break,
            }
        }
        Ok(total)
    }

    /// Adopts `record` on the spot when nobody runs it any more (an `Execute` or `Watch`
    /// of an execution whose runner died), so that it does not wait for the next sweep —
    /// on SQLite, where there is no sweep, so that it runs at all. Nobody runs it when no
    /// runner here has it and its lease is expired, or is this process's own (a replica
    /// id is one process), or the database is this process's alone (SQLite).
    pub(super) async fn adopt_if_orphaned(
        self: &Arc<Self>,
        record: &ExecutionRecord,
    ) -> Result<(), ExecutorError> {
        let mine = record.owner.as_deref() == Some(self.leasing.replica_id.as_str());
        let orphaned = !record.status.is_finished()
            && !self.shutdown.is_cancelled()
            && self.live(&record.id).is_none()
            && !self.is_creating(&record.id)
            && (!self.leasing.shared_database
                || mine
                || record
                    .lease_until_ms
                    .is_none_or(|until| until <= self.clock.now_ms()));
        if !orphaned {
            return Ok(());
        }
        let scope = if self.leasing.shared_database {
            AdoptScope::ExpiredOrMine
        } else {
            AdoptScope::All
        };
        let mut adoption = self.adoption(scope);
        adoption.only = Some(record.id.clone());
        for adopted in self.store.adopt(&adoption).await? {
            tracing::info!(execution_id = %adopted.id, epoch = adopted.lease_epoch,
                "adopted an execution nobody was running, on request");
            self.start_runner(adopted.id.clone(), adopted.lease_epoch, None);
        }
        Ok(())
    }

    /// Starts the keeper (see the module documentation); it stops at shutdown.
    pub fn spawn_lease_keeper(self: &Arc<Self>) {
        let engine = Arc::clone(self);
        self.tasks.spawn(async move { engine.keep_leases().await });
    }

    async fn keep_leases(self: &Arc<Self>) {
        let renew_every = self.leasing.ttl / 3;
        let sweep_every = self.leasing.ttl / 2;
        let tick = CANCEL_POLL.min(renew_every);
        let mut next_renew = Instant::now() + renew_every;
        let mut next_sweep = Instant::now() + sweep_every;
        // Bounded by shutdown; each turn waits a tick.
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = self.shutdown.cancelled() => return,
            }
            // Monotonic time keeps counting while the process is frozen: a process that
            // wakes up past its leases renews (and learns what it lost) first.
            if Instant::now() >= next_renew {
                next_renew = Instant::now() + renew_every;
                self.renew().await;
            }
            self.poll_cancels().await;
            if self.leasing.shared_database && Instant::now() >= next_sweep {
                next_sweep = Instant::now() + sweep_every;
                self.sweep().await;
            }
        }
    }

    /// Renews every lease held here; stops the runners whose lease was lost and passes on
    /// the cancellations recorded meanwhile.
    async fn renew(&self) {
        let held = self.held_leases();
        if held.is_empty() {
            return;
        }
        let renewed = match self
            .store
            .renew_leases(&self.leasing.replica_id, &held, self.lease_until())
            .await
        {
            Ok(renewed) => renewed,
            Err(error) => {
                tracing::warn!(%error, leases = held.len(), "cannot renew the execution leases");
                return;
            }
        };
        let kept: HashSet<&str> = renewed.iter().map(|r| r.execution_id.as_str()).collect();
        for (id, epoch) in &held {
            if kept.contains(id.as_str()) {
                continue;
            }
            // Only the runner of that epoch: a newer one may have started since.
            if let Some(live) = self.live(id).filter(|l| l.lease.epoch == *epoch) {
                tracing::warn!(execution_id = %id, epoch,
                    "execution lease lost: another replica adopted the execution; its runner here stops");
                live.lost.cancel();
            }
        }
        for r in renewed {
            if let Some(mode) = r.cancel_requested {
                self.signal_cancel(&r.execution_id, mode);
            }
        }
    }

    /// Passes on the cancellations recorded (maybe through another replica) for the
    /// executions running here.
    async fn poll_cancels(&self) {
        let ids: Vec<String> = self.live_map().keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        match self.store.cancel_requests(&ids).await {
            Ok(found) => {
                for (id, mode) in found {
                    self.signal_cancel(&id, mode);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the cancellation requests"),
        }
    }

    /// Tells the local runner of an execution to stop (a no-op when it already knows).
    pub(super) fn signal_cancel(&self, execution_id: &str, mode: CancelMode) {
        let Some(live) = self.live(execution_id) else {
            return;
        };
        let news = !live.stop_new.is_cancelled()
            || (mode == CancelMode::Terminate && !live.abort.is_cancelled());
        live.stop_new.cancel();
        if mode == CancelMode::Terminate {
            live.abort.cancel();
        }
        if news {
            tracing::info!(execution_id, mode = mode.as_str(), "cancellation requested");
        }
    }

    /// Adopts unfinished executions whose lease expired, in bounded batches.
    async fn sweep(self: &Arc<Self>) {
        for _ in 0..MAX_SWEEP_BATCHES {
            if self.shutdown.is_cancelled() {
                return;
            }
            let adopted = match self.store.adopt(&self.adoption(AdoptScope::Expired)).await {
                Ok(adopted) => adopted,
                Err(error) => {
                    tracing::warn!(%error, "cannot sweep for executions to adopt");
                    return;
                }
            };
            for record in &adopted {
                tracing::info!(execution_id = %record.id, epoch = record.lease_epoch,
                    last_seq = record.last_seq, "adopted an execution whose lease had expired");
                self.start_runner(record.id.clone(), record.lease_epoch, None);
            }
            if adopted.len() < ADOPT_BATCH as usize {
                return;
            }
        }
    }
}
