//! One node of an execution, from its next attempt to its end: the circuit breaker, the
//! attempts and the retries between them (NodeRetrying), each attempt's timeout, and the
//! work of each kind — an action handler with its templates rendered, a CEL condition, a
//! delay whose deadline is stored, a trigger or a fan-out marker passing the input on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use almanac_proto::executor::v1::Action;
use almanac_proto::time::ms_to_rfc3339;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::book::Book;
use super::plan::{Plan, PlanNode, Work};
use super::runner::Stop;
use super::{Engine, Live};
use crate::actions::templates::{self, RunContext};
use crate::actions::{ActionContext, ActionError};
use crate::model::{ExecutionRecord, FirstNode, NodeStatus, Transition};
use crate::pipeline::cel;

/// Where a node starts (or resumes).
#[derive(Debug, Clone)]
pub(super) struct NodeStart {
    pub index: usize,
    /// The next attempt's number.
    pub attempt: u32,
    /// The next try of the retry policy (attempts cut short by a crash use none).
    pub try_number: u32,
    /// A delay node's deadline, stored by an earlier attempt.
    pub delay_until: Option<i64>,
    /// What templates and CEL see: `input`, `nodes` (finished ancestors), `execution`.
    pub scope: Value,
    /// The attempt, begun with the execution (a fresh single action's first).
    pub begun: Option<Begun>,
}

/// A fresh single action's first attempt, begun as its execution was created: its
/// `NodeStarted` (at `started_ms`) was stored with the execution, recording `kind`, the
/// action rendered then, as the node's input.
#[derive(Debug, Clone)]
pub(super) struct Begun {
    pub started_ms: i64,
    pub kind: Box<almanac_proto::executor::v1::action::Kind>,
}

/// Begins the first attempt of a new single action, to be stored with its execution:
/// the node's input (the action rendered for this execution) and what its runner needs to
/// go on from there. `None` (the runner begins the attempt itself) for a pipeline, or an
/// action whose templates do not render (the runner records that failure).
pub(super) fn begin_first(record: &ExecutionRecord) -> Option<(FirstNode, Begun)> {
    let plan = Plan::for_execution(&record.action, None).ok()?;
    let node = plan.nodes.first().filter(|_| plan.single)?;
    let Work::Action(kind) = &node.work else {
        return None;
    };
    let scope = Book::from_runs(&plan, &[]).start(0, &plan, record).scope;
    let rendered = render(record, kind, &scope).ok()?;
    let input = serde_json::to_value(Action {
        kind: Some(rendered.clone()),
    })
    .ok()?;
    let first = FirstNode {
        node_id: node.id.clone(),
        kind: node.kind.to_owned(),
        input,
    };
    let begun = Begun {
        started_ms: record.created_ms,
        kind: Box::new(rendered),
    };
    Some((first, begun))
}

/// How a node ended.
#[derive(Debug)]
pub(super) enum NodeEnd {
    Succeeded(Value),
    /// Failed after its retries.
    Failed(ActionError),
    /// Stopped: terminated, a sibling failed, or a graceful cancel stopped its retries.
    Cancelled,
    /// The execution's deadline passed.
    TimedOut,
}

/// How one attempt ended.
enum Outcome {
    Succeeded(Value),
    Failed(ActionError),
    Cancelled,
    TimedOut,
}

/// What every node of one execution shares.
pub(super) struct Shared<'a> {
    pub engine: &'a Arc<Engine>,
    pub record: &'a ExecutionRecord,
    pub plan: &'a Plan,
    pub live: &'a Live,
    /// Cancelled when a sibling fails or the execution is terminated.
    pub stop: &'a CancellationToken,
    /// The execution's effective deadline.
    pub deadline_ms: Option<i64>,
}

