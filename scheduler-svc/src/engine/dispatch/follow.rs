//! One Execute call of a dispatch task: the events its stream brings, written to the
//! ledger under the run's lease epoch. An attempt's start is held back until its finish
//! (or `START_HOLD`) so that most fires cost one ledger write; a broken stream or an
//! unreachable executor is reported back, for the task to send the same attempt again.

use std::time::Duration;

use futures::StreamExt;

use super::Dispatcher;
use crate::engine::executor::{CallError, ExecEvent, ExecuteCall};
use crate::engine::ledger_writer::LedgerWriter;
use crate::model::{AttemptOutcome, DispatchJob, RunStatus};
use crate::store::{AttemptStart, LedgerUpdate};

/// How long an attempt's start waits for its finish before it is written alone: most
/// executions a schedule fires end within it, and their start then goes with the finish
/// (one ledger write instead of two). A run shows PENDING at most this long after its
/// execution started.
const START_HOLD: Duration = Duration::from_millis(500);

impl Dispatcher {
    /// One Execute call: the events it brings, written to the ledger.
    pub(super) async fn follow(
        &self,
        job: &DispatchJob,
        epoch: i64,
        after_seq: u64,
        writer: &LedgerWriter,
    ) -> Followed {
        let call = ExecuteCall {
            key: job.execution_key.clone(),
            action: job.action.clone(),
            deadline_ms: job.deadline_ms,
            schedule_id: job.schedule_id.clone(),
            run_id: job.run_id.clone(),
            nominal_ms: job.nominal_ms,
            attempt: job.attempt,
            after_seq,
        };
        let mut stream = match self.client.execute(call).await {
            Ok(stream) => stream,
            Err(CallError::Transient(error)) => {
                return Followed::Broken {
                    seq: after_seq,
                    error,
                };
            }
            Err(CallError::Rejected(error)) => {
                tracing::error!(run_id = %job.run_id, attempt = job.attempt, error = %error,
                    "executor refused the attempt; the run fails");
                let outcome = AttemptOutcome {
                    status: RunStatus::Failed,
                    error: Some(format!("executor refused the attempt: {error}")),
                    result: None,
                    retryable: false,
                    finished_ms: self.clock.now_ms(),
                    last_seq: after_seq,
                };
                let committed = writer
                    .commit(LedgerUpdate::Finished {
                        run_id: job.run_id.clone(),
                        fence: Some(epoch),
                        attempt: job.attempt,
                        outcome,
                        started: None,
                    })
                    .await;
                return Followed::Finished {
                    committed,
                    succeeded: false,
                };
            }
        };
        let mut seq = after_seq;
        // The start, held back until its finish or START_HOLD, whichever comes first.
        let mut held: Option<(AttemptStart, u64, tokio::time::Instant)> = None;
        // Writes a held start alone.
        let flush = |held: Option<(AttemptStart, u64, tokio::time::Instant)>| {
            if let Some((start, s, _)) = held {
                writer.submit(LedgerUpdate::Started {
                    run_id: job.run_id.clone(),
                    fence: Some(epoch),
                    attempt: job.attempt,
                    execution_id: start.execution_id,
                    started_ms: start.started_ms,
                    last_seq: s,
                });
            }
        };
        loop {
            let item = match &held {
                None => stream.next().await,
                Some((_, _, until)) => tokio::select! {
                    item = stream.next() => item,
                    () = tokio::time::sleep_until(*until) => {
                        flush(held.take());
                        continue;
                    }
                },
            };
            let Some(item) = item else { break };
            match item {
                Ok(ExecEvent::Started {
                    seq: s,
                    execution_id,
                    at_ms,
                }) => {
                    seq = seq.max(s);
                    let start = AttemptStart {
                        execution_id,
                        started_ms: at_ms,
                    };
                    held = Some((start, s, tokio::time::Instant::now() + START_HOLD));
                }
                Ok(ExecEvent::Finished {
                    seq: s,
                    at_ms,
                    status,
                    error,
                    result,
                    retryable,
                }) => {
                    let outcome = AttemptOutcome {
                        status,
                        error,
                        result,
                        retryable,
                        finished_ms: at_ms,
                        last_seq: s,
                    };
                    let update = LedgerUpdate::Finished {
                        run_id: job.run_id.clone(),
                        fence: Some(epoch),
                        attempt: job.attempt,
                        outcome,
                        started: held.take().map(|(start, _, _)| start),
                    };
                    let committed = writer.commit(update).await;
                    if committed {
                        // Success is in the ledger; a line per fire only at debug.
                        if status == RunStatus::Succeeded {
                            tracing::debug!(run_id = %job.run_id, attempt = job.attempt, "attempt finished");
                        } else {
                            tracing::info!(run_id = %job.run_id, attempt = job.attempt, status = ?status, "attempt finished");
                        }
                    }
                    return Followed::Finished {
                        committed,
                        succeeded: status == RunStatus::Succeeded,
                    };
                }
                Ok(ExecEvent::Other { seq: s }) => seq = seq.max(s),
                Err(e) => {
                    flush(held.take());
                    return Followed::Broken {
                        seq,
                        error: e.to_string(),
                    };
                }
            }
        }
        flush(held.take());
        Followed::Broken {
            seq,
            error: "event stream ended before the execution finished".into(),
        }
    }
}

pub(super) enum Followed {
    /// The attempt ended; `committed` when its end is in the ledger, `succeeded` when it
    /// succeeded (and so ended its run).
    Finished {
        committed: bool,
        succeeded: bool,
    },
    Broken {
        seq: u64,
        error: String,
    },
}
