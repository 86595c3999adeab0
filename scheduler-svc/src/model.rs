//! The scheduler's domain types: schedules, their policies, runs and attempts. Plain
//! Rust, no tonic and no SQL; times are whole UTC milliseconds (DESIGN §4.3).

use almanac_proto::executor::v1::Action;
use serde::{Deserialize, Serialize};

use crate::spec::Spec;

/// The catch-up window when a schedule sets none.
pub const DEFAULT_CATCHUP_WINDOW_MS: i64 = 60_000;
/// The cap on RUN_ALL recovery runs when a schedule sets none.
pub const DEFAULT_MAX_CATCHUP: u32 = 100;

/// A schedule: a spec, an action, policies, and the state the scheduler derives.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub spec: Spec,
    pub action: Action,
    pub policy: Policy,
    pub state: ScheduleState,
    pub pause: Option<PauseInfo>,
    /// The next nominal fire time; `None` when nothing is left to fire or while paused.
    pub next_fire_ms: Option<i64>,
    /// Runs counted against `max_runs`.
    pub run_count: i64,
    /// Bumped on every change; the etag is derived from it.
    pub version: i64,
    pub request_id: Option<String>,
    pub completion_reason: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl Schedule {
    /// The opaque etag clients send back to update.
    pub fn etag(&self) -> String {
        format!("v{}", self.version)
    }
}

/// Parses an etag made by [`Schedule::etag`].
pub fn parse_etag(etag: &str) -> Option<i64> {
    etag.strip_prefix('v')?.parse().ok()
}

/// Everything a user sets besides the spec and action; stored as one JSON document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub max_runs: Option<i64>,
    pub jitter_ms: i64,
    pub overlap: Overlap,
    pub catchup: Catchup,
    /// The time allowed to one attempt.
    pub timeout_ms: Option<i64>,
}

/// What a fire does while a run of the same schedule is in flight (DESIGN §4.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Overlap {
    #[default]
    Skip,
    BufferOne,
    BufferAll,
    CancelOther,
    TerminateOther,
    AllowAll,
}

impl Overlap {
    /// Whether this version can honour the policy.
    pub fn is_supported(self) -> bool {
        matches!(self, Overlap::Skip | Overlap::AllowAll)
    }
}

/// What happens to fires the scheduler missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Catchup {
    pub window_ms: i64,
    pub misfire: Misfire,
    pub max_catchup: u32,
}

impl Default for Catchup {
    fn default() -> Self {
        Self {
            window_ms: DEFAULT_CATCHUP_WINDOW_MS,
            misfire: Misfire::RunOnce,
            max_catchup: DEFAULT_MAX_CATCHUP,
        }
    }
}

/// What happens to missed fires inside the catch-up window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Misfire {
    #[default]
    RunOnce,
    RunAll,
    Skip,
}

/// A schedule's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleState {
    Active,
    Paused,
    Completed,
}

/// Who paused a schedule, when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseInfo {
    pub note: String,
    pub identity: String,
    pub at_ms: i64,
}

/// Why a run exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Scheduled,
    Recovery,
    Manual,
    Backfill,
}

impl Trigger {
    /// Whether a dispatched run of this trigger counts against `max_runs`.
    pub fn counts_against_max_runs(self) -> bool {
        !matches!(self, Trigger::Manual)
    }
}

/// The state of a run or of one of its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Buffered,
    Skipped,
    Missed,
}

impl RunStatus {
    /// PENDING and RUNNING runs are in flight: they decide overlap.
    pub fn is_in_flight(self) -> bool {
        matches!(self, RunStatus::Pending | RunStatus::Running)
    }
    /// Whether nothing will change this status again.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            RunStatus::Pending | RunStatus::Running | RunStatus::Buffered
        )
    }
}

/// For a MISSED row: the range of fires it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissedRange {
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: i64,
}

/// The ledger's record of one fire.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub schedule_id: String,
    pub nominal_ms: i64,
    pub trigger: Trigger,
    pub status: RunStatus,
    /// The current attempt (0 for rows that never dispatch).
    pub attempt: u32,
    pub dispatch_after_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub error: Option<String>,
    /// The execution's result, as JSON.
    pub result: Option<serde_json::Value>,
    pub reason: Option<String>,
    pub coalesced_into: Option<String>,
    pub missed: Option<MissedRange>,
    pub request_id: Option<String>,
    pub created_ms: i64,
    pub attempts: Vec<Attempt>,
}

/// One dispatch of a run: one execution on the executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub number: u32,
    pub execution_key: String,
    pub execution_id: Option<String>,
    pub deadline_ms: Option<i64>,
    pub last_seq: u64,
    pub status: RunStatus,
    pub error: Option<String>,
    pub retryable: bool,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

/// The idempotency key of an attempt (DESIGN invariant 4).
pub fn execution_key(run_id: &str, attempt: u32) -> String {
    format!("{run_id}/{attempt}")
}

/// Everything the dispatcher needs to send one attempt to the executor.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchJob {
    pub run_id: String,
    pub schedule_id: String,
    pub nominal_ms: i64,
    pub status: RunStatus,
    pub attempt: u32,
    pub execution_key: String,
    pub dispatch_after_ms: i64,
    pub deadline_ms: Option<i64>,
    pub last_seq: u64,
    /// The action as it was when the run was written.
    pub action: Action,
}

/// How an attempt ended, as the executor's last event said.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub status: RunStatus,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub retryable: bool,
    pub finished_ms: i64,
    pub last_seq: u64,
}
