//! Runs one execution's node graph to its end, from whatever the store says happened so
//! far: a node whose success was committed never runs again; an attempt left in flight by
//! a previous process is closed and the node attempted again with the same key; a
//! requested cancel or a passed deadline finishes the execution without new work.
//! On shutdown the runner stops at its next wait and leaves the execution RUNNING, to be
//! resumed by the next process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::plan::{Plan, PlanNode};
use super::{Engine, Live};
use almanac_proto::executor::v1::Action;

use crate::actions::retry::Backoff;
use crate::actions::templates::{self, RunContext};
use crate::actions::{ActionContext, ActionError};
use crate::error::ExecutorError;
use crate::model::{ExecutionRecord, ExecutionStatus, NodeRunRecord, NodeStatus, Transition};

/// Why a runner stopped before the end: the process is shutting down (the execution
/// stays RUNNING), or the store failed.
enum Stop {
    Shutdown,
    Store(ExecutorError),
}

impl From<ExecutorError> for Stop {
    fn from(e: ExecutorError) -> Self {
        Self::Store(e)
    }
}

/// How one node attempt ended.
enum Outcome {
    Succeeded(Value),
    Failed(ActionError),
    Cancelled,
    TimedOut,
}

/// Runs the execution to its end (or until shutdown). A store error is logged and the
/// execution is driven again from what the store holds, after a backoff, exactly as a
/// restart would resume it, so a passing database outage never leaves it unfinished.
pub(super) async fn run(engine: &Arc<Engine>, execution_id: &str, live: &Live) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match drive(engine, execution_id, live).await {
            Ok(()) | Err(Stop::Store(ExecutorError::AlreadyFinished(_))) => return,
            Err(Stop::Shutdown) => {
                tracing::info!(
                    execution_id,
                    "runner stopped by shutdown; the execution resumes on the next start"
                );
                return;
            }
            Err(Stop::Store(error)) => {
                tracing::error!(execution_id, %error, retry_in_ms = backoff.as_millis() as u64,
                    "runner stopped by a store error; driving the execution again");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = engine.shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn drive(engine: &Arc<Engine>, id: &str, live: &Live) -> Result<(), Stop> {
    let Some(record) = engine.store.get_execution(id).await? else {
        return Ok(());
    };
    if record.status.is_finished() {
        return Ok(());
    }
    let runs = engine.store.node_runs(id).await?;
    for run in runs.iter().filter(|r| r.status == NodeStatus::Running) {
        // Left in flight by a process that stopped: close it; the node runs again.
        engine
            .append(
                id,
                // CANCELLED, not FAILED: an interrupted attempt uses no try of the
                // retry policy; the node is attempted again with the same key.
                Transition::NodeFailed {
                    node_id: run.node_id.clone(),
                    attempt: run.attempt,
                    status: NodeStatus::Cancelled,
                    error: "interrupted: the executor stopped while this attempt was in flight"
                        .into(),
                    retryable: true,
                },
            )
            .await?;
    }
    if record.cancel_requested.is_some() {
        return finish_cancelled(engine, id).await;
    }
    if deadline_passed(engine, &record) {
        return finish_timed_out(engine, id).await;
    }
    let plan = match Plan::for_action(&record.action) {
        Ok(plan) => plan,
        Err(error) => return finish(engine, id, ExecutionStatus::Failed, None, error, false).await,
    };

    // Executions waiting for a permit stay RUNNING.
    let _permit = tokio::select! {
        permit = Arc::clone(&engine.permits).acquire_owned() => match permit {
            Ok(permit) => permit,
            Err(_) => return Err(Stop::Shutdown),
        },
        () = live.stop_new.cancelled() => return finish_cancelled(engine, id).await,
        () = until_deadline(engine, record.deadline_ms) => return finish_timed_out(engine, id).await,
        () = engine.shutdown.cancelled() => return Err(Stop::Shutdown),
    };

    let mut result = None;
    for node in &plan.nodes {
        let attempts: Vec<&NodeRunRecord> = runs.iter().filter(|r| r.node_id == node.id).collect();
        if let Some(done) = attempts.iter().find(|r| r.status == NodeStatus::Succeeded) {
            result = done.output.clone();
            continue;
        }
        if live.stop_new.is_cancelled() {
            return finish_cancelled(engine, id).await;
        }
        if deadline_passed(engine, &record) {
            return finish_timed_out(engine, id).await;
        }
        let mut attempt = attempts.iter().map(|r| r.attempt).max().unwrap_or(0) + 1;
        // Tries of the retry policy used so far: real failures only, not interruptions.
        let mut try_number = attempts
            .iter()
            .filter(|r| r.status == NodeStatus::Failed)
            .count() as u32
            + 1;
        let backoff = Backoff::for_action(&node.action);
        loop {
            match run_node(engine, &record, live, node, attempt, try_number).await? {
                Outcome::Succeeded(output) => {
                    result = Some(output);
                    break;
                }
                Outcome::Failed(error) => {
                    if live.stop_new.is_cancelled() {
                        return finish_cancelled(engine, id).await;
                    }
                    let delay = error
                        .retryable
                        .then(|| backoff.delay_before(try_number + 1, error.retry_after_ms))
                        .flatten()
                        .filter(|&d| {
                            record
                                .deadline_ms
                                .is_none_or(|dl| (engine.clock.now_ms() + d as i64) < dl)
                        });
                    let Some(delay) = delay else {
                        let message = if try_number > 1 {
                            format!("failed after {try_number} tries: {}", error.message)
                        } else {
                            error.message
                        };
                        let status = ExecutionStatus::Failed;
                        return finish(engine, id, status, None, message, error.retryable).await;
                    };
                    attempt += 1;
                    try_number += 1;
                    let retrying = Transition::NodeRetrying {
                        node_id: node.id.clone(),
                        attempt,
                        backoff_ms: delay as i64,
                    };
                    engine.append(id, retrying).await?;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(delay)) => {}
                        () = live.stop_new.cancelled() => return finish_cancelled(engine, id).await,
                        () = until_deadline(engine, record.deadline_ms) => return finish_timed_out(engine, id).await,
                        () = engine.shutdown.cancelled() => return Err(Stop::Shutdown),
                    }
                }
                Outcome::Cancelled => return finish_cancelled(engine, id).await,
                Outcome::TimedOut => return finish_timed_out(engine, id).await,
            }
        }
    }
    // A graceful cancel lets the work in flight end, then the execution ends CANCELLED.
    if live.stop_new.is_cancelled() {
        return finish_cancelled(engine, id).await;
    }
    finish(
        engine,
        id,
        ExecutionStatus::Succeeded,
        result,
        String::new(),
        false,
    )
    .await
}