impl Shared<'_> {
    fn now(&self) -> i64 {
        self.engine.clock.now_ms()
    }

    fn deadline_passed(&self) -> bool {
        self.deadline_ms.is_some_and(|d| self.now() >= d)
    }

    /// Resolves when the deadline passes (never without one).
    fn until_deadline(&self) -> impl Future<Output = ()> + use<> {
        let wait = self
            .deadline_ms
            .map(|d| Duration::from_millis((d - self.now()).max(0) as u64));
        async move {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        }
    }

    /// The Idempotency-Key of a node: the execution key, plus `/{node}` in a pipeline.
    fn node_key(&self, node: &PlanNode) -> String {
        if self.plan.single {
            self.record.idempotency_key.clone()
        } else {
            format!("{}/{}", self.record.idempotency_key, node.id)
        }
    }
}

/// Runs a node to its end.
pub(super) async fn run_to_end(
    s: &Shared<'_>,
    mut start: NodeStart,
) -> Result<(usize, NodeEnd), Stop> {
    let i = start.index;
    let node = &s.plan.nodes[i];
    let half_open = match breaker_state(s, node).await? {
        BreakerState::Open(refusal) => {
            let attempt = start.attempt;
            append_started(s, node, attempt, Value::Null).await?;
            append_failed(s, node, attempt, NodeStatus::Failed, &refusal).await?;
            return Ok((i, NodeEnd::Failed(refusal)));
        }
        BreakerState::HalfOpen => true,
        BreakerState::Closed => false,
    };
    let mut begun = start.begun.take();
    loop {
        let attempt = start.attempt;
        match attempt_once(s, node, &start, begun.take()).await? {
            Outcome::Succeeded(output) => {
                record_breaker(s, node, false).await?;
                return Ok((i, NodeEnd::Succeeded(output)));
            }
            Outcome::Cancelled => return Ok((i, NodeEnd::Cancelled)),
            Outcome::TimedOut => return Ok((i, NodeEnd::TimedOut)),
            Outcome::Failed(error) => {
                if s.live.stop_new.is_cancelled() {
                    // A graceful cancel lets the attempt end and starts no new one.
                    return Ok((i, NodeEnd::Cancelled));
                }
                // A half-open breaker lets one attempt through: no retry after it.
                let delay = (error.retryable && !half_open)
                    .then(|| {
                        node.backoff
                            .delay_before(start.try_number + 1, error.retry_after_ms)
                    })
                    .flatten()
                    .filter(|&d| s.deadline_ms.is_none_or(|dl| (s.now() + d as i64) < dl));
                let Some(delay) = delay else {
                    record_breaker(s, node, true).await?;
                    let error = if start.try_number > 1 {
                        ActionError {
                            message: format!(
                                "failed after {} tries: {}",
                                start.try_number, error.message
                            ),
                            ..error
                        }
                    } else {
                        error
                    };
                    return Ok((i, NodeEnd::Failed(error)));
                };
                start.attempt = attempt + 1;
                start.try_number += 1;
                let retrying = Transition::NodeRetrying {
                    node_id: node.id.clone(),
                    attempt: start.attempt,
                    backoff_ms: delay as i64,
                };
                s.engine.write(s.live, &s.record.id, retrying).await?;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(delay)) => {}
                    () = s.live.stop_new.cancelled() => return Ok((i, NodeEnd::Cancelled)),
                    () = s.stop.cancelled() => return Ok((i, NodeEnd::Cancelled)),
                    () = s.until_deadline() => return Ok((i, NodeEnd::TimedOut)),
                    () = s.engine.shutdown.cancelled() => return Err(Stop::Shutdown),
                }
            }
        }
    }
}

/// Where a node's circuit breaker stands as the node starts.
enum BreakerState {
    /// No breaker, or below its threshold: the node runs with its retries.
    Closed,
    /// Open past its cool-down: one attempt goes through, without retries.
    HalfOpen,
    /// Open: fail fast with this error, run nothing.
    Open(ActionError),
}

