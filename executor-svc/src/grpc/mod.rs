//! The gRPC layer: handlers that convert messages and map errors, nothing else.
//! `executor` implements `ExecutorService`; `convert` maps messages and validates
//! requests; `status` maps `ExecutorError` to `tonic::Status`.

pub mod convert;
pub mod executor;
pub mod status;

pub use executor::ExecutorGrpc;
