//! The live node view of a followed execution, as a pure model: built from the execution
//! (its node table, plus the pipeline's nodes that have not started yet) and updated by its
//! events; `watch_view_render.rs` renders it for a given instant into lines. No I/O and no
//! clock here: `live.rs` draws the lines and says what time it is.

use almanac_proto::executor::v1::{
    Execution, ExecutionEvent, ExecutionStatus, NodeRun, NodeStatus, Pipeline,
    execution_event::Kind,
};
use almanac_proto::time::{duration_to_ms, timestamp_to_ms};

use crate::pipeline_view::node_kind;

/// Where one node is.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Pending,
    Running {
        since_ms: i64,
    },
    Succeeded {
        took_ms: Option<i64>,
    },
    Failed {
        error: String,
        took_ms: Option<i64>,
    },
    Retrying {
        error: String,
        next_attempt: u32,
        at_ms: i64,
        backoff_ms: i64,
    },
    Skipped {
        reason: String,
    },
    Cancelled {
        error: String,
    },
    TimedOut {
        error: String,
    },
}

impl Phase {
    /// The status word, also the order of the summary's counts.
    fn word(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running { .. } => "running",
            Phase::Succeeded { .. } => "succeeded",
            Phase::Failed { .. } => "failed",
            Phase::Retrying { .. } => "retrying",
            Phase::Skipped { .. } => "skipped",
            Phase::Cancelled { .. } => "cancelled",
            Phase::TimedOut { .. } => "timed_out",
        }
    }
}

#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    kind: String,
    /// The latest attempt started (0: none yet).
    attempt: u32,
    phase: Phase,
    progress: Option<(f64, String)>,
}

/// How the execution ended.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    /// An `ExecutionStatus`.
    status: i32,
    /// Why it did not succeed.
    error: String,
    at_ms: Option<i64>,
}

/// One execution as the live view shows it.
#[derive(Debug, Clone, Default)]
pub struct View {
    title: String,
    nodes: Vec<NodeLine>,
    started_ms: Option<i64>,
    finished: Option<Outcome>,
    last_seq: u64,
    note: String,
    /// A read of the execution whose node table is taken in once the events reach it.
    snapshot: Option<Execution>,
}

impl View {
    /// An empty view under a title (`execution ID  execute_pipeline health-check`).
    pub fn new(title: String) -> Self {
        Self {
            title,
            ..Self::default()
        }
    }

    /// Lists a pipeline's nodes, in its order, as pending (those not known yet).
    pub fn add_pipeline(&mut self, pipeline: &Pipeline) {
        for node in &pipeline.nodes {
            self.node(&node.id, || node_kind(node));
        }
    }

    /// The view of an execution as GetExecution returned it (`definition`: its pipeline,
    /// to list the nodes that have not started), to be brought up to date by its events
    /// **from seq 1**: events alone say that a node is retrying and until when, or why it
    /// was skipped. Until they have caught up with the read (its `last_seq`) the nodes are
    /// listed as pending; then the node table adds what no event says (nodes CANCELLED
    /// when the execution failed). An execution read with no event is shown as read.
    pub fn from_execution(title: String, e: &Execution, definition: Option<&Pipeline>) -> Self {
        let mut view = Self::new(title);
        if let Some(p) = definition {
            view.add_pipeline(p);
        }
        for run in &e.nodes {
            view.node(&run.node_id, || run.kind.clone());
        }
        view.started_ms = e.create_time.as_ref().map(timestamp_to_ms);
        if e.last_seq == 0 {
            view.refresh(e);
        } else {
            view.snapshot = Some(e.clone());
        }
        view
    }

    /// Takes in the node table (and the outcome) of a newer read of the execution: what
    /// events cannot say, such as nodes CANCELLED when the execution failed.
    pub fn refresh(&mut self, e: &Execution) {
        let mut runs: Vec<&NodeRun> = e.nodes.iter().collect();
        runs.sort_by_key(|r| r.attempt);
        for run in runs {
            self.apply_run(run);
        }
        let done = ExecutionStatus::try_from(e.status).is_ok_and(|s| {
            !matches!(
                s,
                ExecutionStatus::Unspecified | ExecutionStatus::Pending | ExecutionStatus::Running
            )
        });
        if done && self.finished.is_none() {
            self.finished = Some(Outcome {
                status: e.status,
                error: e.error.clone(),
                at_ms: e.finish_time.as_ref().map(timestamp_to_ms),
            });
        }
    }

    /// Whether the events have not yet caught up with the read the view was built from
    /// (drawing then would show the past).
    pub fn catching_up(&self) -> bool {
        self.snapshot.is_some()
    }

    /// A remark after the summary (e.g. that the stream is being re-attached); empty
    /// clears it.
    pub fn set_note(&mut self, note: String) {
        self.note = note;
    }

