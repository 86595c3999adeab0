//! What the store keeps for pipelines: versioned definitions and the circuit breakers of
//! their nodes. `PipelineStore` is a part of `ExecutorStore` (a supertrait); each method
//! is one transaction.

use almanac_proto::executor::v1::Pipeline;
use async_trait::async_trait;

use crate::error::ExecutorError;

/// The state of one node's circuit breaker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breaker {
    /// Failed executions of the node in a row.
    pub consecutive_failures: u32,
    /// When it last opened, while it is open or half-open.
    pub opened_ms: Option<i64>,
}

/// Pipelines and breakers.
#[async_trait]
pub trait PipelineStore: Send + Sync {
    /// Stores `pipeline` (its id set) as a new version and returns it with its version
    /// and create time: version 1 when `create` (`AlreadyExists` if the id has versions),
    /// else the latest plus one (`NotFound` without one; `Aborted` when
    /// `expected_latest` is given and is not the latest).
    async fn put_pipeline(
        &self,
        pipeline: &Pipeline,
        create: bool,
        expected_latest: Option<i64>,
        now_ms: i64,
    ) -> Result<Pipeline, ExecutorError>;

    /// One version, or the latest with `None`.
    async fn get_pipeline(
        &self,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<Pipeline>, ExecutorError>;

    /// Latest versions by id after `after_id`, at most `limit`.
    async fn list_pipelines(
        &self,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Pipeline>, ExecutorError>;

    /// Deletes every version; whether there was one.
    async fn delete_pipeline(&self, id: &str) -> Result<bool, ExecutorError>;

    /// A node's breaker (closed and clean when never recorded).
    async fn breaker(&self, pipeline_id: &str, node_id: &str) -> Result<Breaker, ExecutorError>;

    /// Records how a node ended in one execution: a success closes the breaker; a
    /// failure counts, and (re)opens it at `now_ms` when `threshold` is reached.
    async fn record_breaker(
        &self,
        pipeline_id: &str,
        node_id: &str,
        failed: bool,
        threshold: u32,
        now_ms: i64,
    ) -> Result<Breaker, ExecutorError>;
}
