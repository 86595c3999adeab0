//! What an execution runs, as a graph: a single action is the one-node graph `action`; a
//! pipeline execution is the pipeline version it started with. Each node carries what
//! its runner needs: its work, its retry policy, its timeout and its circuit breaker.

use almanac_proto::action::kind_name;
use almanac_proto::executor::v1::{Action, Node, Pipeline, action, node::Kind};
use almanac_proto::time::duration_to_ms;
use serde_json::Value;

use crate::actions::retry::Backoff;
use crate::pipeline::graph::Graph;

/// The node id of a single-action execution.
pub const SINGLE_ACTION_NODE: &str = "action";
/// How many nodes of one execution run at once when the pipeline does not say.
pub const DEFAULT_MAX_PARALLELISM: usize = 8;
/// The cool-down of a circuit breaker that does not say.
pub const DEFAULT_COOL_DOWN_MS: i64 = 60_000;

/// What a node does.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Passes the execution's input on (its output).
    Trigger,
    /// A fan-out marker: passes the execution's input on.
    Parallel,
    /// A CEL expression whose bool picks edges.
    Condition(String),
    /// Waits this long (from its first attempt; the deadline is stored).
    Delay(i64),
    /// An action handler.
    Action(Box<action::Kind>),
}

/// One node, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanNode {
    /// Unique in the execution.
    pub id: String,
    /// For the node table: "trigger", "condition", "parallel", "delay" or the action kind.
    pub kind: &'static str,
    /// What it does.
    pub work: Work,
    /// Its retry policy.
    pub backoff: Backoff,
    /// The time allowed to one attempt.
    pub timeout_ms: Option<i64>,
    /// (threshold, cool-down) of its circuit breaker.
    pub breaker: Option<(u32, i64)>,
}

/// The graph an execution runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The nodes, by index as in `graph`.
    pub nodes: Vec<PlanNode>,
    /// Edges, joins, order.
    pub graph: Graph,
    /// The pipeline (for breaker state), none for a single action.
    pub pipeline_id: Option<String>,
    /// The execution's input.
    pub input: Value,
    /// Nodes of this execution running at once, at most.
    pub max_parallelism: usize,
    /// The pipeline's whole-execution timeout.
    pub timeout_ms: Option<i64>,
    /// A single action: its key has no node suffix and its result is the node's output.
    pub single: bool,
}

impl Plan {
    /// The plan of an execution: its action, and for `execute_pipeline` the pipeline
    /// version it started with.
    pub fn for_execution(action: &Action, pipeline: Option<&Pipeline>) -> Result<Self, String> {
        let kind = action
            .kind
            .as_ref()
            .ok_or_else(|| "the execution has no action".to_owned())?;
        match (kind, pipeline) {
            (action::Kind::ExecutePipeline(run), Some(p)) => {
                let input = run
                    .input
                    .as_ref()
                    .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
                    .unwrap_or_else(|| Value::Object(Default::default()));
                Ok(Self::for_pipeline(p, input))
            }
            (action::Kind::ExecutePipeline(run), None) => Err(format!(
                "the execution has no stored definition of pipeline {:?}",
                run.pipeline_id
            )),
            (kind, _) => Ok(Self {
                nodes: vec![PlanNode {
                    id: SINGLE_ACTION_NODE.to_owned(),
                    kind: kind_name(kind),
                    work: Work::Action(Box::new(kind.clone())),
                    backoff: Backoff::for_action(kind),
                    timeout_ms: None,
                    breaker: None,
                }],
                graph: Graph::single(SINGLE_ACTION_NODE),
                pipeline_id: None,
                input: Value::Null,
                max_parallelism: 1,
                timeout_ms: None,
                single: true,
            }),
        }
    }

    fn for_pipeline(p: &Pipeline, input: Value) -> Self {
        let nodes = p.nodes.iter().map(|n| plan_node(p, n)).collect();
        Self {
            nodes,
            graph: Graph::new(p),
            pipeline_id: Some(p.id.clone()),
            input,
            max_parallelism: match p.max_parallelism {
                0 => DEFAULT_MAX_PARALLELISM,
                n => n as usize,
            },
            timeout_ms: p
                .timeout
                .as_ref()
                .and_then(duration_to_ms)
                .filter(|&ms| ms > 0),
            single: false,
        }
    }
}

fn plan_node(p: &Pipeline, n: &Node) -> PlanNode {
    let no_retry = Backoff {
        max_attempts: 1,
        ..Backoff::default()
    };
    let retry_of = |own: Option<&almanac_proto::executor::v1::RetryPolicy>| {
        Backoff::from_policy(n.retry.as_ref().or(own).or(p.default_retry.as_ref()))
    };
    let (kind, work, backoff) = match &n.kind {
        Some(Kind::Trigger(_)) | None => ("trigger", Work::Trigger, no_retry),
        Some(Kind::Parallel(_)) => ("parallel", Work::Parallel, no_retry),
        Some(Kind::Condition(c)) => ("condition", Work::Condition(c.expression.clone()), no_retry),
        Some(Kind::Delay(d)) => (
            "delay",
            Work::Delay(d.duration.as_ref().and_then(duration_to_ms).unwrap_or(0)),
            no_retry,
        ),
        Some(Kind::Task(task)) => (
            "run_task",
            Work::Action(Box::new(action::Kind::RunTask(task.clone()))),
            retry_of(task.retry.as_ref()),
        ),
        Some(Kind::Action(a)) => match &a.kind {
            Some(kind) => {
                let own = match kind {
                    action::Kind::CallApi(c) => c.retry.as_ref(),
                    action::Kind::SendNotification(s) => s.retry.as_ref(),
                    action::Kind::RunTask(t) => t.retry.as_ref(),
                    action::Kind::ExecutePipeline(_) => None,
                };
                (
                    kind_name(kind),
                    Work::Action(Box::new(kind.clone())),
                    retry_of(own),
                )
            }
            None => ("action", Work::Trigger, no_retry),
        },
    };
    PlanNode {
        id: n.id.clone(),
        kind,
        work,
        backoff,
        timeout_ms: n
            .timeout
            .as_ref()
            .and_then(duration_to_ms)
            .filter(|&ms| ms > 0),
        breaker: n
            .circuit_breaker
            .as_ref()
            .filter(|b| b.failure_threshold > 0)
            .map(|b| {
                let cool_down = b
                    .cool_down
                    .as_ref()
                    .and_then(duration_to_ms)
                    .filter(|&ms| ms > 0)
                    .unwrap_or(DEFAULT_COOL_DOWN_MS);
                (b.failure_threshold, cool_down)
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::CallApiAction;

    #[test]
    fn a_single_action_is_the_one_node_action() {
        let action = Action {
            kind: Some(action::Kind::CallApi(CallApiAction::default())),
        };
        let plan = Plan::for_execution(&action, None).unwrap();
        assert_eq!(plan.nodes.len(), 1);
        assert_eq!(plan.nodes[0].id, "action");
        assert_eq!(plan.nodes[0].kind, "call_api");
        assert!(plan.single);
        assert!(Plan::for_execution(&Action { kind: None }, None).is_err());
    }
}
