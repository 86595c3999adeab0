//! The runner's book of an execution's nodes: what the store says happened to each node
//! (a crash-resume starts from it) and what the runner learns as nodes end, and where a
//! node starts from, with the scope its templates and CEL see.

use serde_json::{Value, json};

use super::node::NodeStart;
use super::plan::Plan;
use crate::model::{ExecutionRecord, NodeRunRecord, NodeStatus};
use crate::pipeline::graph::State;

/// What the store says about each node, and what the runner learns as nodes end.
pub(super) struct Book {
    pub states: Vec<State>,
    pub next_attempt: Vec<u32>,
    pub tries_used: Vec<u32>,
    pub outputs: Vec<Option<Value>>,
    pub errors: Vec<Option<String>>,
    /// Whether a failed node's last failure was retryable (it fails the execution so).
    pub retryable: Vec<bool>,
    pub delay_until: Vec<Option<i64>>,
}

impl Book {
    /// The nodes' states as committed: SUCCEEDED, SKIPPED or CANCELLED nodes are done; a
    /// node whose last attempt failed is done unless its retry policy has tries left; a
    /// node whose last attempt was cut short runs again.
    pub fn from_runs(plan: &Plan, runs: &[NodeRunRecord]) -> Self {
        let n = plan.nodes.len();
        let mut book = Self {
            states: vec![State::Pending; n],
            next_attempt: vec![1; n],
            tries_used: vec![0; n],
            outputs: vec![None; n],
            errors: vec![None; n],
            retryable: vec![false; n],
            delay_until: vec![None; n],
        };
        for (i, node) in plan.nodes.iter().enumerate() {
            let rows: Vec<&NodeRunRecord> = runs.iter().filter(|r| r.node_id == node.id).collect();
            let Some(last) = rows.iter().max_by_key(|r| r.attempt) else {
                continue;
            };
            book.next_attempt[i] = last.attempt + 1;
            book.tries_used[i] = rows
                .iter()
                .filter(|r| matches!(r.status, NodeStatus::Failed | NodeStatus::TimedOut))
                .count() as u32;
            book.delay_until[i] = rows
                .iter()
                .find_map(|r| r.input.as_ref()?.get("until_ms")?.as_i64());
            if let Some(done) = rows.iter().find(|r| r.status == NodeStatus::Succeeded) {
                let output = done.output.clone().unwrap_or(Value::Null);
                book.states[i] =
                    State::Succeeded(output.as_bool().filter(|_| node.kind == "condition"));
                book.outputs[i] = Some(output);
                continue;
            }
            book.states[i] = match last.status {
                NodeStatus::Skipped => State::Skipped,
                NodeStatus::Cancelled if last.attempt == 0 => State::Cancelled,
                NodeStatus::Failed | NodeStatus::TimedOut => {
                    book.errors[i] = Some(last.error.clone());
                    book.retryable[i] = last.retryable;
                    let tries_left = node.backoff.max_attempts > book.tries_used[i];
                    if last.retryable && tries_left {
                        State::Pending
                    } else {
                        State::Failed
                    }
                }
                _ => State::Pending,
            };
        }
        book
    }

    /// Where a node starts, with the scope its templates and CEL see: the execution's
    /// input, its finished ancestors and the execution.
    pub fn start(&self, i: usize, plan: &Plan, record: &ExecutionRecord) -> NodeStart {
        let mut nodes = serde_json::Map::new();
        for a in plan.graph.ancestors(i) {
            if self.states[a].is_final() {
                nodes.insert(
                    plan.nodes[a].id.clone(),
                    json!({
                        "status": state_name(self.states[a]),
                        "output": self.outputs[a].clone().unwrap_or(Value::Null),
                        "error": self.errors[a].clone().unwrap_or_default(),
                    }),
                );
            }
        }
        let origin = record.origin.clone().unwrap_or_default();
        let scope = json!({
            "input": plan.input,
            "nodes": nodes,
            "execution": {
                "id": record.id,
                "key": record.idempotency_key,
                "schedule_id": origin.schedule_id,
                "run_id": origin.run_id,
                "nominal_time": origin.nominal_time.as_ref()
                    .map(|t| almanac_proto::time::ms_to_rfc3339(almanac_proto::time::timestamp_to_ms(t)))
                    .unwrap_or_default(),
                "attempt": origin.attempt,
            },
        });
        NodeStart {
            index: i,
            attempt: self.next_attempt[i],
            try_number: self.tries_used[i] + 1,
            delay_until: self.delay_until[i],
            scope,
            begun: None,
        }
    }
}

fn state_name(state: State) -> &'static str {
    match state {
        State::Pending => "PENDING",
        State::Running => "RUNNING",
        State::Succeeded(_) => "SUCCEEDED",
        State::Failed => "FAILED",
        State::Skipped => "SKIPPED",
        State::Cancelled => "CANCELLED",
    }
}
