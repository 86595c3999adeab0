//! The scheduler's client of the executor: `ExecutorClient` over tonic. It maps status
//! codes to "send again" (unreachable, overloaded, broken) or "refused for good", and
//! events to the few the engine acts on.

use almanac_proto::executor::v1::{
    Action, CancelExecutionRequest, ExecuteRequest, ExecutionStatus, Origin, ValidateActionRequest,
    execution_event::Kind, executor_service_client::ExecutorServiceClient,
};
use almanac_proto::time::{ms_to_timestamp, timestamp_to_ms};
use async_trait::async_trait;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::engine::executor::{
    ActionRefusal, CallError, EventStream, ExecEvent, ExecuteCall, ExecutorClient,
};
use crate::model::{CancelMode, RunStatus};

/// The executor over one HTTP/2 channel (many concurrent streams).
#[derive(Clone)]
pub struct GrpcExecutorClient {
    client: ExecutorServiceClient<Channel>,
}

impl GrpcExecutorClient {
    /// A client of the executor at `endpoint` (`http://127.0.0.1:50052`, or
    /// `dns:///name:port` to balance over every address of a headless Service); it
    /// connects lazily and reconnects by itself.
    pub fn connect_lazy(endpoint: &str) -> Result<Self, super::balance::EndpointError> {
        Ok(Self {
            client: ExecutorServiceClient::new(super::balance::channel(endpoint)?),
        })
    }
}

fn classify(status: &Status) -> CallError {
    let text = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
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
        let mut client = self.client.clone();
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