    fn node(&mut self, id: &str, kind: impl FnOnce() -> String) -> &mut NodeLine {
        let i = match self.nodes.iter().position(|n| n.id == id) {
            Some(i) => i,
            None => {
                self.nodes.push(NodeLine {
                    id: id.to_owned(),
                    kind: kind(),
                    attempt: 0,
                    phase: Phase::Pending,
                    progress: None,
                });
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn apply_run(&mut self, run: &NodeRun) {
        let node = self.node(&run.node_id, || run.kind.clone());
        if run.attempt < node.attempt {
            return;
        }
        let start = run.start_time.as_ref().map(timestamp_to_ms);
        let took = run
            .duration
            .as_ref()
            .and_then(duration_to_ms)
            .or_else(|| Some(timestamp_to_ms(run.finish_time.as_ref()?) - start?));
        // The table knows less than the events about a node waiting for its next attempt
        // (it says FAILED) and about why a node was skipped.
        match (&node.phase, NodeStatus::try_from(run.status)) {
            (Phase::Retrying { next_attempt, .. }, Ok(NodeStatus::Failed))
                if *next_attempt > run.attempt =>
            {
                return;
            }
            (Phase::Skipped { reason }, Ok(NodeStatus::Skipped))
                if !reason.is_empty() && run.error.is_empty() =>
            {
                return;
            }
            _ => {}
        }
        let phase = match NodeStatus::try_from(run.status) {
            Ok(NodeStatus::Pending) => Phase::Pending,
            Ok(NodeStatus::Running) => Phase::Running {
                since_ms: start.unwrap_or_default(),
            },
            Ok(NodeStatus::Succeeded) => Phase::Succeeded { took_ms: took },
            Ok(NodeStatus::Failed) => Phase::Failed {
                error: run.error.clone(),
                took_ms: took,
            },
            Ok(NodeStatus::Skipped) => Phase::Skipped {
                reason: run.error.clone(),
            },
            Ok(NodeStatus::Cancelled) => Phase::Cancelled {
                error: run.error.clone(),
            },
            Ok(NodeStatus::TimedOut) => Phase::TimedOut {
                error: run.error.clone(),
            },
            Ok(NodeStatus::Unspecified) | Err(_) => return,
        };
        // A time the row lacks but the events gave is kept.
        let phase = match (phase, &node.phase) {
            (Phase::Succeeded { took_ms: None }, Phase::Succeeded { took_ms }) => {
                Phase::Succeeded { took_ms: *took_ms }
            }
            (
                Phase::Failed {
                    error,
                    took_ms: None,
                },
                Phase::Failed { took_ms, .. },
            ) => Phase::Failed {
                error,
                took_ms: *took_ms,
            },
            (Phase::Running { .. }, Phase::Running { since_ms }) if start.is_none() => {
                Phase::Running {
                    since_ms: *since_ms,
                }
            }
            (phase, _) => phase,
        };
        node.attempt = run.attempt;
        node.phase = phase;
    }

    /// Applies one event; events already seen (by seq) are ignored.
    pub fn apply(&mut self, event: &ExecutionEvent) {
        if event.seq != 0 && event.seq <= self.last_seq {
            return;
        }
        self.last_seq = self.last_seq.max(event.seq);
        let at = event.time.as_ref().map(timestamp_to_ms).unwrap_or_default();
        let Some(kind) = &event.kind else {
            return;
        };
        match kind {
            Kind::ExecutionStarted(_) => self.started_ms = self.started_ms.or(Some(at)),
            Kind::ExecutionFinished(f) => {
                self.finished = Some(Outcome {
                    status: f.status,
                    error: f.error.clone(),
                    at_ms: Some(at),
                });
            }
            Kind::NodeStarted(n) => {
                let node = self.node(&n.node_id, String::new);
                node.attempt = n.attempt;
                node.phase = Phase::Running { since_ms: at };
                node.progress = None;
            }
            Kind::NodeSucceeded(n) => {
                let node = self.node(&n.node_id, String::new);
                let took = n
                    .duration
                    .as_ref()
                    .and_then(duration_to_ms)
                    .or_else(|| node.since().map(|s| at - s));
                node.attempt = node.attempt.max(n.attempt);
                node.phase = Phase::Succeeded { took_ms: took };
            }
            Kind::NodeFailed(n) => {
                let node = self.node(&n.node_id, String::new);
                let took = node.since().map(|s| at - s);
                node.attempt = node.attempt.max(n.attempt);
                node.phase = Phase::Failed {
                    error: n.error.clone(),
                    took_ms: took,
                };
            }
            Kind::NodeRetrying(n) => {
                let node = self.node(&n.node_id, String::new);
                let error = match &node.phase {
                    Phase::Failed { error, .. } => error.clone(),
                    _ => String::new(),
                };
                let backoff_ms = n
                    .backoff
                    .as_ref()
                    .and_then(duration_to_ms)
                    .unwrap_or_default();
                node.phase = Phase::Retrying {
                    error,
                    next_attempt: n.attempt,
                    at_ms: at + backoff_ms,
                    backoff_ms,
                };
            }
            Kind::NodeSkipped(n) => {
                self.node(&n.node_id, String::new).phase = Phase::Skipped {
                    reason: n.reason.clone(),
                };
            }
            Kind::Progress(p) => {
                self.node(&p.node_id, String::new).progress = Some((p.percent, p.message.clone()));
            }
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|e| self.last_seq >= e.last_seq)
            && let Some(e) = self.snapshot.take()
        {
            self.refresh(&e);
        }
    }
}

impl NodeLine {
    fn since(&self) -> Option<i64> {
        match self.phase {
            Phase::Running { since_ms } => Some(since_ms),
            _ => None,
        }
    }
}

#[path = "watch_view_render.rs"]
mod render;

pub use render::fit;

#[cfg(test)]
#[path = "watch_view_tests.rs"]
mod tests;
