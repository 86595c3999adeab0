//! The execution use cases: start a new execution or attach to the one stored under the
//! same key (compared by a request fingerprint), watch, read, list, cancel, and resume
//! what a previous process left running.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use almanac_proto::action::{FieldViolation, kind_name};
use almanac_proto::executor::v1::{Action, ExecuteRequest, Origin, Pipeline};
use almanac_proto::time::ms_to_timestamp;
use prost::Message;
use sha2::{Digest, Sha256};

use super::node::{self, Begun};
use super::runner::{self, Fresh};
use super::{Engine, EventStream, Live};
use crate::actions::templates;
use crate::error::ExecutorError;
use crate::model::{CancelMode, ExecutionRecord, ListQuery, NewExecution, NodeRunRecord};
use crate::store::Lease;

/// A validated request to run an action under an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// Non-empty, unique per execution.
    pub idempotency_key: String,
    /// What to run (its kind is set).
    pub action: Action,
    /// When the execution must be over.
    pub deadline_ms: Option<i64>,
    /// Where the work comes from.
    pub origin: Option<Origin>,
}

/// How `GetExecution` names an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionLookup {
    /// By id.
    Id(String),
    /// By idempotency key.
    Key(String),
}

/// One page of executions, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The executions.
    pub executions: Vec<ExecutionRecord>,
    /// The id to continue before, when there may be more.
    pub next_before_id: Option<String>,
}

/// The request fingerprint: sha256 (hex) of the protobuf encoding of the action, the
/// deadline (at millisecond precision, as stored) and the origin. Maps are BTreeMaps in
/// the generated code, so the encoding is deterministic; `after_seq` is not part of it.
pub fn fingerprint(request: &StartRequest) -> String {
    let canonical = ExecuteRequest {
        idempotency_key: String::new(),
        action: Some(request.action.clone()),
        deadline: request.deadline_ms.map(ms_to_timestamp),
        origin: request.origin.clone(),
        after_seq: 0,
    };
    hex::encode(Sha256::digest(canonical.encode_to_vec()))
}

impl Engine {
    /// Starts an execution for a new key, or attaches to the execution stored under the
    /// key when the request is the same, and streams its events with `seq > after_seq`.
    /// The same key with a different request is `AlreadyExists`; nothing ever restarts a
    /// finished execution.
    pub async fn execute(
        self: &Arc<Self>,
        request: StartRequest,
        after_seq: u64,
    ) -> Result<EventStream, ExecutorError> {
        if self.shutdown.is_cancelled() {
            return Err(ExecutorError::ShuttingDown);
        }
        self.check_form(Some(&request.action), "action")?;
        let fingerprint = fingerprint(&request);
        let key = &request.idempotency_key;

        // A new key is the common case: the insert itself finds a taken one (`create`
        // then attaches), so a new execution costs no read first.
        let record = match self.check_configuration(&request.action, "action").await {
            // Only a new execution is held to the configuration: one already stored keeps
            // running (and can be re-attached to) whatever changed since.
            Err(refused) => match self.store.find_by_key(key).await? {
                Some(existing) => existing,
                None => return Err(refused),
            },
            Ok(pipeline) => {
                let mut new = NewExecution {
                    id: uuid::Uuid::now_v7().to_string(),
                    idempotency_key: key.clone(),
                    fingerprint: fingerprint.clone(),
                    action: request.action.clone(),
                    origin: request.origin.clone(),
                    deadline_ms: request.deadline_ms,
                    created_ms: self.clock.now_ms(),
                    pipeline,
                    owner: self.leasing.replica_id.clone(),
                    lease_until_ms: self.lease_until(),
                    first_node: None,
                };
                let begun = self.begin_first(&mut new);
                self.create(new, begun).await?
            }
        };
        if record.fingerprint != fingerprint {
            return Err(ExecutorError::AlreadyExists(format!(
                "idempotency key {key:?} is already used by execution {} with a different request",
                record.id
            )));
        }
        self.adopt_if_orphaned(&record).await?;
        Ok(self.event_stream(record.id, after_seq))
    }

    /// Stores a new execution and starts its runner, as one step no caller can cut in two:
    /// a client that hangs up drops its request's future (tonic cancels the handler), and
    /// dropped between the commit and the runner's start the execution would stay RUNNING
    /// with nobody running it. The step runs as a task of its own; the caller waits for it.
    /// Another request that won the insert of the same key is attached to instead.
    async fn create(
        self: &Arc<Self>,
        new: NewExecution,
        begun: Option<(OwnedSemaphorePermit, Begun)>,
    ) -> Result<ExecutionRecord, ExecutorError> {
        let engine = Arc::clone(self);
        let key = new.idempotency_key.clone();
        let creating = Creating::new(self, &new.id);
        let step = self.tasks.spawn(async move {
            let _creating = creating;
            let created = engine.store.create_execution(&new).await?;
            tracing::debug!(execution_id = %created.id, idempotency_key = %new.idempotency_key, "execution started");
            let fresh = Fresh {
                record: created.clone(),
                events: new.events(),
                begun,
            };
            engine.start_runner(created.id.clone(), created.lease_epoch, Some(fresh));
            Ok::<_, ExecutorError>(created)
        });
        let created = match step.await {
            Ok(created) => created,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return Err(ExecutorError::ShuttingDown),
        };
        match created {
            Err(ExecutorError::AlreadyExists(_)) => {
                self.store.find_by_key(&key).await?.ok_or_else(|| {
                    ExecutorError::Corrupt(format!("key {key:?} taken but not found"))
                })
            }
            other => other,
        }
    }

