//! The on_failure / on_recovery notifications a run owes (DESIGN §4.4): sent through the
//! executor as a `send_notification` execution under the key `{run_id}/on_failure` (or
//! `/on_recovery`), so a repeat attaches instead of sending twice. The run's id, nominal
//! time, status and error are added to the message's fields. Recorded SENT or FAILED on
//! the run; PENDING ones are sent again by recovery.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use almanac_proto::executor::v1::{Action, MessageField, NotificationMessage, action};
use almanac_proto::time::ms_to_rfc3339;
use futures::StreamExt;

use super::executor::{CallError, ExecEvent, ExecuteCall, ExecutorClient};
use crate::model::{Notification, Run, RunStatus, Schedule};
use crate::store::SchedulerStore;

/// Tries to reach the executor before leaving a notification to the next recovery sweep.
const SEND_TRIES: u32 = 30;

/// Sends notifications, one task per run at most.
pub struct Notifier {
    store: Arc<dyn SchedulerStore>,
    executor: Arc<dyn ExecutorClient>,
    sending: Mutex<HashSet<String>>,
}

impl Notifier {
    pub fn new(store: Arc<dyn SchedulerStore>, executor: Arc<dyn ExecutorClient>) -> Arc<Self> {
        Arc::new(Self {
            store,
            executor,
            sending: Mutex::new(HashSet::new()),
        })
    }

    /// Sends the notification `run_id` owes, unless this process already is.
    pub fn send(self: &Arc<Self>, run_id: String) {
        if !self
            .sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.deliver(&run_id).await;
            this.sending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&run_id);
        });
    }

    async fn deliver(&self, run_id: &str) {
        let Ok(Some((schedule, run, kind))) = self.store.notification_job(run_id).await else {
            return;
        };
        let Some(call) = notification_call(&schedule, &run, kind) else {
            let _ = self
                .store
                .notification_done(run_id, Some("the schedule no longer has this notification"))
                .await;
            return;
        };
        let mut wait = Duration::from_millis(200);
        for _ in 0..SEND_TRIES {
            match follow(self.executor.as_ref(), call.clone()).await {
                Ok(error) => {
                    if let Err(e) = self.store.notification_done(run_id, error.as_deref()).await {
                        tracing::warn!(run_id, error = %e, "cannot record the notification; recovery sends it again");
                    }
                    tracing::info!(run_id, kind = kind.key_suffix(), failed = ?error, "notification sent");
                    return;
                }
                Err(CallError::Rejected(why)) => {
                    let _ = self.store.notification_done(run_id, Some(&why)).await;
                    tracing::error!(run_id, why, "the executor refused the notification");
                    return;
                }
                Err(CallError::Transient(why)) => {
                    tracing::warn!(run_id, why, "notification not delivered yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Follows one Execute to its end: `Ok(None)` when it succeeded, `Ok(Some(error))` when
/// it ended otherwise.
async fn follow(
    executor: &dyn ExecutorClient,
    call: ExecuteCall,
) -> Result<Option<String>, CallError> {
    let mut stream = executor.execute(call).await?;
    while let Some(event) = stream.next().await {
        if let ExecEvent::Finished { status, error, .. } = event? {
            return Ok(match status {
                RunStatus::Succeeded => None,
                other => Some(error.unwrap_or_else(|| format!("{other:?}"))),
            });
        }
    }
    Err(CallError::Transient("the event stream ended early".into()))
}

/// The Execute call of a run's notification, its message completed with the run's facts.
fn notification_call(schedule: &Schedule, run: &Run, kind: Notification) -> Option<ExecuteCall> {
    let configured = match kind {
        Notification::OnFailure => schedule.policy.on_failure.clone(),
        Notification::OnRecovery => schedule.policy.on_recovery.clone(),
    }?;
    let mut notification = configured;
    let message = notification
        .message
        .get_or_insert_with(NotificationMessage::default);
    let mut fact = |name: &str, value: String| {
        message.fields.push(MessageField {
            name: name.to_owned(),
            value,
        })
    };
    fact("schedule", schedule.id.clone());
    fact("run", run.id.clone());
    fact("nominal_time", ms_to_rfc3339(run.nominal_ms));
    fact("status", status_name(run.status).to_owned());
    if let Some(error) = &run.error {
        fact("error", error.clone());
    }
    Some(ExecuteCall {
        key: format!("{}/{}", run.id, kind.key_suffix()),
        action: Action {
            kind: Some(action::Kind::SendNotification(notification)),
        },
        deadline_ms: None,
        schedule_id: schedule.id.clone(),
        run_id: run.id.clone(),
        nominal_ms: run.nominal_ms,
        attempt: run.attempt,
        after_seq: 0,
    })
}

fn status_name(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Pending => "PENDING",
        RunStatus::Running => "RUNNING",
        RunStatus::Succeeded => "SUCCEEDED",
        RunStatus::Failed => "FAILED",
        RunStatus::TimedOut => "TIMED_OUT",
        RunStatus::Cancelled => "CANCELLED",
        RunStatus::Buffered => "BUFFERED",
        RunStatus::Skipped => "SKIPPED",
        RunStatus::Missed => "MISSED",
    }
}
