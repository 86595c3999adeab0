//! Group commit for the ledger updates the executor's events cause (DESIGN §8: writes on
//! the hot path are batched). Dispatch tasks submit updates; one task applies whatever
//! has queued up in a single transaction and tells the waiters it is durable.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use crate::store::{Effect, LedgerUpdate, SchedulerStore};

/// At most this many updates go into one transaction.
const BATCH: usize = 1_024;

type Item = (LedgerUpdate, Option<oneshot::Sender<()>>);

/// The submitting side of the writer.
#[derive(Clone)]
pub struct LedgerWriter {
    tx: mpsc::UnboundedSender<Item>,
}

impl LedgerWriter {
    /// Starts the writer task; it runs until `stop` is cancelled and the queue is empty.
    pub fn spawn(
        store: Arc<dyn SchedulerStore>,
        clock: Arc<dyn Clock>,
        effects: mpsc::UnboundedSender<Vec<Effect>>,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(write_loop(store, clock, effects, rx, stop));
        (Self { tx }, handle)
    }

    /// Queues an update without waiting for it.
    pub fn submit(&self, update: LedgerUpdate) {
        if self.tx.send((update, None)).is_err() {
            tracing::warn!("ledger writer stopped; update dropped, recovery will redo it");
        }
    }

    /// Queues an update and waits until it is committed. Returns false if the writer
    /// stopped first (recovery redoes the update from the executor's log).
    pub async fn commit(&self, update: LedgerUpdate) -> bool {
        let (done, wait) = oneshot::channel();
        if self.tx.send((update, Some(done))).is_err() {
            return false;
        }
        wait.await.is_ok()
    }
}

async fn write_loop(
    store: Arc<dyn SchedulerStore>,
    clock: Arc<dyn Clock>,
    effects: mpsc::UnboundedSender<Vec<Effect>>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Item> = Vec::with_capacity(BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n,
            () = stop.cancelled() => {
                // Drain what is queued, then stop.
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    return;
                }
                batch.len()
            }
        };
        if n == 0 {
            return;
        }
        let updates: Vec<LedgerUpdate> = batch.iter().map(|(u, _)| u.clone()).collect();
        let mut delay = Duration::from_millis(50);
        let written = loop {
            match store.apply_updates(&updates, clock.now_ms()).await {
                Ok(done) => {
                    if !done.is_empty() {
                        let _ = effects.send(done);
                    }
                    break true;
                }
                Err(e) if stop.is_cancelled() => {
                    tracing::error!(error = %e, updates = updates.len(),
                        "ledger updates not written at shutdown; recovery will redo them");
                    break false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, detail = ?e, updates = updates.len(), "ledger write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        for (_, done) in batch.drain(..) {
            if let (true, Some(done)) = (written, done) {
                let _ = done.send(());
            }
        }
    }
}