async fn breaker_state(s: &Shared<'_>, node: &PlanNode) -> Result<BreakerState, Stop> {
    let (Some(pipeline), Some((threshold, cool_down_ms))) = (&s.plan.pipeline_id, node.breaker)
    else {
        return Ok(BreakerState::Closed);
    };
    let breaker = s.engine.store.breaker(pipeline, &node.id).await?;
    Ok(match breaker.opened_ms {
        Some(opened) if breaker.consecutive_failures >= threshold => {
            if s.now() < opened + cool_down_ms {
                BreakerState::Open(ActionError::permanent(format!(
                    "circuit breaker open: {} consecutive failures of node {}; it half-opens at {}",
                    breaker.consecutive_failures,
                    node.id,
                    ms_to_rfc3339(opened + cool_down_ms)
                )))
            } else {
                BreakerState::HalfOpen
            }
        }
        _ => BreakerState::Closed,
    })
}

/// Records how a node ended in this execution, for its circuit breaker.
async fn record_breaker(s: &Shared<'_>, node: &PlanNode, failed: bool) -> Result<(), Stop> {
    if let (Some(pipeline), Some((threshold, _))) = (&s.plan.pipeline_id, node.breaker) {
        s.engine
            .store
            .record_breaker(pipeline, &node.id, failed, threshold, s.now())
            .await?;
    }
    Ok(())
}

async fn append_started(
    s: &Shared<'_>,
    node: &PlanNode,
    attempt: u32,
    input: Value,
) -> Result<i64, Stop> {
    let started = s
        .engine
        .write(
            s.live,
            &s.record.id,
            Transition::NodeStarted {
                node_id: node.id.clone(),
                kind: node.kind.to_owned(),
                attempt,
                input,
            },
        )
        .await?;
    tracing::debug!(execution_id = %s.record.id, node_id = %node.id, attempt, kind = node.kind, "node started");
    Ok(started.at_ms)
}

async fn append_failed(
    s: &Shared<'_>,
    node: &PlanNode,
    attempt: u32,
    status: NodeStatus,
    error: &ActionError,
) -> Result<(), Stop> {
    let failed = Transition::NodeFailed {
        node_id: node.id.clone(),
        attempt,
        status,
        error: error.message.clone(),
        retryable: error.retryable,
    };
    s.engine.write(s.live, &s.record.id, failed).await?;
    Ok(())
}

/// The action of a node with its templates rendered for this execution and this scope.
fn render(
    record: &ExecutionRecord,
    kind: &almanac_proto::executor::v1::action::Kind,
    scope: &Value,
) -> Result<almanac_proto::executor::v1::action::Kind, String> {
    let mut ctx = RunContext::new(record.origin.as_ref(), &record.id, &record.idempotency_key);
    ctx.input = scope.get("input").cloned().unwrap_or(Value::Null);
    ctx.nodes = scope.get("nodes").cloned().unwrap_or(Value::Null);
    templates::render(
        &Action {
            kind: Some(kind.clone()),
        },
        &ctx,
    )?
    .kind
    .ok_or_else(|| "the rendered action has no kind".to_owned())
}

/// One attempt: NodeStarted (unless `begun` with the execution), the work, then
/// NodeSucceeded or NodeFailed.
async fn attempt_once(
    s: &Shared<'_>,
    node: &PlanNode,
    start: &NodeStart,
    begun: Option<Begun>,
) -> Result<Outcome, Stop> {
    let attempt = start.attempt;
    let (started_ms, work) = match begun {
        Some(begun) => {
            tracing::debug!(execution_id = %s.record.id, node_id = %node.id, attempt, kind = node.kind,
                "node started (with its execution)");
            (begun.started_ms, Prepared::Action(begun.kind))
        }
        None => match begin(s, node, start).await? {
            Ok(begun) => begun,
            Err(failed) => return Ok(failed),
        },
    };
    run_attempt(s, node, start, attempt, started_ms, work).await
}

