//! Recovery (DESIGN §4.6): on start, every PENDING or RUNNING run this process may drive
//! is dispatched again — the same attempt with the same key, so the executor attaches to
//! the execution it already has and streams from the last seq seen. Then a sweep keeps
//! doing so continuously for any such run that has no dispatch task in this process.
//! "May drive" is the owner lease (DESIGN §4.5): with replicas, a run another live
//! replica drives is left alone, and one whose lease expired is adopted; on SQLite (one
//! scheduler per file) every in-flight run is this process's.
//! Missed fires are the timer's business: its claim applies the catch-up policy.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Engine;

/// How often the sweep looks for in-flight runs nobody follows, at most: with leases it
/// looks every half lease, so an orphaned run is adopted soon after its lease expires.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// At most this many runs are adopted per sweep.
const SWEEP_LIMIT: u32 = 10_000;

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
    let mut first = true;
    loop {
        let now_ms = engine.clock.now_ms();
        match engine
            .store
            .drivable_runs(owner, now_ms, now_ms - ttl_ms, SWEEP_LIMIT)
            .await
        {
            Ok(runs) => {
                let mut resumed = 0usize;
                for run_id in runs {
                    if !engine.dispatcher.is_dispatching(&run_id) {
                        engine.dispatcher.dispatch(run_id);
                        resumed += 1;
                    }
                }
                if first || resumed > 0 {
                    tracing::info!(runs = resumed, "recovery: dispatching in-flight runs again");
                }
                first = false;
            }
            Err(e) => tracing::warn!(error = %e, "recovery sweep cannot read the ledger; retrying"),
        }
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
        tokio::time::sleep(if first {
            every.min(Duration::from_secs(1))
        } else {
            every
        })
        .await;
    }
}
