//! Carries out what committed ledger changes leave to do (`store::Effect`): dispatch a
//! run, ask the executor to stop an execution, send a notification a run owes, forget a
//! paused schedule in the timer. Every effect is safe to repeat, and recovery redoes what
//! a crash interrupts (PENDING runs, pending notifications, RUNNING runs marked cancelled).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatcher;
use super::executor::{CallError, ExecutorClient};
use super::notify::Notifier;
use super::timer::Timer;
use crate::model::{CancelMode, DispatchJob};
use crate::store::{ClaimLease, Effect};

/// How many times a cancellation is sent before it is left to recovery.
const CANCEL_TRIES: u32 = 20;

/// Applies effects.
pub struct Effects {
    dispatcher: Arc<Dispatcher>,
    timer: Arc<Timer>,
    executor: Arc<dyn ExecutorClient>,
    notifier: Arc<Notifier>,
}

impl Effects {
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        timer: Arc<Timer>,
        executor: Arc<dyn ExecutorClient>,
        notifier: Arc<Notifier>,
    ) -> Arc<Self> {
        Arc::new(Self {
            dispatcher,
            timer,
            executor,
            notifier,
        })
    }

    /// Starts whatever the effects ask for; returns at once.
    pub fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Dispatch(run_id) => self.dispatcher.dispatch(run_id),
                Effect::Paused(schedule_id) => self.timer.upsert(&schedule_id, None),
                Effect::Notify(run_id) => self.notifier.send(run_id),
                Effect::CancelExecution {
                    run_id,
                    key,
                    mode,
                    reason,
                } => {
                    let executor = self.executor.clone();
                    tokio::spawn(
                        async move { cancel(executor, &run_id, &key, mode, &reason).await },
                    );
                }
            }
        }
    }

    /// Dispatches the runs a claim of this process wrote (`Dispatcher::dispatch_claimed`).
    pub fn dispatch_claimed(&self, jobs: Vec<DispatchJob>) {
        for job in jobs {
            self.dispatcher.dispatch_claimed(job);
        }
    }

    /// The lease a claim made now takes on the runs it writes (`Dispatcher::claim_lease`).
    pub fn claim_lease(&self, now_ms: i64) -> Option<ClaimLease<'_>> {
        self.dispatcher.claim_lease(now_ms)
    }

    /// Applies effects arriving on `rx` (from the ledger writer) until `stop`.
    pub fn spawn_loop(
        self: &Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Vec<Effect>>,
        stop: CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(effects) => this.apply(effects),
                        None => return,
                    },
                    () = stop.cancelled() => return,
                }
            }
        });
    }
}

/// Asks the executor to stop the execution of `key`, retrying while it is unreachable. An
/// execution it does not know yet (an Execute still on its way) is not an error: the
/// ledger update of its start sends the cancellation again.
async fn cancel(
    executor: Arc<dyn ExecutorClient>,
    run_id: &str,
    key: &str,
    mode: CancelMode,
    reason: &str,
) {
    let mut wait = Duration::from_millis(100);
    for _ in 0..CANCEL_TRIES {
        match executor.cancel(key, mode, reason).await {
            Ok(()) => {
                tracing::info!(run_id, key, mode = ?mode, "execution asked to stop");
                return;
            }
            Err(CallError::Rejected(why)) => {
                tracing::debug!(run_id, key, why, "nothing to cancel on the executor");
                return;
            }
            Err(CallError::Transient(why)) => {
                tracing::warn!(
                    run_id,
                    key,
                    why,
                    "cannot reach the executor to cancel; retrying"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(run_id, key, "gave up asking the executor to cancel");
}
