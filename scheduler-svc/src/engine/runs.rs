//! The API's use cases on runs: manual triggers, previews of fire times, and reading the
//! ledger back page by page.

use std::sync::Arc;

use super::Engine;
use super::overlap::InFlight;
use super::policy::plan_manual;
use super::schedules::{
    DEFAULT_PREVIEW, MAX_PREVIEW, bad_token, decode_token, encode_token, not_found, page_size,
};
use crate::error::SchedulerError;
use crate::model::{CancelMode, Overlap, Policy, Run, RunStatus, Schedule};

/// Fires one backfill may cover.
pub const MAX_BACKFILL: usize = 10_000;
/// Backfill runs started per second when a request does not say, and at most.
pub const DEFAULT_BACKFILL_RATE: u32 = 10;
pub const MAX_BACKFILL_RATE: u32 = 1_000;
use crate::spec::Spec;
use crate::store::RunCursor;

impl Engine {
    /// Runs the schedule's action now, as a MANUAL run that follows the overlap policy
    /// (or `overlap`).
    pub async fn trigger_schedule(
        self: &Arc<Self>,
        id: &str,
        request_id: Option<String>,
        overlap: Option<Overlap>,
    ) -> Result<Run, SchedulerError> {
        let now = self.clock.now_ms();
        let plan = |s: &Schedule, in_flight: &InFlight| {
            plan_manual(s, in_flight, now, request_id.clone(), overlap)
        };
        let (run, effects) = self
            .store
            .trigger(id, request_id.as_deref(), now, &plan)
            .await?;
        self.effects.apply(effects);
        Ok(run)
    }

    /// Cancels a run: waiting ones end CANCELLED at once, a running one is asked to stop
    /// (`mode`) and ends when its execution does.
    pub async fn cancel_run(
        &self,
        run_id: &str,
        mode: CancelMode,
        reason: &str,
    ) -> Result<Run, SchedulerError> {
        let (run, effects) = self
            .store
            .cancel_run(run_id, mode, reason, self.clock.now_ms())
            .await?;
        self.effects.apply(effects);
        tracing::info!(run_id, mode = ?mode, "run cancellation requested");
        Ok(run)
    }

    /// Runs a finished run again, as a new attempt dispatched now.
    pub async fn rerun_run(&self, run_id: &str) -> Result<Run, SchedulerError> {
        let (run, effects) = self.store.rerun_run(run_id, self.clock.now_ms()).await?;
        self.effects.apply(effects);
        tracing::info!(run_id, attempt = run.attempt, "run started again");
        Ok(run)
    }

    /// Writes BACKFILL rows for the fires of `[start_ms, end_ms]` (existing rows left
    /// untouched) and runs them at most `per_second` a second (ALLOW_ALL) or one at a
    /// time (BUFFER_ALL).
    pub async fn backfill(
        &self,
        schedule_id: &str,
        start_ms: i64,
        end_ms: i64,
        overlap: Option<Overlap>,
        per_second: u32,
    ) -> Result<(Vec<String>, i64), SchedulerError> {
        let now = self.clock.now_ms();
        if end_ms < start_ms {
            return Err(SchedulerError::invalid(
                "end_time",
                "must not be before start_time",
            ));
        }
        if end_ms > now {
            return Err(SchedulerError::invalid(
                "end_time",
                "a backfill covers the past: end_time must not be in the future",
            ));
        }
        let buffered = match overlap.unwrap_or(Overlap::AllowAll) {
            Overlap::AllowAll => false,
            Overlap::BufferAll => true,
            other => {
                return Err(SchedulerError::invalid(
                    "overlap_policy",
                    format!(
                        "a backfill runs ALLOW_ALL (at the rate) or BUFFER_ALL (one at a time), not {other:?}"
                    ),
                ));
            }
        };
        let per_second = match per_second {
            0 => DEFAULT_BACKFILL_RATE,
            n if n > MAX_BACKFILL_RATE => {
                return Err(SchedulerError::invalid(
                    "max_per_second",
                    format!("at most {MAX_BACKFILL_RATE}"),
                ));
            }
            n => n,
        };
        let schedule = self.get_schedule(schedule_id).await?;
        let spec = schedule
            .spec
            .compile()
            .map_err(|e| SchedulerError::invalid(format!("spec.{}", e.field), e.message))?;
        // The schedule's own bounds hold for a backfill too: no fire before its start_time
        // or after its end_time.
        let from = schedule
            .policy
            .start_ms
            .map_or(start_ms, |s| s.max(start_ms));
        let to = schedule.policy.end_ms.map_or(end_ms, |e| e.min(end_ms));
        let fires: Vec<i64> = spec
            .fires_from(from)
            .take_while(|&f| f <= to)
            .take(MAX_BACKFILL + 1)
            .collect();
        if fires.len() > MAX_BACKFILL {
            return Err(SchedulerError::invalid(
                "end_time",
                format!("the range holds more than {MAX_BACKFILL} fires: backfill it in parts"),
            ));
        }
        let spacing = 1_000 / i64::from(per_second);
        let (written, existing, effects) = self
            .store
            .backfill(schedule_id, &fires, buffered, spacing, now)
            .await?;
        self.effects.apply(effects);
        tracing::info!(
            schedule_id,
            created = written.len(),
            existing,
            "backfill written"
        );
        Ok((written, existing))
    }

