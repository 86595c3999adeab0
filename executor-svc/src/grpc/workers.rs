//! `almanac.executor.v1.WorkerService` over `engine::tasks::Workers`: each handler
//! validates the request (`worker_convert`), calls one use case, and converts the answer
//! or the error.
//!
//! Workers long-poll rather than hold a server stream: a unary call is trivial to write
//! in any language's gRPC library, passes through proxies and service meshes that cut
//! idle streams, and ties a lease to nothing but its id (a worker that reconnects keeps
//! its lease; a lease never dies with a connection).

use almanac_proto::executor::v1 as pb;
use almanac_proto::executor::v1::worker_service_server::WorkerService;
use almanac_proto::time::ms_to_timestamp;
use tonic::{Request, Response, Status};

use super::status::to_status;
use super::worker_convert as convert;
use crate::engine::tasks::Workers;

/// The gRPC face of the task queues.
#[derive(Debug, Clone)]
pub struct WorkerGrpc {
    workers: Workers,
}

impl WorkerGrpc {
    /// Serves `workers`.
    pub fn new(workers: Workers) -> Self {
        Self { workers }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerGrpc {
    async fn poll_task(
        &self,
        request: Request<pb::PollTaskRequest>,
    ) -> Result<Response<pb::PollTaskResponse>, Status> {
        let poll = convert::poll(request.into_inner()).map_err(to_status)?;
        let task = self
            .workers
            .poll(&poll.worker_id, &poll.queues, poll.wait)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::PollTaskResponse {
            task: task.map(convert::task),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let beat = convert::heartbeat(request.into_inner()).map_err(to_status)?;
        let beat = self
            .workers
            .heartbeat(&beat.task_id, &beat.lease_id, beat.progress)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::HeartbeatResponse {
            lease_expire_time: Some(ms_to_timestamp(beat.lease_expires_ms)),
            cancel_requested: beat.cancel_requested,
        }))
    }

    async fn complete_task(
        &self,
        request: Request<pb::CompleteTaskRequest>,
    ) -> Result<Response<pb::CompleteTaskResponse>, Status> {
        let (task_id, lease_id, result) =
            convert::complete(request.into_inner()).map_err(to_status)?;
        self.workers
            .complete(&task_id, &lease_id, result)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn fail_task(
        &self,
        request: Request<pb::FailTaskRequest>,
    ) -> Result<Response<pb::FailTaskResponse>, Status> {
        let (task_id, lease_id, error, retryable) =
            convert::fail(request.into_inner()).map_err(to_status)?;
        self.workers
            .fail(&task_id, &lease_id, &error, retryable)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::FailTaskResponse {}))
    }
}
