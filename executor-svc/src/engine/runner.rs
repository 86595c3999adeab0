//! Runs one execution's graph to its end, from whatever the store says happened so far
//! (DESIGN §5.1, §5.3): ready nodes start concurrently (at most the plan's parallelism),
//! SKIPPED propagates, a failure that no ON_FAILURE edge handles cancels the running
//! siblings and records the unstarted nodes CANCELLED. A node whose result was committed
//! never runs again; an attempt left in flight by a crash is closed and attempted again
//! with the same key, using no try of its retry policy. On shutdown the runner stops,
//! leaves the execution RUNNING and releases its lease for the next process (or another
//! replica); every write is fenced by its lease, and a lost lease stops it at once.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::book::Book;
use super::node::{Begun, NodeEnd, Shared, run_to_end};
use super::plan::Plan;
use super::{Engine, Live};
use crate::error::ExecutorError;
use crate::model::{Event, ExecutionRecord, ExecutionStatus, NodeStatus, Transition};
use crate::pipeline::graph::{State, Step};

/// An execution this process has just created, for its runner to start from: its record,
/// the events stored with it, and its first node's attempt with the permit it runs under
/// when that attempt was begun with it.
pub(super) struct Fresh {
    pub record: ExecutionRecord,
    pub events: Vec<Event>,
    pub begun: Option<(OwnedSemaphorePermit, Begun)>,
}

/// Why a runner stopped before the end: the process is shutting down (the execution
/// stays RUNNING), or the store failed.
pub(super) enum Stop {
    Shutdown,
    Store(ExecutorError),
}

impl From<ExecutorError> for Stop {
    fn from(e: ExecutorError) -> Self {
        Self::Store(e)
    }
}

