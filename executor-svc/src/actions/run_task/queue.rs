//! `run_task` on a queue: the handler turns the action into a task (one per try of the
//! retry policy, so a resumed attempt re-attaches to the same task), waits for its end
//! through `TaskQueues`, and turns that end into the node's output or error.

use std::sync::Arc;

use almanac_proto::executor::v1::RunTaskAction;
use almanac_proto::time::duration_to_ms;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::actions::{ActionContext, ActionError};
use crate::engine::tasks::{TaskQueues, task_id};
use crate::json::pb_to_json;
use crate::store::tasks::{NewTask, TaskRecord, TaskStatus};

/// Deliveries when the action says 0.
pub const DEFAULT_MAX_DELIVERIES: u32 = 3;
/// The heartbeat timeout when the action does not say.
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: i64 = 30_000;

/// The task of this try of the node.
pub fn new_task(ctx: &ActionContext, action: &RunTaskAction, queue: &str) -> NewTask {
    let positive =
        |d: Option<&pbjson_types::Duration>| d.and_then(duration_to_ms).filter(|&ms| ms > 0);
    let payload = action
        .payload
        .as_ref()
        .map(|s| {
            pb_to_json(&pbjson_types::Value {
                kind: Some(pbjson_types::value::Kind::StructValue(s.clone())),
            })
        })
        .unwrap_or_else(|| Value::Object(Default::default()));
    NewTask {
        id: task_id(&ctx.execution_id, &ctx.node_id, ctx.try_number),
        execution_id: ctx.execution_id.clone(),
        node_id: ctx.node_id.clone(),
        try_number: ctx.try_number,
        queue: queue.to_owned(),
        payload,
        idempotency_key: ctx.idempotency_key.clone(),
        origin: ctx.origin.clone(),
        deadline_ms: ctx.deadline_ms,
        max_deliveries: if action.max_deliveries == 0 {
            DEFAULT_MAX_DELIVERIES
        } else {
            action.max_deliveries
        },
        heartbeat_timeout_ms: positive(action.heartbeat_timeout.as_ref())
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT_MS),
        schedule_to_start_ms: positive(action.schedule_to_start_timeout.as_ref()),
        start_to_close_ms: positive(action.start_to_close_timeout.as_ref()),
        created_ms: ctx.now_ms,
    }
}

/// Queues the task (or re-attaches to it) and waits for its end.
pub async fn run(
    queues: &Arc<TaskQueues>,
    ctx: &ActionContext,
    action: &RunTaskAction,
    queue: &str,
    cancel: CancellationToken,
) -> Result<Value, ActionError> {
    let task = queues
        .submit(new_task(ctx, action, queue))
        .await
        .map_err(|e| ActionError::retryable(format!("cannot queue the task: {e}")))?;
    let ended = queues
        .wait(task.id(), cancel, ctx.handover.clone())
        .await
        .map_err(|e| ActionError::permanent(format!("cannot follow the task: {e}")))?;
    outcome(ended)
}

/// The node's output (the worker's result) or error for an ended task.
pub fn outcome(task: TaskRecord) -> Result<Value, ActionError> {
    match task.status {
        TaskStatus::Completed => Ok(task.result.unwrap_or(Value::Null)),
        TaskStatus::Failed if task.retryable => Err(ActionError::retryable(task.error)),
        TaskStatus::Failed | TaskStatus::Cancelled => Err(ActionError::permanent(task.error)),
        TaskStatus::TimedOut => Err(ActionError::retryable(task.error)),
        TaskStatus::Queued | TaskStatus::Leased => Err(ActionError::permanent(format!(
            "task {} is still {}",
            task.spec.id,
            task.status.as_str()
        ))),
    }
}
