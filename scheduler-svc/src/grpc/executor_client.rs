//! The scheduler's client of the executor: `ExecutorClient` over tonic. It maps status
//! codes to "send again" (unreachable, overloaded, broken) or "refused for good", and
//! events to the few the engine acts on.
//!
//! Attempts are sent in batches: every `execute` queues its call, and one task sends
//! what is queued together as one `ExecuteBatch` (asking for the first and the last
//! event only) and routes each call's updates back to its caller. Calls that come
//! together — the runs one claim dispatches — so share one stream, and one message per
//! step of their executions, instead of a stream each. A batch is one call on the
//! channel, so a balanced channel still spreads batches over the executors. An executor
//! without `ExecuteBatch` (`UNIMPLEMENTED`) is sent `Execute` per attempt from then on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use almanac_proto::executor::v1::{
    Action, CancelExecutionRequest, ExecuteBatchRequest, ExecuteCall as BatchCall, ExecuteRequest,
    ExecutionStatus, Origin, ValidateActionRequest, execute_update::Update, execution_event::Kind,
    executor_service_client::ExecutorServiceClient,
};
use almanac_proto::time::{ms_to_timestamp, timestamp_to_ms};
use async_trait::async_trait;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::engine::executor::{
    ActionRefusal, CallError, EventStream, ExecEvent, ExecuteCall, ExecutorClient,
};
use crate::model::{CancelMode, RunStatus};

/// The most calls one batch carries (the executor takes up to 1 000).
const MAX_BATCH: usize = 512;

/// The most encoded bytes of requests one batch carries (one larger request goes alone):
/// far below a server's default 4 MiB limit on a message, though an action may carry a
/// large body.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The executor over one HTTP/2 channel (many concurrent streams).
#[derive(Clone)]
pub struct GrpcExecutorClient {
    client: ExecutorServiceClient<Channel>,
    /// Calls waiting for the batching task.
    queue: mpsc::UnboundedSender<Queued>,
    /// Set once the executor answered `ExecuteBatch` with `UNIMPLEMENTED`.
    single: Arc<AtomicBool>,
}

/// A call waiting to be sent in a batch, and where its events go.
struct Queued {
    request: ExecuteRequest,
    reply: oneshot::Sender<Result<Events, CallError>>,
}

/// One call's events as the batch's stream routes them.
type Events = mpsc::UnboundedReceiver<Result<ExecEvent, CallError>>;

impl GrpcExecutorClient {
    /// A client of the executor at `endpoint` (`http://127.0.0.1:50052`, or
    /// `dns:///name:port` to balance over every address of a headless Service); it
    /// connects lazily and reconnects by itself. Its batching task runs (on the current
    /// Tokio runtime) until the last clone is dropped.
    pub fn connect_lazy(endpoint: &str) -> Result<Self, super::balance::EndpointError> {
        let client = ExecutorServiceClient::new(super::balance::channel(endpoint)?);
        let (queue, queued) = mpsc::unbounded_channel();
        let single = Arc::new(AtomicBool::new(false));
        tokio::spawn(gather(client.clone(), queued, Arc::clone(&single)));
        Ok(Self {
            client,
            queue,
            single,
        })
    }
}

/// Takes the queued calls, and sends what has gathered as one batch each time: after
/// the first call of a batch it lets the other ready tasks run once, so that the runs
/// one claim dispatches go together. It never waits on a timer.
async fn gather(
    client: ExecutorServiceClient<Channel>,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    single: Arc<AtomicBool>,
) {
    // A call taken that did not fit the previous batch: the next one starts with it.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(call) => call,
            None => match queued.recv().await {
                Some(call) => call,
                None => return,
            },
        };
        tokio::task::yield_now().await;
        let mut bytes = first.request.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(call) = queued.try_recv() else { break };
            let size = call.request.encoded_len();
            if bytes + size > MAX_BATCH_BYTES {
                carried = Some(call);
                break;
            }
            bytes += size;
            batch.push(call);
        }
        tokio::spawn(send_batch(client.clone(), batch, Arc::clone(&single)));
    }
}

