//! Retention (DESIGN §4.4): keeps each schedule's ledger within its policy — the newest
//! `keep_last` finished runs and/or those younger than `max_age` — in batches, never
//! touching a run in flight or waiting. Runs in the background (every minute by default).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Engine;

/// Rows deleted per transaction, and batches per schedule per round.
const BATCH: u32 = 500;
const MAX_BATCHES: u32 = 20;

/// Starts the pruning loop.
pub fn spawn(engine: Arc<Engine>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            () = prune_forever(&engine) => {}
            () = shutdown.cancelled() => {}
        }
    });
}

async fn prune_forever(engine: &Engine) {
    loop {
        if let Err(e) = prune_once(engine).await {
            tracing::warn!(error = %e, "retention round failed; trying again later");
        }
        tokio::time::sleep(engine.config.retention_every).await;
    }
}

/// One round over every schedule with a bounded retention; returns rows deleted.
pub async fn prune_once(engine: &Engine) -> Result<u64, crate::store::StoreError> {
    let now = engine.clock.now_ms();
    let mut total = 0;
    for (schedule_id, retention) in engine.store.retained_schedules().await? {
        let older_than = retention.max_age_ms.map(|age| now - age);
        for _ in 0..MAX_BATCHES {
            let deleted = engine
                .store
                .prune_runs(&schedule_id, retention.keep_last, older_than, BATCH)
                .await?;
            total += deleted;
            if deleted < u64::from(BATCH) {
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(runs = total, "retention pruned finished runs");
    }
    Ok(total)
}
