//! Recovery (DESIGN §4.6): on start, every PENDING or RUNNING run this process may drive
//! is dispatched again — the same attempt with the same key, so the executor attaches to
//! the execution it already has and streams from the last seq seen. Then a sweep keeps
//! doing so continuously for any such run that has no dispatch task in this process.
//! "May drive" is the owner lease (DESIGN §4.5): with replicas, a run another live
//! replica drives is left alone, and one whose lease expired is adopted; on SQLite (one
//! scheduler per file) every in-flight run is this process's.
//! The same sweep drains the dispatcher's backlog (runs left PENDING in the ledger while
//! it was full), oldest first, woken when tasks end.
//! Missed fires are the timer's business: its claim applies the catch-up policy.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Engine;

/// How often the sweep looks for in-flight runs nobody follows, at most: with leases it
/// looks every half lease, so an orphaned run is adopted soon after its lease expires.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The least time between two sweeps that drain a backlog.
const BACKLOG_PAUSE: Duration = Duration::from_millis(200);

/// Starts recovery in the background; the API serves meanwhile.
pub fn spawn(engine: Arc<Engine>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            () = sweep_forever(&engine) => {}
            () = shutdown.cancelled() => {}
        }
    });
}

async fn sweep_forever(engine: &Engine) {
    let ttl = engine.config.lease_ttl;
    let every = (ttl / 2).clamp(Duration::from_millis(500), SWEEP_EVERY);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 4);
    let owner = engine.config.replica_id.as_str();
    let dispatcher = &engine.dispatcher;
    // The oldest runs are the ones with tasks already: read as many as may have one,
    // so the rest of a backlog shows behind them.
    let limit = u32::try_from(dispatcher.max_tasks()).unwrap_or(u32::MAX);
    let mut first = true;
    // Pending notifications are re-sent on the sweep's own cadence, not on every wake-up
    // of a backlog drain.
    let mut notifications_sent = tokio::time::Instant::now();
    loop {
        let backlog = dispatcher.take_backlog();
        let now_ms = engine.clock.now_ms();
        match engine
            .store
            .drivable_runs(owner, now_ms, now_ms - ttl_ms, limit)
            .await
        {
            Ok(runs) => {
                let complete = runs.len() < limit as usize;
                let (resumed, full) = dispatcher.resume_all(runs).await;
                if full || !complete {
                    dispatcher.keep_backlog();
                } else if !dispatcher.in_backlog() {
                    dispatcher.drained();
                }
                if first || (resumed > 0 && !backlog) {
                    tracing::info!(runs = resumed, "recovery: dispatching in-flight runs again");
                } else if resumed > 0 {
                    tracing::debug!(
                        runs = resumed,
                        "backlog: dispatching the oldest waiting runs"
                    );
                }
            }
            Err(e) => {
                if backlog {
                    dispatcher.keep_backlog();
                }
                tracing::warn!(error = %e, "recovery sweep cannot read the ledger; retrying");
            }
        }
        if first || notifications_sent.elapsed() >= every {
            notifications_sent = tokio::time::Instant::now();
            match engine.store.pending_notifications().await {
                Ok(runs) => {
                    for run_id in runs {
                        engine.notifier.send(run_id);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recovery sweep cannot read pending notifications")
                }
            }
        }
        if dispatcher.in_backlog() {
            // A backlog drains in steps, each a read of the oldest runs: not too often.
            tokio::time::sleep(BACKLOG_PAUSE).await;
        }
        let wait = if first {
            every.min(Duration::from_secs(1))
        } else {
            every
        };
        first = false;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = dispatcher.room() => {}
        }
    }
}
