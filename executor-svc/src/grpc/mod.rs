//! The gRPC layer: handlers that convert messages and map errors, nothing else.
//! `executor` implements `ExecutorService`; `convert` maps messages and validates
//! requests; `pipelines` implements `PipelineService`; `workers` implements
//! `WorkerService` (with `worker_convert`); `status` maps
//! `ExecutorError` to `tonic::Status`.

pub mod convert;
pub mod executor;
pub mod pipelines;
pub mod status;
pub mod worker_convert;
pub mod workers;

pub use executor::ExecutorGrpc;
pub use pipelines::PipelineGrpc;
pub use workers::WorkerGrpc;
