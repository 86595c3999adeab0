//! The executor's domain records: executions, node runs, events and the transitions that
//! append an event and update the rows it implies. Plain Rust (no tonic, no SQL); the
//! action and origin stay the contract's messages because they are defined once, there.

use almanac_proto::executor::v1::{Action, Origin, Pipeline};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The node id of a single action: every execution is a graph, a single action is the
/// one-node graph whose node is called `action`.
pub const SINGLE_ACTION_NODE: &str = "action";

/// The state of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Stored, not started.
    Pending,
    /// Running (or waiting for a permit to run).
    Running,
    /// Finished well.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Its deadline passed.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
}

/// The state of one node attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    /// Not started.
    Pending,
    /// Running.
    Running,
    /// Finished well.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Not run because no incoming edge was taken.
    Skipped,
    /// Stopped, or never started, because the execution was cancelled or failed.
    Cancelled,
    /// Its deadline passed.
    TimedOut,
}

/// How hard a cancellation stops an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelMode {
    /// Let the work in flight end, start nothing new.
    Graceful,
    /// Abort the work in flight now.
    Terminate,
}

macro_rules! text_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The name stored in the database.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            /// The value of a stored name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(ExecutionStatus {
    Pending => "PENDING", Running => "RUNNING", Succeeded => "SUCCEEDED",
    Failed => "FAILED", TimedOut => "TIMED_OUT", Cancelled => "CANCELLED",
});
text_enum!(NodeStatus {
    Pending => "PENDING", Running => "RUNNING", Succeeded => "SUCCEEDED", Failed => "FAILED",
    Skipped => "SKIPPED", Cancelled => "CANCELLED", TimedOut => "TIMED_OUT",
});
text_enum!(CancelMode { Graceful => "GRACEFUL", Terminate => "TERMINATE" });

impl ExecutionStatus {
    /// Whether nothing more will ever happen to an execution in this state.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled
        )
    }
}

/// One execution as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    /// UUIDv7, assigned by the executor.
    pub id: String,
    /// The key it was started under (unique).
    pub idempotency_key: String,
    /// sha256 (hex) of the request's action, deadline and origin.
    pub fingerprint: String,
    /// What it runs.
    pub action: Action,
    /// Where it comes from.
    pub origin: Option<Origin>,
    /// When it must be over.
    pub deadline_ms: Option<i64>,
    /// Its state.
    pub status: ExecutionStatus,
    /// The result of a finished execution.
    pub result: Option<Value>,
    /// Why it failed, timed out or was cancelled.
    pub error: String,
    /// Whether a new execution might succeed where this one failed.
    pub retryable: bool,
    /// The cancellation asked for, if any.
    pub cancel_requested: Option<CancelMode>,
    /// The reason given with the cancellation.
    pub cancel_reason: String,
    /// When it was stored.
    pub created_ms: i64,
    /// When it started running.
    pub started_ms: Option<i64>,
    /// When it finished.
    pub finished_ms: Option<i64>,
    /// The seq of its last event.
    pub last_seq: u64,
    /// For `execute_pipeline`: the pipeline version it runs, fixed when it started.
    pub pipeline: Option<Pipeline>,
    /// The replica holding its lease (the one running it), if any.
    pub owner: Option<String>,
    /// When that lease ends unless renewed (`None`: never taken).
    pub lease_until_ms: Option<i64>,
    /// Grows by one at every take-over; a runner's writes apply only under its own epoch.
    pub lease_epoch: u64,
}

/// What the store needs to create an execution.
#[derive(Debug, Clone)]
pub struct NewExecution {
    /// UUIDv7.
    pub id: String,
    /// The unique key.
    pub idempotency_key: String,
    /// sha256 (hex) of the request.
    pub fingerprint: String,
    /// What it runs.
    pub action: Action,
    /// Where it comes from.
    pub origin: Option<Origin>,
    /// When it must be over.
    pub deadline_ms: Option<i64>,
    /// Now.
    pub created_ms: i64,
    /// For `execute_pipeline`: the pipeline version it runs.
    pub pipeline: Option<Pipeline>,
    /// The replica creating it, which takes its lease (epoch 1).
    pub owner: String,
    /// When that first lease ends unless renewed.
    pub lease_until_ms: i64,
    /// A single action's first attempt, begun with the execution (its creator holds a
    /// permit to run it): its `NodeStarted` is stored in the same transaction, as seq 2.
    pub first_node: Option<FirstNode>,
}

/// The first attempt of a single action's node, begun as its execution is created.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstNode {
    /// The node ([`SINGLE_ACTION_NODE`]).
    pub node_id: String,
    /// The node kind, e.g. "call_api".
    pub kind: String,
    /// What the node is given: the action with its templates rendered.
    pub input: Value,
}

