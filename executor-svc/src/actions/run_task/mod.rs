//! The `run_task` action (DESIGN §5.2): a task for a worker, on a queue served by workers
//! of WorkerService (`queue`), or a command the executor runs itself (`command`, only a
//! program its configuration allow-lists).
//!
//! `RunTask` is created by `server::run` with the store: it is the handler registered for
//! `run_task`, owns the queues that WorkerService serves and the commands' supervisors,
//! and at start-up kills the process groups a crashed process left and cancels tasks
//! whose execution has finished.

pub mod command;
pub mod process;
pub mod queue;
pub mod tail;

use std::sync::Arc;
use std::time::Duration;

use almanac_proto::action::FieldViolation;
use almanac_proto::executor::v1::action::Kind;
use almanac_proto::executor::v1::run_task_action::Target;
use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use self::command::Commands;
use super::{ActionContext, ActionEnv, ActionError, ActionHandler};
use crate::engine::Clock;
use crate::engine::tasks::TaskQueues;
use crate::error::ExecutorError;
use crate::store::ExecutorStore;

/// The `run_task` handler with its queues and commands.
pub struct RunTask {
    queues: Arc<TaskQueues>,
    commands: Commands,
    store: Arc<dyn ExecutorStore>,
}

impl std::fmt::Debug for RunTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTask")
            .field("commands", &self.commands)
            .finish_non_exhaustive()
    }
}

impl RunTask {
    /// The handler of this executor: programs from `env`'s configuration, tasks and
    /// process groups in `store`, work stopped by `shutdown`.
    pub fn new(
        env: &Arc<ActionEnv>,
        store: Arc<dyn ExecutorStore>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            queues: TaskQueues::new(Arc::clone(&store), Arc::clone(&clock), shutdown),
            commands: Commands::new(env.config.commands.allow.clone(), Arc::clone(&store), clock),
            store,
        })
    }

    /// The queues WorkerService serves.
    pub fn queues(&self) -> Arc<TaskQueues> {
        Arc::clone(&self.queues)
    }

    /// At start-up, before executions resume: kills what commands of a crashed process
    /// left running (on a `shared` database, not those of executions another replica,
    /// `replica_id` being ours, holds under a live lease at `now_ms`), and cancels open
    /// tasks of finished executions.
    pub async fn recover(
        &self,
        replica_id: &str,
        now_ms: i64,
        shared: bool,
    ) -> Result<(), ExecutorError> {
        process::kill_leftovers(self.store.as_ref(), replica_id, now_ms, shared).await?;
        self.queues.recover().await?;
        Ok(())
    }

    /// Waits (at most `grace` each) for the commands' supervisors, which kill their
    /// process groups when the runners stop, and the queues' watchers.
    pub async fn shut_down(&self, grace: Duration) -> bool {
        let commands = self.commands.shut_down(grace).await;
        let queues = self.queues.shut_down(grace).await;
        commands && queues
    }
}

#[async_trait]
impl ActionHandler for RunTask {
    fn kind(&self) -> &'static str {
        "run_task"
    }

    fn check(&self, action: &Kind, prefix: &str) -> Vec<FieldViolation> {
        match action {
            Kind::RunTask(task) => match &task.target {
                Some(Target::Command(command)) => self.commands.check(command, prefix),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    async fn run(
        &self,
        ctx: &ActionContext,
        action: &Kind,
        cancel: CancellationToken,
    ) -> Result<Value, ActionError> {
        let Kind::RunTask(task) = action else {
            return Err(ActionError::permanent(
                "run_task handler given another action kind",
            ));
        };
        match &task.target {
            Some(Target::Queue(name)) => queue::run(&self.queues, ctx, task, name, cancel).await,
            Some(Target::Command(command)) => self.commands.run(ctx, command, cancel).await,
            None => Err(ActionError::permanent("a run_task action needs a target")),
        }
    }
}
