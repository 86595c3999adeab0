//! The API's use cases on runs: manual triggers, previews of fire times, and reading the
//! ledger back page by page.

use std::sync::Arc;

use super::Engine;
use super::policy::plan_manual;
use super::schedules::{
    DEFAULT_PREVIEW, MAX_PREVIEW, bad_token, decode_token, encode_token, not_found, page_size,
};
use crate::error::SchedulerError;
use crate::model::{Overlap, Policy, Run, RunStatus, Schedule};
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
        if let Some(o) = overlap.filter(|o| !o.is_supported()) {
            return Err(SchedulerError::invalid(
                "overlap_policy",
                format!("{o:?} is not available in this version; use SKIP or ALLOW_ALL"),
            ));
        }
        let now = self.clock.now_ms();
        let plan = |s: &Schedule, in_flight: Option<String>| {
            plan_manual(s, in_flight.as_deref(), now, request_id.clone(), overlap)
        };
        let (run, dispatch) = self.store.trigger(id, request_id.as_deref(), &plan).await?;
        if dispatch {
            self.dispatcher.dispatch(run.id.clone());
        }
        Ok(run)
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
