//! Helpers of the pipeline tests: builders for pipeline definitions, running one through
//! the real `Execute` API and reading its node table back, and a scripted loopback HTTP
//! target (per-path reply sequences, a rendezvous barrier, held requests the test
//! releases, a gate that waits for another path) that records what it receives.
#![allow(dead_code)]

pub mod target;

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::pipeline_service_client::PipelineServiceClient;
use almanac_proto::executor::v1::{
    Action, CallApiAction, CircuitBreaker, ConditionNode, CreatePipelineRequest, DelayNode, Edge,
    EdgeWhen, ExecutePipelineAction, ExecuteRequest, Execution, ExecutionEvent, ExecutionStatus,
    GetExecutionRequest, Join, Node, NodeRun, NodeStatus, ParallelNode, Pipeline, RetryPolicy,
    TriggerNode, action, node::Kind,
};
use almanac_proto::time::{ms_to_duration, timestamp_to_ms};
use serde_json::Value;
use tonic::transport::Channel;

use crate::common::{Executor, execute_all};

#[allow(unused_imports)]
pub use target::{Reply, Scripted};

/// A trigger node.
pub fn trigger(id: &str) -> Node {
    node(id, Kind::Trigger(TriggerNode {}))
}

/// A fan-out marker.
pub fn parallel(id: &str) -> Node {
    node(id, Kind::Parallel(ParallelNode {}))
}

/// A condition node.
pub fn condition(id: &str, expression: &str) -> Node {
    node(
        id,
        Kind::Condition(ConditionNode {
            expression: expression.into(),
        }),
    )
}

/// A delay node.
pub fn delay(id: &str, ms: i64) -> Node {
    node(
        id,
        Kind::Delay(DelayNode {
            duration: Some(ms_to_duration(ms)),
        }),
    )
}

/// A `call_api` GET of `url`, tried once (no retry) unless the test sets `retry`.
pub fn api(id: &str, url: &str) -> Node {
    api_with(
        id,
        CallApiAction {
            url: url.into(),
            ..Default::default()
        },
    )
}

/// A `call_api` node with exactly this action, tried once unless the test sets `retry`.
pub fn api_with(id: &str, call: CallApiAction) -> Node {
    let mut node = node(
        id,
        Kind::Action(Action {
            kind: Some(action::Kind::CallApi(call)),
        }),
    );
    node.retry = Some(RetryPolicy {
        max_attempts: 1,
        ..Default::default()
    });
    node
}

fn node(id: &str, kind: Kind) -> Node {
    Node {
        id: id.into(),
        kind: Some(kind),
        ..Default::default()
    }
}

/// A retry policy of `tries` tries with short waits (50 ms, doubling, at most 200 ms).
pub fn fast_retry(tries: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: tries,
        initial_backoff: Some(ms_to_duration(50)),
        max_backoff: Some(ms_to_duration(200)),
        multiplier: 2.0,
    }
}

/// `node` with this retry policy.
pub fn retrying(mut node: Node, tries: u32) -> Node {
    node.retry = Some(fast_retry(tries));
    node
}

/// `node` joining ALL its incoming edges.
pub fn join_all(mut node: Node) -> Node {
    node.join = Join::All as i32;
    node
}

/// `node` with a time allowed to each attempt.
pub fn timed(mut node: Node, ms: i64) -> Node {
    node.timeout = Some(ms_to_duration(ms));
    node
}

/// `node` with a circuit breaker.
pub fn breaker(mut node: Node, threshold: u32, cool_down_ms: i64) -> Node {
    node.circuit_breaker = Some(CircuitBreaker {
        failure_threshold: threshold,
        cool_down: Some(ms_to_duration(cool_down_ms)),
    });
    node
}

/// An ALWAYS edge.
pub fn edge(from: &str, to: &str) -> Edge {
    edge_when(from, to, EdgeWhen::Always)
}

/// An edge taken `when`.
pub fn edge_when(from: &str, to: &str, when: EdgeWhen) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        when: when as i32,
    }
}

/// A pipeline of these nodes and edges.
pub fn pipeline(id: &str, nodes: Vec<Node>, edges: Vec<Edge>) -> Pipeline {
    Pipeline {
        id: id.into(),
        nodes,
        edges,
        ..Default::default()
    }
}

