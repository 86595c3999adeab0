//! Recovery (DESIGN §4.6): on start, every PENDING or RUNNING run is dispatched again —
//! the same attempt with the same key, so the executor attaches to the execution it
//! already has and streams from the last seq seen. Then a sweep keeps doing so
//! continuously for any in-flight run that has no dispatch task in this process.
//! Missed fires are the timer's business: its claim applies the catch-up policy.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Engine;

/// How often the sweep looks for in-flight runs nobody follows.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

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
    let mut first = true;
    loop {
        match engine.store.in_flight_runs().await {
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
            Duration::from_secs(1)
        } else {
            SWEEP_EVERY
        })
        .await;
    }
}
