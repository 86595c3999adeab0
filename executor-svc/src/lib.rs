//! Almanac's executor service: it stores executions under unique idempotency keys, runs
//! their actions (every execution a graph; a single action is the node `action`), records
//! every step as a dense, durable event log, and streams it to whoever watches.
//!
//! `server::run` wires everything; `engine` holds the use cases, `actions` the dispatch
//! table, `store` the persistence trait and its SQLite and PostgreSQL backends, `grpc` the
//! wire.

pub mod actions;
pub mod config;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod json;
pub mod model;
pub mod pipeline;
pub mod secrets;
pub mod server;
pub mod standalone;
pub mod store;

pub use config::Config;
pub use error::{ExecutorError, ServerError};