    /// Begins the first attempt of a new single action with its creation when a permit to
    /// run it is free (taken now, without waiting: queued executions keep their turn), so
    /// the attempt's `NodeStarted` is stored in the execution's own transaction and the
    /// work goes out after one commit instead of two. A pipeline, a busy executor or a
    /// deadline less than a second away leaves the beginning to the runner, as before.
    fn begin_first(&self, new: &mut NewExecution) -> Option<(OwnedSemaphorePermit, Begun)> {
        let far = new.deadline_ms.is_none_or(|d| d > new.created_ms + 1_000);
        if new.pipeline.is_some() || !far {
            return None;
        }
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        let (first, begun) = node::begin_first(&new.record())?;
        new.first_node = Some(first);
        Some((permit, begun))
    }

    /// Whether this executor can run `action`: well formed, templates that parse and use
    /// known names (`InvalidArgument`), and what its configuration allows — secrets,
    /// profiles, programs, destinations (`FailedPrecondition`). Runs nothing.
    pub async fn validate_action(
        &self,
        action: Option<&Action>,
        prefix: &str,
    ) -> Result<(), ExecutorError> {
        self.check_form(action, prefix)?;
        if let Some(action) = action {
            self.check_configuration(action, prefix).await?;
        }
        Ok(())
    }

    fn check_form(&self, action: Option<&Action>, prefix: &str) -> Result<(), ExecutorError> {
        let mut problems = almanac_proto::action::validate(action, prefix);
        if let Some(action) = action.filter(|_| problems.is_empty()) {
            problems.extend(templates::check(action, prefix));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ExecutorError::InvalidArgument(problems))
        }
    }

    /// What this executor's configuration says of a well-formed action; for
    /// `execute_pipeline`, the pipeline version it would run (which must exist here and
    /// pass the same checks node by node).
    async fn check_configuration(
        &self,
        action: &Action,
        prefix: &str,
    ) -> Result<Option<Pipeline>, ExecutorError> {
        let Some(kind) = action.kind.as_ref() else {
            return Ok(None);
        };
        let name = kind_name(kind);
        let path = format!("{prefix}.{name}");
        if let almanac_proto::executor::v1::action::Kind::ExecutePipeline(run) = kind {
            let version = (run.version > 0).then_some(run.version);
            let Some(pipeline) = self.store.get_pipeline(&run.pipeline_id, version).await? else {
                let what = match version {
                    Some(v) => format!("pipeline {:?} version {v}", run.pipeline_id),
                    None => format!("pipeline {:?}", run.pipeline_id),
                };
                return Err(ExecutorError::FailedPrecondition(vec![
                    FieldViolation::new(
                        format!("{path}.pipeline_id"),
                        format!("this executor has no {what}"),
                    ),
                ]));
            };
            let (invalid, refused) = self.pipeline_problems(&pipeline);
            let problems: Vec<FieldViolation> = invalid.into_iter().chain(refused).collect();
            if !problems.is_empty() {
                return Err(ExecutorError::FailedPrecondition(problems));
            }
            return Ok(Some(pipeline));
        }
        let refused = match self.registry.get(name) {
            None => vec![FieldViolation::new(
                path,
                format!("this executor has no handler for {name} actions"),
            )],
            Some(handler) => handler.check(kind, &path),
        };
        if refused.is_empty() {
            Ok(None)
        } else {
            Err(ExecutorError::FailedPrecondition(refused))
        }
    }

    /// Streams the events of an execution with `seq > after_seq` until it finishes.
    pub async fn watch(
        self: &Arc<Self>,
        execution_id: &str,
        after_seq: u64,
    ) -> Result<EventStream, ExecutorError> {
        if self.shutdown.is_cancelled() {
            return Err(ExecutorError::ShuttingDown);
        }
        let record = self.require(execution_id).await?;
        self.adopt_if_orphaned(&record).await?;
        Ok(self.event_stream(record.id, after_seq))
    }

    /// One execution with its node table.
    pub async fn get(
        &self,
        lookup: &ExecutionLookup,
    ) -> Result<(ExecutionRecord, Vec<NodeRunRecord>), ExecutorError> {
        let record = match lookup {
            ExecutionLookup::Id(id) => self.require(id).await?,
            ExecutionLookup::Key(key) => self.store.find_by_key(key).await?.ok_or_else(|| {
                ExecutorError::NotFound(format!("execution with idempotency key {key:?}"))
            })?,
        };
        let nodes = self.store.node_runs(&record.id).await?;
        Ok((record, nodes))
    }

    /// A page of executions matching `query` (its `limit` is the page size), newest first.
    pub async fn list(&self, mut query: ListQuery) -> Result<Page, ExecutorError> {
        let page_size = query.limit.max(1);
        query.limit = page_size + 1;
        let mut executions = self.store.list_executions(&query).await?;
        let more = executions.len() > page_size as usize;
        executions.truncate(page_size as usize);
        let next_before_id = more
            .then(|| executions.last().map(|e| e.id.clone()))
            .flatten();
        Ok(Page {
            executions,
            next_before_id,
        })
    }

    /// Asks an execution to stop: recorded durably first (a restart honours it, and the
    /// replica running it reads it there), then signalled to its runner when it runs here.
    /// A finished execution is returned unchanged.
    pub async fn cancel(
        &self,
        execution_id: &str,
        mode: CancelMode,
        reason: &str,
    ) -> Result<ExecutionRecord, ExecutorError> {
        let record = self
            .store
            .request_cancel(execution_id, mode, reason)
            .await?;
        if !record.status.is_finished()
            && let Some(mode) = record.cancel_requested
        {
            self.signal_cancel(execution_id, mode);
        }
        Ok(record)
    }

    async fn require(&self, execution_id: &str) -> Result<ExecutionRecord, ExecutorError> {
        self.store
            .get_execution(execution_id)
            .await?
            .ok_or_else(|| ExecutorError::NotFound(format!("execution {execution_id}")))
    }

    /// Registers the execution as live under lease `epoch` (before its task exists, so
    /// that cancels and watchers find it) and spawns its runner, unless one runs already
    /// under that epoch or a newer one. A runner here under an older epoch (its lease
    /// expired and this process adopted the execution again) is stopped first.
    /// Runs the execution under the lease of `epoch`. `fresh` is an execution this process
    /// has just created (no node runs yet, or its first node begun with it): the runner
    /// starts from it instead of reading it back.
    pub(super) fn start_runner(
        self: &Arc<Self>,
        execution_id: String,
        epoch: u64,
        fresh: Option<Fresh>,
    ) {
        let lease = Lease {
            owner: self.leasing.replica_id.clone(),
            epoch,
        };
        let (live, previous) = {
            let mut map = self.live_map();
            let previous = match map.get(&execution_id) {
                Some(running) if running.lease.epoch >= epoch => return,
                running => running.cloned(),
            };
            let live = Arc::new(Live::new(lease));
            if let Some(fresh) = &fresh {
                // Its first events, committed with it: local watchers start from memory.
                for event in &fresh.events {
                    live.committed(event);
                }
            }
            map.insert(execution_id.clone(), Arc::clone(&live));
            (live, previous)
        };
        if let Some(previous) = &previous {
            previous.lost.cancel();
        }
        let engine = Arc::clone(self);
        self.tasks.spawn(async move {
            if let Some(previous) = previous {
                previous.ended.cancelled().await;
            }
            let retire = Retire {
                engine: Arc::clone(&engine),
                execution_id,
                live,
            };
            runner::run(&engine, &retire.execution_id, &retire.live, fresh).await;
        });
    }
}