impl NewExecution {
    /// The events the store holds once this is created, at `created_ms`:
    /// `ExecutionStarted` (seq 1), then the first node's `NodeStarted` (seq 2) if begun.
    pub fn events(&self) -> Vec<Event> {
        let mut events = vec![Event::started(
            &self.id,
            &self.idempotency_key,
            self.created_ms,
        )];
        if let Some(first) = &self.first_node {
            events.push(Event {
                execution_id: self.id.clone(),
                seq: 2,
                at_ms: self.created_ms,
                kind: EventKind::NodeStarted {
                    node_id: first.node_id.clone(),
                    attempt: 1,
                },
            });
        }
        events
    }

    /// The transition that begins the first node (attempt 1), if it is begun.
    pub fn first_node_started(&self) -> Option<Transition> {
        self.first_node.as_ref().map(|n| Transition::NodeStarted {
            node_id: n.node_id.clone(),
            kind: n.kind.clone(),
            attempt: 1,
            input: n.input.clone(),
        })
    }

    /// The record the store holds once this is created: RUNNING since `created_ms`, its
    /// events as [`Self::events`] says, leased to its creator at epoch 1.
    pub fn record(&self) -> ExecutionRecord {
        ExecutionRecord {
            id: self.id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            fingerprint: self.fingerprint.clone(),
            action: self.action.clone(),
            origin: self.origin.clone(),
            deadline_ms: self.deadline_ms,
            status: ExecutionStatus::Running,
            result: None,
            error: String::new(),
            retryable: false,
            cancel_requested: None,
            cancel_reason: String::new(),
            created_ms: self.created_ms,
            started_ms: Some(self.created_ms),
            finished_ms: None,
            last_seq: if self.first_node.is_some() { 2 } else { 1 },
            pipeline: self.pipeline.clone(),
            owner: Some(self.owner.clone()),
            lease_until_ms: Some(self.lease_until_ms),
            lease_epoch: 1,
        }
    }
}

/// One attempt of one node, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRunRecord {
    /// The node ("action" for a single action).
    pub node_id: String,
    /// The node kind, e.g. "call_api".
    pub kind: String,
    /// From 1.
    pub attempt: u32,
    /// Its state.
    pub status: NodeStatus,
    /// What it was given.
    pub input: Option<Value>,
    /// Its output, when it succeeded.
    pub output: Option<Value>,
    /// Its error, when it failed.
    pub error: String,
    /// Whether retrying could help.
    pub retryable: bool,
    /// When it started.
    pub started_ms: Option<i64>,
    /// When it finished.
    pub finished_ms: Option<i64>,
}

/// What happened, as stored in an event's payload (JSON, tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// Always seq 1.
    ExecutionStarted {
        /// The execution.
        execution_id: String,
        /// The key it runs under.
        idempotency_key: String,
    },
    /// A node attempt began.
    NodeStarted {
        /// The node.
        node_id: String,
        /// From 1.
        attempt: u32,
    },
    /// A node attempt succeeded.
    NodeSucceeded {
        /// The node.
        node_id: String,
        /// The attempt.
        attempt: u32,
        /// Its output.
        output: Value,
        /// How long the attempt ran.
        duration_ms: i64,
    },
    /// A node attempt failed (or was cancelled, or timed out).
    NodeFailed {
        /// The node.
        node_id: String,
        /// The attempt.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether retrying could help.
        retryable: bool,
    },
    /// A node will be attempted again after a backoff.
    NodeRetrying {
        /// The node.
        node_id: String,
        /// The coming attempt.
        attempt: u32,
        /// The wait before it.
        backoff_ms: i64,
    },
    /// A running node reported progress.
    Progress {
        /// The node.
        node_id: String,
        /// 0 to 100.
        percent: f64,
        /// A short message.
        message: String,
    },
    /// A node will not run (skipped, or cancelled before it started).
    NodeSkipped {
        /// The node.
        node_id: String,
        /// Why.
        reason: String,
    },
    /// The execution ended; always the last event.
    ExecutionFinished {
        /// The final status.
        status: ExecutionStatus,
        /// The result, when it succeeded.
        result: Option<Value>,
        /// Why it did not succeed.
        error: String,
        /// Whether a new execution might succeed.
        retryable: bool,
    },
}

/// One entry of an execution's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The execution.
    pub execution_id: String,
    /// Dense, from 1.
    pub seq: u64,
    /// When it was recorded.
    pub at_ms: i64,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The first event of a new execution, seq 1, as `ExecutorStore::create_execution`
    /// stores it.
    pub fn started(execution_id: &str, idempotency_key: &str, at_ms: i64) -> Self {
        Self {
            execution_id: execution_id.to_owned(),
            seq: 1,
            at_ms,
            kind: EventKind::ExecutionStarted {
                execution_id: execution_id.to_owned(),
                idempotency_key: idempotency_key.to_owned(),
            },
        }
    }

    /// Whether this event closes the log.
    pub fn is_final(&self) -> bool {
        matches!(self.kind, EventKind::ExecutionFinished { .. })
    }
}