/// Prepares an attempt's work and stores its `NodeStarted`: when it started and what to
/// do, or how it ended already (its action did not render).
async fn begin(
    s: &Shared<'_>,
    node: &PlanNode,
    start: &NodeStart,
) -> Result<Result<(i64, Prepared), Outcome>, Stop> {
    let attempt = start.attempt;
    let now = s.now();
    let prepared: Result<(Value, Prepared), ActionError> = match &node.work {
        Work::Trigger | Work::Parallel => Ok((Value::Null, Prepared::Pass)),
        Work::Condition(expression) => Ok((
            json!({ "expression": expression }),
            Prepared::Condition(expression.clone()),
        )),
        Work::Delay(ms) => {
            let until = start.delay_until.unwrap_or(now + ms);
            Ok((
                json!({ "until_ms": until, "until": ms_to_rfc3339(until) }),
                Prepared::Delay(until),
            ))
        }
        Work::Action(kind) => match render(s.record, kind, &start.scope) {
            Ok(rendered) => {
                let input = serde_json::to_value(Action {
                    kind: Some(rendered.clone()),
                })
                .unwrap_or(Value::Null);
                Ok((input, Prepared::Action(Box::new(rendered))))
            }
            Err(problem) => Err(ActionError::permanent(problem)),
        },
    };
    let (input, work) = match prepared {
        Ok(p) => p,
        Err(error) => {
            append_started(s, node, attempt, Value::Null).await?;
            append_failed(s, node, attempt, NodeStatus::Failed, &error).await?;
            return Ok(Err(Outcome::Failed(error)));
        }
    };
    let started_ms = append_started(s, node, attempt, input).await?;
    Ok(Ok((started_ms, work)))
}

/// The work of a begun attempt, and its end stored.
async fn run_attempt(
    s: &Shared<'_>,
    node: &PlanNode,
    start: &NodeStart,
    attempt: u32,
    started_ms: i64,
    work: Prepared,
) -> Result<Outcome, Stop> {
    let work_done = async {
        match work {
            Prepared::Pass => Ok(s.plan.input.clone()),
            Prepared::Condition(expression) => cel::evaluate(&expression, &start.scope)
                .map(Value::Bool)
                .map_err(ActionError::permanent),
            Prepared::Delay(until) => {
                let wait = (until - s.now()).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                Ok(json!({ "until": ms_to_rfc3339(until) }))
            }
            Prepared::Action(kind) => run_handler(s, node, start, attempt, &kind).await,
        }
    };
    let node_timeout = node
        .timeout_ms
        .map(|ms| Duration::from_millis(ms.max(0) as u64));
    let outcome = tokio::select! {
        biased;
        result = async {
            match node_timeout {
                Some(t) => tokio::time::timeout(t, work_done).await.unwrap_or_else(|_| {
                    Err(ActionError::retryable(format!("timed out: the node's timeout of {}ms passed", t.as_millis())))
                }),
                None => work_done.await,
            }
        } => match result {
            Ok(output) => Outcome::Succeeded(output),
            Err(_) if s.deadline_passed() => Outcome::TimedOut,
            Err(error) => Outcome::Failed(error),
        },
        () = s.stop.cancelled() => Outcome::Cancelled,
        () = s.until_deadline() => Outcome::TimedOut,
        () = s.engine.shutdown.cancelled() => return Err(Stop::Shutdown),
    };
    let node_id = node.id.clone();
    let transition = match &outcome {
        Outcome::Succeeded(output) => Transition::NodeSucceeded {
            node_id,
            attempt,
            output: output.clone(),
            duration_ms: (s.now() - started_ms).max(0),
        },
        Outcome::Failed(error) => Transition::NodeFailed {
            node_id,
            attempt,
            status: NodeStatus::Failed,
            error: error.message.clone(),
            retryable: error.retryable,
        },
        Outcome::Cancelled => Transition::NodeFailed {
            node_id,
            attempt,
            status: NodeStatus::Cancelled,
            error: if s.live.abort.is_cancelled() {
                "cancelled: the execution was terminated".into()
            } else {
                "cancelled: another node of the execution failed".into()
            },
            retryable: false,
        },
        Outcome::TimedOut => Transition::NodeFailed {
            node_id,
            attempt,
            status: NodeStatus::TimedOut,
            error: "timed out: the execution's deadline passed".into(),
            retryable: true,
        },
    };
    if s.plan.single && matches!(outcome, Outcome::Succeeded(_)) {
        // The execution's end is the runner's next write: the result goes with it, in
        // one transaction.
        s.engine.stage(s.live, transition);
    } else {
        s.engine.write(s.live, &s.record.id, transition).await?;
    }
    Ok(outcome)
}

