//! `almanac.executor.v1.ExecutorService` over the engine: each handler converts the
//! request, calls one engine use case, and converts the answer or the error.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use almanac_proto::executor::v1 as pb;
use almanac_proto::executor::v1::executor_service_server::ExecutorService;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::convert;
use super::status::to_status;
use crate::engine::{Engine, EventStream};
use crate::model::EventKind;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC face of the engine.
#[derive(Debug, Clone)]
pub struct ExecutorGrpc {
    engine: Arc<Engine>,
}

impl ExecutorGrpc {
    /// Serves `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// The engine's events as a response stream; an error ends the stream with its status.
fn responses<T, F>(events: EventStream, wrap: F) -> ResponseStream<T>
where
    T: Send + 'static,
    F: Fn(pb::ExecutionEvent) -> T + Send + 'static,
{
    Box::pin(events.map(move |item| match item {
        Ok(event) => Ok(wrap(convert::event(event))),
        Err(e) => Err(to_status(e)),
    }))
}

/// The most calls one `ExecuteBatch` may carry.
pub const MAX_BATCH_CALLS: usize = 1000;

/// Updates waiting for the batch's response stream, per call of the batch: a forwarder
/// waits (and so its execution's events wait in its store and in memory) once its
/// client reads no more.
const UPDATES_PER_CALL: usize = 4;

/// Refuses a batch as a whole: no calls, too many, or a tag used twice.
fn check_batch(calls: &[pb::ExecuteCall]) -> Result<(), Status> {
    use almanac_proto::action::FieldViolation;
    if calls.is_empty() {
        return Err(almanac_proto::status::invalid_argument(&[
            FieldViolation::new("calls", "a batch needs at least one call"),
        ]));
    }
    if calls.len() > MAX_BATCH_CALLS {
        return Err(almanac_proto::status::invalid_argument(&[
            FieldViolation::new(
                "calls",
                format!(
                    "a batch carries at most {MAX_BATCH_CALLS} calls, not {}",
                    calls.len()
                ),
            ),
        ]));
    }
    let mut tags = std::collections::HashSet::with_capacity(calls.len());
    let repeated: Vec<FieldViolation> = calls
        .iter()
        .enumerate()
        .filter(|(_, call)| !tags.insert(call.tag))
        .map(|(i, call)| {
            FieldViolation::new(
                format!("calls[{i}].tag"),
                format!("tag {} is used by an earlier call of the batch", call.tag),
            )
        })
        .collect();
    if repeated.is_empty() {
        Ok(())
    } else {
        Err(almanac_proto::status::invalid_argument(&repeated))
    }
}

/// Runs one call of a batch as `Execute` would, and sends its updates tagged until its
/// execution finishes, it fails, or the batch's client is gone.
async fn forward(engine: Arc<Engine>, call: pb::ExecuteCall, tx: mpsc::Sender<pb::ExecuteUpdate>) {
    use pb::execute_update::Update;
    let tag = call.tag;
    let failed = |status: Status| pb::ExecuteUpdate {
        tag,
        update: Some(Update::Error(pb::CallError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
    };
    let started = match call.request {
        None => Err(almanac_proto::status::invalid_argument(&[
            almanac_proto::action::FieldViolation::new("request", "a call needs its request"),
        ])),
        Some(request) => match convert::start_request(request) {
            Err(e) => Err(to_status(e)),
            Ok((start, after_seq)) => engine.execute(start, after_seq).await.map_err(to_status),
        },
    };
    let mut events = match started {
        Ok(events) => events,
        Err(status) => {
            let _ = tx.send(failed(status)).await;
            return;
        }
    };
    while let Some(item) = events.next().await {
        let ended = item.is_err();
        let update = match item {
            Ok(event) => {
                let end = matches!(
                    event.kind,
                    EventKind::ExecutionStarted { .. } | EventKind::ExecutionFinished { .. }
                );
                if call.ends_only && !end {
                    continue;
                }
                pb::ExecuteUpdate {
                    tag,
                    update: Some(Update::Event(convert::event(event))),
                }
            }
            Err(e) => failed(to_status(e)),
        };
        // An error ends the call: nothing of it follows (the client is gone, or this
        // call's stream failed as Execute's would).
        if tx.send(update).await.is_err() || ended {
            return;
        }
    }
}

/// The most encoded bytes of updates one response gathers (one larger update goes
/// alone): far below a client's default 4 MiB limit on a message, though each result
/// may be up to 1 MiB.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The updates of a batch's calls as responses: each response carries the updates ready
/// when it is sent, up to `MAX_RESPONSE_BYTES`, so calls that move together share
/// messages.
fn batched(mut rx: mpsc::Receiver<pb::ExecuteUpdate>) -> ResponseStream<pb::ExecuteBatchResponse> {
    // An update taken that did not fit the previous response: the next one starts with it.
    let mut carried: Option<pb::ExecuteUpdate> = None;
    Box::pin(futures::stream::poll_fn(move |cx| {
        let mut updates = Vec::new();
        let mut bytes = 0;
        loop {
            let next = match carried.take() {
                Some(update) => Poll::Ready(Some(update)),
                None => rx.poll_recv(cx),
            };
            match next {
                Poll::Ready(Some(update)) => {
                    let size = update.encoded_len();
                    if !updates.is_empty() && bytes + size > MAX_RESPONSE_BYTES {
                        carried = Some(update);
                        break;
                    }
                    bytes += size;
                    updates.push(update);
                }
                Poll::Ready(None) if updates.is_empty() => return Poll::Ready(None),
                Poll::Pending if updates.is_empty() => return Poll::Pending,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Poll::Ready(Some(Ok(pb::ExecuteBatchResponse { updates })))
    }))
}

#[tonic::async_trait]
impl ExecutorService for ExecutorGrpc {
    type ExecuteStream = ResponseStream<pb::ExecuteResponse>;
    type ExecuteBatchStream = ResponseStream<pb::ExecuteBatchResponse>;
    type WatchExecutionStream = ResponseStream<pb::WatchExecutionResponse>;

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let (start, after_seq) = convert::start_request(request.into_inner()).map_err(to_status)?;
        let events = self
            .engine
            .execute(start, after_seq)
            .await
            .map_err(to_status)?;
        Ok(Response::new(responses(events, |event| {
            pb::ExecuteResponse { event: Some(event) }
        })))
    }

    async fn execute_batch(
        &self,
        request: Request<pb::ExecuteBatchRequest>,
    ) -> Result<Response<Self::ExecuteBatchStream>, Status> {
        let calls = request.into_inner().calls;
        check_batch(&calls)?;
        let (tx, rx) = mpsc::channel(calls.len() * UPDATES_PER_CALL);
        for call in calls {
            tokio::spawn(forward(Arc::clone(&self.engine), call, tx.clone()));
        }
        Ok(Response::new(batched(rx)))
    }

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let req = request.into_inner();
        let id = convert::execution_id(req.execution_id).map_err(to_status)?;
        let events = self
            .engine
            .watch(&id, req.after_seq)
            .await
            .map_err(to_status)?;
        Ok(Response::new(responses(events, |event| {
            pb::WatchExecutionResponse { event: Some(event) }
        })))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::GetExecutionResponse>, Status> {
        let lookup = convert::lookup(request.into_inner()).map_err(to_status)?;
        let (record, nodes) = self.engine.get(&lookup).await.map_err(to_status)?;
        Ok(Response::new(pb::GetExecutionResponse {
            execution: Some(convert::execution(record, &nodes)),
        }))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let query = convert::list_query(request.get_ref()).map_err(to_status)?;
        let page = self.engine.list(query).await.map_err(to_status)?;
        Ok(Response::new(pb::ListExecutionsResponse {
            executions: page
                .executions
                .into_iter()
                .map(|record| convert::execution(record, &[]))
                .collect(),
            next_page_token: page
                .next_before_id
                .as_deref()
                .map(convert::encode_page_token)
                .unwrap_or_default(),
        }))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        let (lookup, mode, reason) =
            convert::cancel_request(request.into_inner()).map_err(to_status)?;
        let (found, _) = self.engine.get(&lookup).await.map_err(to_status)?;
        let record = self
            .engine
            .cancel(&found.id, mode, &reason)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CancelExecutionResponse {
            execution: Some(convert::execution(record, &[])),
        }))
    }

    async fn validate_action(
        &self,
        request: Request<pb::ValidateActionRequest>,
    ) -> Result<Response<pb::ValidateActionResponse>, Status> {
        let req = request.into_inner();
        let prefix = if req.field_prefix.is_empty() {
            "action"
        } else {
            req.field_prefix.as_str()
        };
        self.engine
            .validate_action(req.action.as_ref(), prefix)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ValidateActionResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An update whose event carries `bytes` bytes of error text.
    fn update(tag: u64, bytes: usize) -> pb::ExecuteUpdate {
        pb::ExecuteUpdate {
            tag,
            update: Some(pb::execute_update::Update::Error(pb::CallError {
                code: 2,
                message: "x".repeat(bytes),
            })),
        }
    }

    #[tokio::test]
    async fn responses_gather_what_is_ready_up_to_a_megabyte() {
        let (tx, rx) = mpsc::channel(16);
        for (tag, bytes) in [
            (1, 10),
            (2, 10),
            (3, 700_000),
            (4, 700_000),
            (5, 2_000_000),
            (6, 10),
        ] {
            tx.send(update(tag, bytes)).await.unwrap();
        }
        drop(tx);
        let responses: Vec<Vec<u64>> = batched(rx)
            .map(|r| r.unwrap().updates.iter().map(|u| u.tag).collect())
            .collect()
            .await;
        // Small ones share a response; none passes 1 MiB unless it is alone in it.
        assert_eq!(responses, [vec![1, 2, 3], vec![4], vec![5], vec![6]]);
    }
}