/// A change to an execution: the event to append and, implied by it, the row updates
/// the store applies in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Insert the node attempt's row (RUNNING). (Executions are RUNNING from their
    /// creation.)
    NodeStarted {
        /// The node.
        node_id: String,
        /// The node kind.
        kind: String,
        /// From 1.
        attempt: u32,
        /// What the node is given.
        input: Value,
    },
    /// The attempt's row becomes SUCCEEDED with its output.
    NodeSucceeded {
        /// The node.
        node_id: String,
        /// The attempt.
        attempt: u32,
        /// Its output.
        output: Value,
        /// How long it ran.
        duration_ms: i64,
    },
    /// The attempt's row becomes `status` (FAILED, CANCELLED or TIMED_OUT).
    NodeFailed {
        /// The node.
        node_id: String,
        /// The attempt.
        attempt: u32,
        /// FAILED, CANCELLED or TIMED_OUT.
        status: NodeStatus,
        /// What went wrong.
        error: String,
        /// Whether retrying could help.
        retryable: bool,
    },
    /// Only the event: the node will be attempted again after `backoff_ms`.
    NodeRetrying {
        /// The node.
        node_id: String,
        /// The coming attempt.
        attempt: u32,
        /// The wait before it.
        backoff_ms: i64,
    },
    /// Only the event: a running node reported progress.
    Progress {
        /// The node.
        node_id: String,
        /// 0 to 100.
        percent: f64,
        /// A short message.
        message: String,
    },
    /// A node that will not run gets a row (attempt 0) with `status` SKIPPED or
    /// CANCELLED.
    NodeSkipped {
        /// The node.
        node_id: String,
        /// The node kind.
        kind: String,
        /// SKIPPED (no edge taken) or CANCELLED (the execution stopped first).
        status: NodeStatus,
        /// Why.
        reason: String,
    },
    /// The execution's row gets its final status, result, error and finish time; node
    /// rows still RUNNING (left by a crash) are closed as CANCELLED.
    ExecutionFinished {
        /// The final status.
        status: ExecutionStatus,
        /// The result, when it succeeded.
        result: Option<Value>,
        /// Why it did not succeed.
        error: String,
        /// Whether a new execution might succeed.
        retryable: bool,
    },
}

impl Transition {
    /// The event this transition appends.
    pub fn event_kind(&self) -> EventKind {
        match self.clone() {
            Self::NodeStarted {
                node_id, attempt, ..
            } => EventKind::NodeStarted { node_id, attempt },
            Self::NodeSucceeded {
                node_id,
                attempt,
                output,
                duration_ms,
            } => EventKind::NodeSucceeded {
                node_id,
                attempt,
                output,
                duration_ms,
            },
            Self::NodeFailed {
                node_id,
                attempt,
                error,
                retryable,
                ..
            } => EventKind::NodeFailed {
                node_id,
                attempt,
                error,
                retryable,
            },
            Self::NodeRetrying {
                node_id,
                attempt,
                backoff_ms,
            } => EventKind::NodeRetrying {
                node_id,
                attempt,
                backoff_ms,
            },
            Self::Progress {
                node_id,
                percent,
                message,
            } => EventKind::Progress {
                node_id,
                percent,
                message,
            },
            Self::NodeSkipped {
                node_id, reason, ..
            } => EventKind::NodeSkipped { node_id, reason },
            Self::ExecutionFinished {
                status,
                result,
                error,
                retryable,
            } => EventKind::ExecutionFinished {
                status,
                result,
                error,
                retryable,
            },
        }
    }
}

/// A filter and a position for listing executions, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only executions whose id sorts before this one (the previous page's last).
    pub before_id: Option<String>,
    /// Only executions in this status.
    pub status: Option<ExecutionStatus>,
    /// Only executions started for this schedule.
    pub schedule_id: Option<String>,
    /// At most this many.
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_stored_names() {
        for s in [
            ExecutionStatus::Pending,
            ExecutionStatus::Running,
            ExecutionStatus::Succeeded,
            ExecutionStatus::Failed,
            ExecutionStatus::TimedOut,
            ExecutionStatus::Cancelled,
        ] {
            assert_eq!(ExecutionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(NodeStatus::parse("TIMED_OUT"), Some(NodeStatus::TimedOut));
        assert_eq!(CancelMode::parse("nope"), None);
        assert!(CancelMode::Terminate > CancelMode::Graceful);
    }

    #[test]
    fn event_payloads_are_tagged_json() {
        let kind = EventKind::NodeStarted {
            node_id: "action".into(),
            attempt: 2,
        };
        let json = serde_json::to_value(&kind).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "node_started", "node_id": "action", "attempt": 2})
        );
        assert_eq!(serde_json::from_value::<EventKind>(json).unwrap(), kind);
    }
}
