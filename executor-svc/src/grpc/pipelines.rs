//! `almanac.executor.v1.PipelineService` over the engine: convert, call, convert back.

use std::sync::Arc;

use almanac_proto::executor::v1 as pb;
use almanac_proto::executor::v1::pipeline_service_server::PipelineService;
use tonic::{Request, Response, Status};

use super::status::to_status;
use crate::engine::Engine;
use crate::error::ExecutorError;

/// The gRPC face of the pipeline use cases.
#[derive(Debug, Clone)]
pub struct PipelineGrpc {
    engine: Arc<Engine>,
}

impl PipelineGrpc {
    /// Serves `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| to_status(ExecutorError::invalid(field, "required")))
}

#[tonic::async_trait]
impl PipelineService for PipelineGrpc {
    async fn create_pipeline(
        &self,
        request: Request<pb::CreatePipelineRequest>,
    ) -> Result<Response<pb::CreatePipelineResponse>, Status> {
        let req = request.into_inner();
        let pipeline = required(req.pipeline, "pipeline")?;
        let stored = self
            .engine
            .create_pipeline(req.pipeline_id, pipeline)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CreatePipelineResponse {
            pipeline: Some(stored),
        }))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::GetPipelineResponse>, Status> {
        let req = request.into_inner();
        if req.pipeline_id.is_empty() {
            return Err(to_status(ExecutorError::invalid("pipeline_id", "required")));
        }
        let pipeline = self
            .engine
            .get_pipeline(&req.pipeline_id, req.version)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetPipelineResponse {
            pipeline: Some(pipeline),
        }))
    }

    async fn list_pipelines(
        &self,
        request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let req = request.into_inner();
        let (pipelines, next) = self
            .engine
            .list_pipelines(req.page_size, &req.page_token)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListPipelinesResponse {
            pipelines,
            next_page_token: next,
        }))
    }

    async fn update_pipeline(
        &self,
        request: Request<pb::UpdatePipelineRequest>,
    ) -> Result<Response<pb::UpdatePipelineResponse>, Status> {
        let req = request.into_inner();
        let pipeline = required(req.pipeline, "pipeline")?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let stored = self
            .engine
            .update_pipeline(pipeline, &mask, req.expected_version)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UpdatePipelineResponse {
            pipeline: Some(stored),
        }))
    }

    async fn delete_pipeline(
        &self,
        request: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::DeletePipelineResponse>, Status> {
        let req = request.into_inner();
        if req.pipeline_id.is_empty() {
            return Err(to_status(ExecutorError::invalid("pipeline_id", "required")));
        }
        self.engine
            .delete_pipeline(&req.pipeline_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeletePipelineResponse {}))
    }

    async fn validate_pipeline(
        &self,
        request: Request<pb::ValidatePipelineRequest>,
    ) -> Result<Response<pb::ValidatePipelineResponse>, Status> {
        let pipeline = required(request.into_inner().pipeline, "pipeline")?;
        let (invalid, refused) = self.engine.pipeline_problems(&pipeline);
        Ok(Response::new(pb::ValidatePipelineResponse {
            problems: invalid
                .into_iter()
                .chain(refused)
                .map(|v| pb::PipelineProblem {
                    field: v.field,
                    description: v.description,
                })
                .collect(),
        }))
    }
}
