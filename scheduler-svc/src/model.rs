//! The scheduler's domain types: schedules, their policies, runs and attempts. Plain
//! Rust, no tonic and no SQL; times are whole UTC milliseconds (DESIGN §4.3).

use almanac_proto::executor::v1::{Action, SendNotificationAction};
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
    /// Failed runs in a row (reset by a success).
    pub consecutive_failures: i64,
    /// Fires skipped because the buffer was full.
    pub buffer_overruns: i64,
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Retries of failed runs (the second layer of DESIGN §4.4).
    pub retry: Option<RetryPolicy>,
    /// Pause after this many failed runs in a row (0: never).
    pub pause_on_failure: u32,
    /// Sent when a run fails after its retries.
    pub on_failure: Option<SendNotificationAction>,
    /// Sent when a run succeeds after failed runs.
    pub on_recovery: Option<SendNotificationAction>,
    /// BUFFER_ALL's bound (0: the default).
    pub max_buffered: u32,
    /// How long finished runs are kept.
    pub retention: Retention,
}

/// The most runs BUFFER_ALL keeps waiting when a schedule sets no bound.
pub const DEFAULT_MAX_BUFFERED: u32 = 100;

impl Policy {
    /// BUFFER_ALL's bound with its default.
    pub fn max_buffered(&self) -> u32 {
        if self.max_buffered == 0 {
            DEFAULT_MAX_BUFFERED
        } else {
            self.max_buffered
        }
    }
}

/// Retries of failed runs: a new attempt (a new execution key) after a backoff.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff_ms: i64,
    pub max_backoff_ms: i64,
    pub multiplier: f64,
}

impl RetryPolicy {
    /// The wait before attempt `next` (2 for the first retry).
    pub fn backoff_before(&self, next: u32) -> i64 {
        let exponent = next.saturating_sub(2).min(64) as i32;
        let wait = (self.initial_backoff_ms as f64) * self.multiplier.max(1.0).powi(exponent);
        (wait.min(self.max_backoff_ms as f64) as i64).max(0)
    }
}

/// How long finished runs are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Retention {
    /// Keep at most this many finished runs (0: no limit).
    pub keep_last: u32,
    /// Prune finished runs whose nominal time is older than this.
    pub max_age_ms: Option<i64>,
}

impl Retention {
    /// Whether this keeps everything.
    pub fn is_unbounded(&self) -> bool {
        self.keep_last == 0 && self.max_age_ms.is_none()
    }
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
    /// A cancellation asked for while the run was RUNNING.
    pub cancel_requested: Option<CancelMode>,
}

/// How hard a cancellation stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMode {
    /// Work in progress may finish; nothing new starts.
    Graceful,
    /// Work in progress is cut.
    Terminate,
}

/// Which notification a run owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    OnFailure,
    OnRecovery,
}

impl Notification {
    /// The suffix of its execution key, `{run_id}/{suffix}`.
    pub fn key_suffix(self) -> &'static str {
        match self {
            Notification::OnFailure => "on_failure",
            Notification::OnRecovery => "on_recovery",
        }
    }
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
    /// The epoch of the run's owner lease as read.
    pub lease_epoch: i64,
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