    /// The next `count` fire times of a spec (or a stored schedule's spec and bounds)
    /// at or after `start_ms` (default now).
    pub async fn preview(
        &self,
        spec: Option<Spec>,
        schedule_id: &str,
        start_ms: Option<i64>,
        count: i32,
    ) -> Result<Vec<i64>, SchedulerError> {
        let count = match count {
            n if n <= 0 => DEFAULT_PREVIEW,
            n => (n as usize).min(MAX_PREVIEW),
        };
        let (spec, policy) = match (spec, schedule_id) {
            (Some(spec), "") => (spec, Policy::default()),
            (None, "") => {
                return Err(SchedulerError::invalid(
                    "spec",
                    "a spec or a schedule_id is required",
                ));
            }
            (Some(_), _) => {
                return Err(SchedulerError::invalid(
                    "schedule_id",
                    "give a spec or a schedule_id, not both",
                ));
            }
            (None, id) => {
                let s = self.get_schedule(id).await?;
                (s.spec, s.policy)
            }
        };
        let compiled = spec
            .compile()
            .map_err(|e| SchedulerError::invalid(format!("spec.{}", e.field), e.message))?;
        let from = start_ms.unwrap_or_else(|| self.clock.now_ms());
        let from = policy.start_ms.map_or(from, |s| s.max(from));
        Ok(compiled
            .fires_from(from)
            .take_while(|&f| policy.end_ms.is_none_or(|end| f <= end))
            .take(count)
            .collect())
    }

    /// One run with its attempts.
    pub async fn get_run(&self, run_id: &str) -> Result<Run, SchedulerError> {
        self.store
            .get_run(run_id)
            .await?
            .ok_or_else(|| not_found("run", run_id))
    }

    /// A page of a schedule's runs, newest first.
    pub async fn list_runs(
        &self,
        schedule_id: &str,
        status: Option<RunStatus>,
        page_size_requested: i32,
        page_token: &str,
    ) -> Result<(Vec<Run>, String), SchedulerError> {
        if schedule_id.is_empty() {
            return Err(SchedulerError::invalid("schedule_id", "required"));
        }
        let before: Option<RunCursor> = if page_token.is_empty() {
            None
        } else {
            let text = decode_token(page_token).ok_or_else(bad_token)?;
            let (ms, id) = text.split_once(':').ok_or_else(bad_token)?;
            Some((ms.parse().map_err(|_| bad_token())?, id.to_string()))
        };
        if before.is_none() && self.store.get_schedule(schedule_id).await?.is_none() {
            return Err(not_found("schedule", schedule_id));
        }
        let limit = page_size(page_size_requested);
        let mut page = self
            .store
            .list_runs(schedule_id, status, before, limit + 1)
            .await?;
        let next = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last()
                .map(|r| encode_token(&format!("{}:{}", r.nominal_ms, r.id)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }
}
