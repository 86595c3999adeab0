//! Retention on the executor (DESIGN §4.4): finished executions are deleted, with their
//! events, node runs and tasks, once they are older than the configured retention — in
//! batches, in the background, never one that is not finished.

use std::sync::Arc;
use std::time::Duration;

use super::Engine;
use crate::error::ExecutorError;

/// How often retention runs, and how much one transaction deletes.
const EVERY: Duration = Duration::from_secs(3600);
const BATCH: u32 = 500;
const MAX_BATCHES: u32 = 100;

impl Engine {
    /// Deletes finished executions older than `retention`; returns how many.
    pub async fn prune_finished(&self, retention: Duration) -> Result<u64, ExecutorError> {
        let before = self.clock.now_ms() - retention.as_millis() as i64;
        let mut total = 0;
        for _ in 0..MAX_BATCHES {
            let deleted = self.store.prune_finished(before, BATCH).await?;
            total += deleted;
            if deleted < u64::from(BATCH) {
                break;
            }
        }
        if total > 0 {
            tracing::info!(executions = total, "retention deleted finished executions");
        }
        Ok(total)
    }

    /// Runs retention every hour until shutdown.
    pub fn spawn_retention(self: &Arc<Self>, retention: Duration) {
        let engine = Arc::clone(self);
        self.tasks.spawn(async move {
            loop {
                if let Err(error) = engine.prune_finished(retention).await {
                    tracing::warn!(%error, "retention failed; trying again later");
                }
                tokio::select! {
                    () = tokio::time::sleep(EVERY) => {}
                    () = engine.shutdown.cancelled() => return,
                }
            }
        });
    }
}