/// Sends one batch and routes its updates to each call's events until every call has
/// ended or been let go by its caller.
async fn send_batch(
    mut client: ExecutorServiceClient<Channel>,
    batch: Vec<Queued>,
    single: Arc<AtomicBool>,
) {
    let mut replies = Vec::with_capacity(batch.len());
    let calls = batch
        .into_iter()
        .zip(0u64..)
        .map(|(queued, tag)| {
            replies.push((tag, queued.reply));
            BatchCall {
                tag,
                request: Some(queued.request),
                ends_only: true,
            }
        })
        .collect();
    let mut stream = match client.execute_batch(ExecuteBatchRequest { calls }).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => {
            // Not a refusal of these attempts: their callers send them again, one
            // `Execute` each from now on.
            tracing::info!("the executor has no ExecuteBatch; sending Execute per attempt");
            single.store(true, Ordering::Release);
            for (_, reply) in replies {
                let _ = reply.send(Err(CallError::Transient(
                    "the executor has no ExecuteBatch".into(),
                )));
            }
            return;
        }
        Err(status) => {
            let error = classify(&status);
            for (_, reply) in replies {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let mut routes = HashMap::with_capacity(replies.len());
    for (tag, reply) in replies {
        let (tx, rx) = mpsc::unbounded_channel();
        if reply.send(Ok(rx)).is_ok() {
            routes.insert(tag, tx);
        }
    }
    while !routes.is_empty() {
        match stream.message().await {
            Ok(Some(response)) => {
                for update in response.updates {
                    let (item, last) = match update.update {
                        Some(Update::Event(event)) => {
                            let event = convert_event(event);
                            let last = matches!(event, ExecEvent::Finished { .. });
                            (Ok(event), last)
                        }
                        Some(Update::Error(error)) => (
                            Err(classify_code(Code::from(error.code), &error.message)),
                            true,
                        ),
                        None => continue,
                    };
                    let Some(route) = routes.get(&update.tag) else {
                        continue;
                    };
                    // A caller that stopped following lets its call go.
                    if route.send(item).is_err() || last {
                        routes.remove(&update.tag);
                    }
                }
            }
            Ok(None) => break,
            Err(status) => {
                let error = classify(&status);
                for route in routes.into_values() {
                    let _ = route.send(Err(error.clone()));
                }
                return;
            }
        }
    }
    // What is left was not ended by its executor: each caller sends its attempt again.
    for route in routes.into_values() {
        let _ = route.send(Err(CallError::Transient(
            "the batch's stream ended before the call finished".into(),
        )));
    }
}

/// `Execute` for one attempt (to an executor without `ExecuteBatch`): its status is the
/// call's answer, its stream the call's events.
async fn execute_single(
    mut client: ExecutorServiceClient<Channel>,
    request: ExecuteRequest,
) -> Result<EventStream, CallError> {
    let stream = client
        .execute(request)
        .await
        .map_err(|s| classify(&s))?
        .into_inner();
    Ok(stream
        .map(|item| match item {
            Ok(response) => match response.event {
                Some(event) => Ok(convert_event(event)),
                None => Err(CallError::Transient("a response without an event".into())),
            },
            Err(status) => Err(classify(&status)),
        })
        .boxed())
}

fn classify(status: &Status) -> CallError {
    classify_code(status.code(), status.message())
}

fn classify_code(code: Code, message: &str) -> CallError {
    let text = format!("{code:?}: {message}");
    match code {
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented
        | Code::OutOfRange => CallError::Rejected(text),
        // Unavailable, ResourceExhausted, broken transports (Unknown, Internal from a
        // reset stream), DeadlineExceeded, Aborted, Cancelled: the executor keeps the
        // execution under its key, so sending the same attempt again is safe.
        _ => CallError::Transient(text),
    }
}

fn convert_event(event: almanac_proto::executor::v1::ExecutionEvent) -> ExecEvent {
    let at_ms = event.time.as_ref().map(timestamp_to_ms).unwrap_or_default();
    match event.kind {
        Some(Kind::ExecutionStarted(started)) => ExecEvent::Started {
            seq: event.seq,
            execution_id: if started.execution_id.is_empty() {
                event.execution_id
            } else {
                started.execution_id
            },
            at_ms,
        },
        Some(Kind::ExecutionFinished(finished)) => {
            let status = match ExecutionStatus::try_from(finished.status) {
                Ok(ExecutionStatus::Succeeded) => RunStatus::Succeeded,
                Ok(ExecutionStatus::TimedOut) => RunStatus::TimedOut,
                Ok(ExecutionStatus::Cancelled) => RunStatus::Cancelled,
                _ => RunStatus::Failed,
            };
            ExecEvent::Finished {
                seq: event.seq,
                at_ms,
                status,
                error: Some(finished.error).filter(|e| !e.is_empty()),
                result: finished.result.and_then(|v| serde_json::to_value(v).ok()),
                retryable: finished.retryable,
            }
        }
        _ => ExecEvent::Other { seq: event.seq },
    }
}

#[async_trait]
impl ExecutorClient for GrpcExecutorClient {
    /// Queues the call for the next batch, and returns once the executor has answered
    /// it: its first event, or the error that refuses it (a refusal is the call's result,
    /// not a broken stream).
    async fn execute(&self, call: ExecuteCall) -> Result<EventStream, CallError> {
        let request = ExecuteRequest {
            idempotency_key: call.key,
            action: Some(call.action),
            deadline: call.deadline_ms.map(ms_to_timestamp),
            origin: Some(Origin {
                schedule_id: call.schedule_id,
                run_id: call.run_id,
                nominal_time: Some(ms_to_timestamp(call.nominal_ms)),
                attempt: call.attempt,
            }),
            after_seq: call.after_seq,
        };
        if self.single.load(Ordering::Acquire) {
            return execute_single(self.client.clone(), request).await;
        }
        let (reply, replied) = oneshot::channel();
        let gone = || CallError::Transient("the executor client is shutting down".into());
        self.queue
            .send(Queued { request, reply })
            .map_err(|_| gone())?;
        let mut events = replied.await.map_err(|_| gone())??;
        match events.recv().await {
            None => Err(CallError::Transient(
                "the batch's stream ended before the call's first event".into(),
            )),
            Some(Err(error)) => Err(error),
            Some(Ok(first)) => Ok(futures::stream::once(async { Ok(first) })
                .chain(UnboundedReceiverStream::new(events))
                .boxed()),
        }
    }

    async fn cancel(&self, key: &str, mode: CancelMode, reason: &str) -> Result<(), CallError> {
        let mut client = self.client.clone();
        client
            .cancel_execution(cancel_request(key, mode, reason))
            .await
            .map(|_| ())
            .map_err(|s| classify(&s))
    }

    async fn validate_action(&self, action: &Action, prefix: &str) -> Result<(), ActionRefusal> {
        let mut client = self.client.clone();
        let request = ValidateActionRequest {
            action: Some(action.clone()),
            field_prefix: prefix.to_owned(),
        };
        match client.validate_action(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(match status.code() {
                Code::InvalidArgument => ActionRefusal::Invalid(with_fallback(
                    almanac_proto::status::field_violations(&status),
                    prefix,
                    &status,
                )),
                Code::FailedPrecondition => ActionRefusal::Refused(with_fallback(
                    almanac_proto::status::precondition_violations(&status),
                    prefix,
                    &status,
                )),
                _ => {
                    ActionRefusal::Unavailable(format!("{:?}: {}", status.code(), status.message()))
                }
            }),
        }
    }
}

/// The cancellation of an execution by key.
fn cancel_request(key: &str, mode: CancelMode, reason: &str) -> CancelExecutionRequest {
    CancelExecutionRequest {
        execution_id: String::new(),
        idempotency_key: key.to_owned(),
        mode: match mode {
            CancelMode::Graceful => almanac_proto::executor::v1::CancelMode::Graceful,
            CancelMode::Terminate => almanac_proto::executor::v1::CancelMode::Terminate,
        } as i32,
        reason: reason.to_owned(),
    }
}

/// The violations a status carried, or one made of its message when it carried none.
fn with_fallback(
    violations: Vec<almanac_proto::action::FieldViolation>,
    prefix: &str,
    status: &Status,
) -> Vec<almanac_proto::action::FieldViolation> {
    if violations.is_empty() {
        vec![almanac_proto::action::FieldViolation::new(
            prefix,
            status.message(),
        )]
    } else {
        violations
    }
}

#[cfg(test)]
mod tests;
