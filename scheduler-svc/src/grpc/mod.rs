//! The gRPC layer: handlers that convert messages and map errors, and the client of the
//! executor. The only place tonic types appear.

pub mod balance;
pub mod convert;
pub mod executor_client;
pub mod service;
pub mod status;
