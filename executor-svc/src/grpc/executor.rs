//! `almanac.executor.v1.ExecutorService` over the engine: each handler converts the
//! request, calls one engine use case, and converts the answer or the error.

use std::pin::Pin;
use std::sync::Arc;

use almanac_proto::executor::v1 as pb;
use almanac_proto::executor::v1::executor_service_server::ExecutorService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert;
use super::status::to_status;
use crate::engine::{Engine, EventStream};

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

#[tonic::async_trait]
impl ExecutorService for ExecutorGrpc {
    type ExecuteStream = ResponseStream<pb::ExecuteResponse>;
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
