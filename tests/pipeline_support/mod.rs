//! Helpers of the end-to-end pipeline tests: definitions built node by node, storing one
//! through the executor's PipelineService, the `execute_pipeline` action, and a watcher
//! that follows an execution across executor restarts by reconnecting with its last seq.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::pipeline_service_client::PipelineServiceClient;
use almanac_proto::executor::v1::{
    Action, CallApiAction, CreatePipelineRequest, DelayNode, Edge, EdgeWhen, ExecutePipelineAction,
    ExecutionEvent, Node, Pipeline, RetryPolicy, TriggerNode, WatchExecutionRequest, action,
    node::Kind,
};
use almanac_proto::time::ms_to_duration;
use serde_json::Value;

/// A trigger node.
pub fn trigger(id: &str) -> Node {
    node(id, Kind::Trigger(TriggerNode {}))
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

/// A `call_api` GET of `url`, tried once.
pub fn api(id: &str, url: &str) -> Node {
    let mut node = node(
        id,
        Kind::Action(Action {
            kind: Some(action::Kind::CallApi(CallApiAction {
                url: url.into(),
                ..Default::default()
            })),
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

/// An ALWAYS edge.
pub fn edge(from: &str, to: &str) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        when: EdgeWhen::Always as i32,
    }
}

/// A chain `ids[0] → ids[1] → …`.
pub fn chain(ids: &[&str]) -> Vec<Edge> {
    ids.windows(2).map(|w| edge(w[0], w[1])).collect()
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

/// Stores `p` in the executor at `url`.
pub async fn store_pipeline(url: &str, p: Pipeline) -> Pipeline {
    PipelineServiceClient::new(crate::common::channel(url).await)
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

/// The action running the latest version of pipeline `id` with `input` (a JSON object).
pub fn execute_pipeline(id: &str, input: Value) -> Action {
    let input = match almanac_executor::json::json_to_pb(&input).kind {
        Some(pbjson_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    Action {
        kind: Some(action::Kind::ExecutePipeline(ExecutePipelineAction {
            pipeline_id: id.into(),
            version: 0,
            input,
        })),
    }
}

/// What a watcher has seen, shared with the test.
#[derive(Clone, Default)]
pub struct Seen {
    events: Arc<Mutex<Vec<ExecutionEvent>>>,
    /// How many streams it opened.
    pub connections: Arc<Mutex<u32>>,
}

impl Seen {
    /// Every event received, in the order received (duplicates kept).
    pub fn events(&self) -> Vec<ExecutionEvent> {
        self.events.lock().unwrap().clone()
    }

    fn last_seq(&self) -> u64 {
        self.events.lock().unwrap().last().map_or(0, |e| e.seq)
    }

    fn finished(&self) -> bool {
        self.events
            .lock()
            .unwrap()
            .last()
            .is_some_and(|e| matches!(e.kind, Some(EventKind::ExecutionFinished(_))))
    }
}

/// Follows execution `id` at `url` until it finishes: whenever its stream breaks (the
/// executor died), it reconnects with `after_seq` = the last seq it received, for at most
/// `within`. Runs on its own task; the test reads `Seen` and awaits the handle.
pub fn watch_across_restarts(
    url: String,
    id: String,
    within: Duration,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Seen::default();
    let shared = seen.clone();
    let handle = tokio::spawn(async move {
        let deadline = Instant::now() + within;
        while !shared.finished() {
            assert!(
                Instant::now() < deadline,
                "the execution did not finish within {within:?}"
            );
            let Ok(channel) = tonic::transport::Endpoint::from_shared(url.clone())
                .expect("endpoint")
                .connect()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let request = WatchExecutionRequest {
                execution_id: id.clone(),
                after_seq: shared.last_seq(),
            };
            let Ok(response) = ExecutorServiceClient::new(channel)
                .watch_execution(request)
                .await
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            *shared.connections.lock().unwrap() += 1;
            let mut stream = response.into_inner();
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, stream.message()).await {
                    Ok(Ok(Some(message))) => {
                        let event = message.event.expect("a response carries an event");
                        shared.events.lock().unwrap().push(event);
                    }
                    // The end of the stream, or the executor went away: reconnect.
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                    Err(_) => panic!("the execution did not finish within {within:?}"),
                }
            }
        }
    });
    (seen, handle)
}