/// A client of the executor's PipelineService.
pub async fn pipelines(executor: &Executor) -> PipelineServiceClient<Channel> {
    PipelineServiceClient::new(executor.channel().await)
}

/// Stores `p` (version 1) and returns it as stored.
pub async fn create(executor: &Executor, p: Pipeline) -> Pipeline {
    pipelines(executor)
        .await
        .create_pipeline(CreatePipelineRequest {
            pipeline_id: p.id.clone(),
            pipeline: Some(p),
        })
        .await
        .expect("create pipeline")
        .into_inner()
        .pipeline
        .expect("a pipeline")
}

/// An `Execute` request running the latest version of pipeline `id` with `input`.
pub fn run_request(key: &str, id: &str, input: Value) -> ExecuteRequest {
    let input = match almanac_executor::json::json_to_pb(&input).kind {
        Some(pbjson_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    ExecuteRequest {
        idempotency_key: key.into(),
        action: Some(Action {
            kind: Some(action::Kind::ExecutePipeline(ExecutePipelineAction {
                pipeline_id: id.into(),
                version: 0,
                input,
            })),
        }),
        ..Default::default()
    }
}

/// Runs pipeline `id` under `key` with `input`; every event, to the end.
pub async fn run(executor: &Executor, key: &str, id: &str, input: Value) -> Vec<ExecutionEvent> {
    let mut client = executor.client().await;
    execute_all(&mut client, run_request(key, id, input)).await
}

/// The execution stored under `key`, with its node table.
pub async fn execution(executor: &Executor, key: &str) -> Execution {
    executor
        .client()
        .await
        .get_execution(GetExecutionRequest {
            idempotency_key: key.into(),
            ..Default::default()
        })
        .await
        .expect("get execution")
        .into_inner()
        .execution
        .expect("an execution")
}

/// The status of an execution.
pub fn status(execution: &Execution) -> ExecutionStatus {
    ExecutionStatus::try_from(execution.status).expect("a known status")
}

/// The rows of one node, by attempt.
pub fn rows<'a>(execution: &'a Execution, node: &str) -> Vec<&'a NodeRun> {
    let mut rows: Vec<&NodeRun> = execution
        .nodes
        .iter()
        .filter(|r| r.node_id == node)
        .collect();
    rows.sort_by_key(|r| r.attempt);
    rows
}

/// The status of each row of one node, by attempt.
pub fn row_statuses(execution: &Execution, node: &str) -> Vec<NodeStatus> {
    rows(execution, node)
        .into_iter()
        .map(|r| NodeStatus::try_from(r.status).expect("a known node status"))
        .collect()
}

/// The node ids named by events of one kind, in order ("NodeStarted", "NodeSkipped", ...).
pub fn nodes_of(events: &[ExecutionEvent], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match (kind, e.kind.as_ref()?) {
            ("NodeStarted", EventKind::NodeStarted(n)) => Some(n.node_id.clone()),
            ("NodeSucceeded", EventKind::NodeSucceeded(n)) => Some(n.node_id.clone()),
            ("NodeFailed", EventKind::NodeFailed(n)) => Some(n.node_id.clone()),
            ("NodeRetrying", EventKind::NodeRetrying(n)) => Some(n.node_id.clone()),
            ("NodeSkipped", EventKind::NodeSkipped(n)) => Some(n.node_id.clone()),
            _ => None,
        })
        .collect()
}

/// The time (ms) of the event that says `node` succeeded.
pub fn succeeded_at(events: &[ExecutionEvent], node: &str) -> i64 {
    events
        .iter()
        .find_map(|e| match e.kind.as_ref()? {
            EventKind::NodeSucceeded(n) if n.node_id == node => {
                Some(timestamp_to_ms(e.time.as_ref()?))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no NodeSucceeded for {node}"))
}

/// The result of a finished execution as JSON.
pub fn result(execution: &Execution) -> Value {
    execution
        .result
        .as_ref()
        .map(crate::common::json)
        .unwrap_or(Value::Null)
}

/// The position in `events` of the first event of `kind` about `node`.
pub fn event_index(events: &[ExecutionEvent], kind: &str, node: &str) -> usize {
    events
        .iter()
        .position(|e| {
            nodes_of(std::slice::from_ref(e), kind)
                .first()
                .is_some_and(|n| n == node)
        })
        .unwrap_or_else(|| panic!("no {kind} event for {node}"))
}