/// Marks an execution as being stored and started by this process while it lives.
struct Creating {
    engine: Arc<Engine>,
    id: String,
}

impl Creating {
    fn new(engine: &Arc<Engine>, id: &str) -> Self {
        engine
            .creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.to_string());
        Self {
            engine: Arc::clone(engine),
            id: id.to_string(),
        }
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        self.engine
            .creating
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

/// Takes a runner's execution off the live map (unless a newer runner replaced it) and
/// marks it ended when the runner's task ends, even by a panic.
struct Retire {
    engine: Arc<Engine>,
    execution_id: String,
    live: Arc<Live>,
}

impl Drop for Retire {
    fn drop(&mut self) {
        {
            let mut map = self.engine.live_map();
            if map
                .get(&self.execution_id)
                .is_some_and(|l| Arc::ptr_eq(l, &self.live))
            {
                map.remove(&self.execution_id);
            }
        }
        self.live.ended.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::{CallApiAction, action::Kind};

    fn request(url: &str, deadline_ms: Option<i64>) -> StartRequest {
        let mut call = CallApiAction {
            url: url.into(),
            ..Default::default()
        };
        call.headers.insert("b".into(), "2".into());
        call.headers.insert("a".into(), "1".into());
        StartRequest {
            idempotency_key: "k".into(),
            action: Action {
                kind: Some(Kind::CallApi(call)),
            },
            deadline_ms,
            origin: None,
        }
    }

    #[test]
    fn the_fingerprint_ignores_the_key_and_sees_the_request() {
        let a = request("http://x/", Some(5));
        let mut b = a.clone();
        b.idempotency_key = "other".into();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&request("http://y/", Some(5))));
        assert_ne!(fingerprint(&a), fingerprint(&request("http://x/", Some(6))));
        assert_ne!(fingerprint(&a), fingerprint(&request("http://x/", None)));
        assert_eq!(fingerprint(&a).len(), 64);
    }
}