enum Prepared {
    Pass,
    Condition(String),
    Delay(i64),
    Action(Box<almanac_proto::executor::v1::action::Kind>),
}

async fn run_handler(
    s: &Shared<'_>,
    node: &PlanNode,
    start: &NodeStart,
    attempt: u32,
    kind: &almanac_proto::executor::v1::action::Kind,
) -> Result<Value, ActionError> {
    let Some(handler) = s.engine.registry.get(node.kind) else {
        return Err(ActionError::permanent(format!(
            "this executor has no handler for {} actions",
            node.kind
        )));
    };
    let ctx = ActionContext {
        execution_id: s.record.id.clone(),
        idempotency_key: s.node_key(node),
        node_id: node.id.clone(),
        attempt,
        try_number: start.try_number,
        origin: s.record.origin.clone(),
        deadline_ms: s.deadline_ms,
        now_ms: s.now(),
        handover: s.live.lost.clone(),
    };
    let cancel = CancellationToken::new();
    let _stop_handler = cancel.clone().drop_guard();
    handler.run(&ctx, kind, cancel).await
}

#[cfg(test)]
mod tests {
    use almanac_proto::executor::v1::action::Kind;
    use almanac_proto::executor::v1::{CallApiAction, ExecutePipelineAction, Origin};

    use super::*;
    use crate::model::NewExecution;

    fn new_execution(action: Action) -> NewExecution {
        NewExecution {
            id: "e1".into(),
            idempotency_key: "r1/1".into(),
            fingerprint: String::new(),
            action,
            origin: Some(Origin {
                schedule_id: "nightly".into(),
                run_id: "r1".into(),
                ..Default::default()
            }),
            deadline_ms: None,
            created_ms: 5_000,
            pipeline: None,
            owner: "x".into(),
            lease_until_ms: 0,
            first_node: None,
        }
    }

    fn call(url: &str) -> Action {
        Action {
            kind: Some(Kind::CallApi(CallApiAction {
                url: url.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_single_action_begins_with_its_rendered_action_as_the_input() {
        let new = new_execution(call("http://h/{{ schedule.id }}/{{ run.id }}"));
        let (first, begun) = begin_first(&new.record()).expect("a single action begins");
        let Kind::CallApi(rendered) = &*begun.kind else {
            panic!("{:?}", begun.kind)
        };
        assert_eq!(rendered.url, "http://h/nightly/r1");
        assert_eq!(begun.started_ms, 5_000, "it starts as it is created");
        assert_eq!(first.node_id, "action");
        assert_eq!(first.kind, "call_api");
        assert_eq!(
            first.input,
            serde_json::to_value(Action {
                kind: Some(Kind::CallApi(rendered.clone()))
            })
            .unwrap(),
            "what NodeStarted records is what runs"
        );
    }

    #[test]
    fn a_pipeline_or_an_action_that_does_not_render_leaves_the_beginning_to_its_runner() {
        let pipeline = Action {
            kind: Some(Kind::ExecutePipeline(ExecutePipelineAction {
                pipeline_id: "p".into(),
                ..Default::default()
            })),
        };
        assert!(begin_first(&new_execution(pipeline).record()).is_none());
        let unrenderable = new_execution(call("http://h/{{ run.nope }}"));
        assert!(begin_first(&unrenderable.record()).is_none());
    }
}