/// Runs one attempt of one node and records how it ended (except on shutdown, which
/// leaves the attempt RUNNING for the next process to close and retry).
async fn run_node(
    engine: &Arc<Engine>,
    record: &ExecutionRecord,
    live: &Live,
    node: &PlanNode,
    attempt: u32,
    try_number: u32,
) -> Result<Outcome, Stop> {
    let id = record.id.as_str();
    // Templates are rendered per run; the node's input is the action as sent.
    let run_context = RunContext::new(record.origin.as_ref(), id, &record.idempotency_key);
    let rendered = templates::render(
        &Action {
            kind: Some(node.action.clone()),
        },
        &run_context,
    )
    .and_then(|a| {
        a.kind
            .ok_or_else(|| "the rendered action has no kind".to_owned())
    });
    let input = match &rendered {
        Ok(kind) => serde_json::to_value(Action {
            kind: Some(kind.clone()),
        })
        .unwrap_or(Value::Null),
        Err(_) => serde_json::to_value(&record.action).unwrap_or(Value::Null),
    };
    let started = engine
        .append(
            id,
            Transition::NodeStarted {
                node_id: node.id.clone(),
                kind: node.kind.to_owned(),
                attempt,
                input,
            },
        )
        .await?;
    tracing::info!(execution_id = id, node_id = %node.id, attempt, kind = node.kind, "node started");

    let outcome = match (engine.registry.get(node.kind), rendered) {
        (_, Err(problem)) => Outcome::Failed(ActionError::permanent(problem)),
        (None, _) => Outcome::Failed(ActionError::permanent(format!(
            "this executor has no handler for {} actions",
            node.kind
        ))),
        (Some(handler), Ok(action)) => {
            let ctx = ActionContext {
                execution_id: id.to_owned(),
                idempotency_key: record.idempotency_key.clone(),
                node_id: node.id.clone(),
                attempt,
                try_number,
                origin: record.origin.clone(),
                deadline_ms: record.deadline_ms,
                now_ms: engine.clock.now_ms(),
            };
            let cancel = CancellationToken::new();
            let _stop_handler = cancel.clone().drop_guard();
            tokio::select! {
                biased;
                result = handler.run(&ctx, &action, cancel.clone()) => match result {
                    Ok(output) => Outcome::Succeeded(output),
                    // The call's own timeout is bounded by the deadline: if the deadline
                    // has passed, that is why it failed.
                    Err(_) if deadline_passed(engine, record) => Outcome::TimedOut,
                    Err(error) => Outcome::Failed(error),
                },
                () = live.abort.cancelled() => Outcome::Cancelled,
                () = until_deadline(engine, record.deadline_ms) => Outcome::TimedOut,
                () = engine.shutdown.cancelled() => return Err(Stop::Shutdown),
            }
        }
    };

    let node_id = node.id.clone();
    let transition = match &outcome {
        Outcome::Succeeded(output) => Transition::NodeSucceeded {
            node_id,
            attempt,
            output: output.clone(),
            duration_ms: (engine.clock.now_ms() - started.at_ms).max(0),
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
            error: "cancelled: the execution was terminated".into(),
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
    engine.append(id, transition).await?;
    Ok(outcome)
}

async fn finish(
    engine: &Engine,
    id: &str,
    status: ExecutionStatus,
    result: Option<Value>,
    error: String,
    retryable: bool,
) -> Result<(), Stop> {
    engine
        .append(
            id,
            Transition::ExecutionFinished {
                status,
                result,
                error: error.clone(),
                retryable,
            },
        )
        .await?;
    tracing::info!(
        execution_id = id,
        status = status.as_str(),
        error,
        "execution finished"
    );
    Ok(())
}

async fn finish_cancelled(engine: &Engine, id: &str) -> Result<(), Stop> {
    let reason = engine
        .store
        .get_execution(id)
        .await?
        .map(|r| r.cancel_reason)
        .unwrap_or_default();
    let error = if reason.is_empty() {
        "cancelled on request".to_owned()
    } else {
        format!("cancelled on request: {reason}")
    };
    finish(engine, id, ExecutionStatus::Cancelled, None, error, false).await
}

async fn finish_timed_out(engine: &Engine, id: &str) -> Result<(), Stop> {
    let error = "timed out: the execution's deadline passed".to_owned();
    finish(engine, id, ExecutionStatus::TimedOut, None, error, true).await
}

fn deadline_passed(engine: &Engine, record: &ExecutionRecord) -> bool {
    record
        .deadline_ms
        .is_some_and(|d| engine.clock.now_ms() >= d)
}

/// Resolves when the deadline passes (never without one).
fn until_deadline(engine: &Engine, deadline_ms: Option<i64>) -> impl Future<Output = ()> + use<> {
    let wait =
        deadline_ms.map(|d| Duration::from_millis((d - engine.clock.now_ms()).max(0) as u64));
    async move {
        match wait {
            Some(wait) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    }
}