/// Runs the execution to its end (or until shutdown, or until its lease is lost: then
/// another replica runs it, and this runner stops at once, writing nothing more). A
/// store error is logged and the execution is driven again from what the store holds,
/// after a backoff, exactly as a restart would resume it, so a passing database outage
/// never leaves it unfinished.
pub(super) async fn run(
    engine: &Arc<Engine>,
    execution_id: &str,
    live: &Live,
    mut fresh: Option<Fresh>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        // A lease found lost by the heartbeat drops the drive (and the work in flight).
        let outcome = tokio::select! {
            outcome = drive(engine, execution_id, live, fresh.take()) => outcome,
            () = live.lost.cancelled() => Err(Stop::Store(ExecutorError::LeaseLost(execution_id.to_owned()))),
        };
        match outcome {
            Ok(()) | Err(Stop::Store(ExecutorError::AlreadyFinished(_))) => return,
            Err(Stop::Store(ExecutorError::LeaseLost(_))) => {
                live.lost.cancel();
                tracing::warn!(
                    execution_id,
                    epoch = live.lease.epoch,
                    "runner stopped: execution lease lost to another replica"
                );
                return;
            }
            Err(Stop::Shutdown) => {
                tracing::info!(
                    execution_id,
                    "runner stopped by shutdown; the execution resumes on the next start"
                );
                return release(engine, execution_id, live).await;
            }
            Err(Stop::Store(error)) => {
                tracing::error!(execution_id, %error, retry_in_ms = backoff.as_millis() as u64,
                    "runner stopped by a store error; driving the execution again");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = engine.shutdown.cancelled() => return release(engine, execution_id, live).await,
            () = live.lost.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Gives up the lease of an execution this runner leaves unfinished at shutdown, so that
/// another replica (or the next start) adopts it at once instead of after the lease.
async fn release(engine: &Engine, execution_id: &str, live: &Live) {
    let lease = [(execution_id.to_owned(), live.lease.epoch)];
    if let Err(error) = engine.store.release_leases(&live.lease.owner, &lease).await {
        tracing::warn!(execution_id, %error, "cannot release the execution's lease; it expires instead");
    }
}

/// Drives the execution from its committed state: `fresh` when it was just created here
/// (no node runs yet, or its first node begun with it), or else read back from the store.
async fn drive(
    engine: &Arc<Engine>,
    id: &str,
    live: &Live,
    fresh: Option<Fresh>,
) -> Result<(), Stop> {
    // What an earlier drive staged and could not commit comes first.
    engine.flush_staged(live, id).await?;
    let (record, mut runs, begun) = match fresh {
        Some(fresh) => (fresh.record, Vec::new(), fresh.begun),
        None => match engine.store.get_execution(id).await? {
            Some(record) => (record, engine.store.node_runs(id).await?, None),
            None => return Ok(()),
        },
    };
    let (held, mut begun) = begun.unzip();
    if record.status.is_finished() {
        return Ok(());
    }
    let plan = match Plan::for_execution(&record.action, record.pipeline.as_ref()) {
        Ok(plan) => plan,
        Err(error) => {
            return finish(
                engine,
                live,
                id,
                ExecutionStatus::Failed,
                None,
                error,
                false,
            )
            .await;
        }
    };
    let deadline_ms = match (record.deadline_ms, plan.timeout_ms) {
        (Some(d), Some(t)) => Some(d.min(record.created_ms + t)),
        (d, t) => d.or(t.map(|t| record.created_ms + t)),
    };
    for run in runs.iter_mut().filter(|r| r.status == NodeStatus::Running) {
        // CANCELLED, not FAILED: an interrupted attempt uses no try of the retry policy;
        // the node is attempted again with the same key.
        engine
            .write(
                live,
                id,
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
        run.status = NodeStatus::Cancelled;
    }
    if record.cancel_requested.is_some() {
        return finish_cancelled(engine, live, id, &plan, &Book::from_runs(&plan, &runs)).await;
    }
    if deadline_ms.is_some_and(|d| engine.clock.now_ms() >= d) {
        return finish_timed_out(engine, live, id, &plan, &Book::from_runs(&plan, &runs)).await;
    }

    // Executions waiting for a permit stay RUNNING.
    let _permit = if let Some(held) = held {
        held
    } else {
        tokio::select! {
        permit = Arc::clone(&engine.permits).acquire_owned() => match permit {
            Ok(permit) => permit,
            Err(_) => return Err(Stop::Shutdown),
        },
        () = live.stop_new.cancelled() => {
            return finish_cancelled(engine, live, id, &plan, &Book::from_runs(&plan, &runs)).await;
        }
        () = until(engine, deadline_ms) => {
            return finish_timed_out(engine, live, id, &plan, &Book::from_runs(&plan, &runs)).await;
        }
        () = engine.shutdown.cancelled() => return Err(Stop::Shutdown),
        }
    };

    let mut book = Book::from_runs(&plan, &runs);
    let stop = live.abort.child_token();
    let shared = Shared {
        engine,
        record: &record,
        plan: &plan,
        live,
        stop: &stop,
        deadline_ms,
    };
    // A failure committed before a restart, unhandled, still fails the execution.
    let mut failure: Option<(usize, String, bool)> = (0..plan.nodes.len())
        .find(|&i| book.states[i] == State::Failed && !plan.graph.failure_handled(i))
        .map(|i| {
            (
                i,
                book.errors[i].clone().unwrap_or_default(),
                book.retryable[i],
            )
        });
    let mut timed_out = false;
    // Every write this loop waits for is a future in `running`, polled together: a node
    // holding the store's one writer mid-transaction must never wait on a write this loop
    // makes outside it (the two would deadlock until the pool gave up).
    let shared = &shared;
    let mut running: FuturesUnordered<Work<'_>> = FuturesUnordered::new();
    let mut nodes_running = 0usize;
    let mut ready: VecDeque<usize> = VecDeque::new();
    loop {
        let stopping = failure.is_some() || timed_out || live.stop_new.is_cancelled();
        if !stopping {
            for step in plan.graph.advance(&mut book.states) {
                match step {
                    Step::Run(i) => {
                        book.states[i] = State::Running;
                        ready.push_back(i);
                    }
                    Step::Skip(i, reason) => {
                        let plan = &plan;
                        running.push(Box::pin(async move {
                            not_run(engine, live, id, plan, i, NodeStatus::Skipped, &reason)
                                .await?;
                            Ok(None)
                        }));
                    }
                }
            }
            while nodes_running < plan.max_parallelism.max(1)
                && let Some(i) = ready.pop_front()
            {
                nodes_running += 1;
                let mut start = book.start(i, &plan, &record);
                if i == 0 {
                    start.begun = begun.take();
                }
                running.push(Box::pin(async move {
                    run_to_end(shared, start).await.map(Some)
                }));
            }
        } else {
            // Nodes decided but not started are not started now.
            for i in ready.drain(..) {
                book.states[i] = State::Pending;
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            ended = running.next() => {
                let Some(ended) = ended else { break };
                let Some((i, end)) = ended? else { continue };
                nodes_running -= 1;
                match end {
                    NodeEnd::Succeeded(output) => {
                        let condition = output.as_bool().filter(|_| plan.nodes[i].kind == "condition");
                        book.states[i] = State::Succeeded(condition);
                        book.outputs[i] = Some(output);
                    }
                    NodeEnd::Failed(error) => {
                        book.states[i] = State::Failed;
                        book.errors[i] = Some(error.message.clone());
                        if !plan.graph.failure_handled(i) && failure.is_none() {
                            failure = Some((i, error.message, error.retryable));
                            stop.cancel();
                        }
                    }
                    NodeEnd::Cancelled => book.states[i] = State::Cancelled,
                    NodeEnd::TimedOut => {
                        book.states[i] = State::Cancelled;
                        timed_out = true;
                        stop.cancel();
                    }
                }
            }
            () = live.stop_new.cancelled(), if !live.stop_new.is_cancelled() => {}
            () = engine.shutdown.cancelled() => return Err(Stop::Shutdown),
        }
    }

    drop(running);
    if timed_out
        || deadline_ms.is_some_and(|d| engine.clock.now_ms() >= d)
            && book.states.iter().any(|s| !s.is_final())
    {
        return finish_timed_out(engine, live, id, &plan, &book).await;
    }
    if let Some((i, error, retryable)) = failure {
        cancel_unstarted(
            engine,
            live,
            id,
            &plan,
            &book,
            &format!("node {} failed", plan.nodes[i].id),
        )
        .await?;
        let message = if plan.single {
            error
        } else {
            format!("node {} failed: {error}", plan.nodes[i].id)
        };
        return finish(
            engine,
            live,
            id,
            ExecutionStatus::Failed,
            None,
            message,
            retryable,
        )
        .await;
    }
    if live.stop_new.is_cancelled() {
        return finish_cancelled(engine, live, id, &plan, &book).await;
    }
    let result = if plan.single {
        book.outputs[0].clone()
    } else {
        let outputs: serde_json::Map<String, Value> = plan
            .graph
            .leaves()
            .into_iter()
            .filter(|&i| matches!(book.states[i], State::Succeeded(_)))
            .map(|i| {
                (
                    plan.nodes[i].id.clone(),
                    book.outputs[i].clone().unwrap_or(Value::Null),
                )
            })
            .collect();
        let handled: Vec<Value> = (0..plan.nodes.len())
            .filter(|&i| book.states[i] == State::Failed)
            .map(|i| json!({ "node": plan.nodes[i].id, "error": book.errors[i] }))
            .collect();
        Some(json!({ "outputs": outputs, "handled_failures": handled }))
    };
    finish(
        engine,
        live,
        id,
        ExecutionStatus::Succeeded,
        result,
        String::new(),
        false,
    )
    .await
}

/// One piece of work the drive loop waits for: a node run to its end, or a skip recorded
/// (`None`).
type Work<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Option<(usize, NodeEnd)>, Stop>> + Send + 'a>>;

/// Records a node that will not run: SKIPPED (no edge taken) or CANCELLED (the execution
/// stopped first).
async fn not_run(
    engine: &Engine,
    live: &Live,
    id: &str,
    plan: &Plan,
    i: usize,
    status: NodeStatus,
    reason: &str,
) -> Result<(), Stop> {
    engine
        .write(
            live,
            id,
            Transition::NodeSkipped {
                node_id: plan.nodes[i].id.clone(),
                kind: plan.nodes[i].kind.to_owned(),
                status,
                reason: reason.to_owned(),
            },
        )
        .await?;
    Ok(())
}

/// Records every node that never started CANCELLED.
async fn cancel_unstarted(
    engine: &Engine,
    live: &Live,
    id: &str,
    plan: &Plan,
    book: &Book,
    why: &str,
) -> Result<(), Stop> {
    if plan.single {
        return Ok(());
    }
    for i in 0..plan.nodes.len() {
        if book.states[i] == State::Pending && book.next_attempt[i] == 1 {
            not_run(
                engine,
                live,
                id,
                plan,
                i,
                NodeStatus::Cancelled,
                &format!("cancelled: {why}"),
            )
            .await?;
        }
    }
    Ok(())
}

async fn finish(
    engine: &Engine,
    live: &Live,
    id: &str,
    status: ExecutionStatus,
    result: Option<Value>,
    error: String,
    retryable: bool,
) -> Result<(), Stop> {
    engine
        .write(
            live,
            id,
            Transition::ExecutionFinished {
                status,
                result,
                error: error.clone(),
                retryable,
            },
        )
        .await?;
    // Every fire ends here: a success is in the store and the event stream, and is
    // logged only at debug; anything else is worth a line at info.
    if status == ExecutionStatus::Succeeded {
        tracing::debug!(
            execution_id = id,
            status = status.as_str(),
            "execution finished"
        );
    } else {
        tracing::info!(
            execution_id = id,
            status = status.as_str(),
            error,
            "execution finished"
        );
    }
    Ok(())
}

async fn finish_cancelled(
    engine: &Engine,
    live: &Live,
    id: &str,
    plan: &Plan,
    book: &Book,
) -> Result<(), Stop> {
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
    cancel_unstarted(engine, live, id, plan, book, "the execution was cancelled").await?;
    finish(
        engine,
        live,
        id,
        ExecutionStatus::Cancelled,
        None,
        error,
        false,
    )
    .await
}

async fn finish_timed_out(
    engine: &Engine,
    live: &Live,
    id: &str,
    plan: &Plan,
    book: &Book,
) -> Result<(), Stop> {
    cancel_unstarted(
        engine,
        live,
        id,
        plan,
        book,
        "the execution's deadline passed",
    )
    .await?;
    let error = "timed out: the execution's deadline passed".to_owned();
    finish(
        engine,
        live,
        id,
        ExecutionStatus::TimedOut,
        None,
        error,
        true,
    )
    .await
}

/// Resolves when the deadline passes (never without one).
fn until(engine: &Engine, deadline_ms: Option<i64>) -> impl Future<Output = ()> + use<> {
    let wait =
        deadline_ms.map(|d| Duration::from_millis((d - engine.clock.now_ms()).max(0) as u64));
    async move {
        match wait {
            Some(wait) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    }
}
