//! The API's use cases on schedules and runs: validation of what users send, the state
//! machine ACTIVE / PAUSED / COMPLETED, manual triggers and previews. Every change goes
//! through the store under the schedule's lock, then tells the timer.

use std::sync::Arc;

use almanac_proto::action::{FieldViolation, validate as validate_action};
use almanac_proto::executor::v1::Action;

use super::Engine;
use super::policy::first_fire;
use crate::error::SchedulerError;
use crate::model::{PauseInfo, Policy, Schedule, ScheduleState, parse_etag};
use crate::spec::Spec;

/// Longest schedule id.
pub const MAX_ID_LEN: usize = 128;
/// Longest display name.
pub const MAX_NAME_LEN: usize = 256;
/// Longest description.
pub const MAX_DESCRIPTION_LEN: usize = 4_096;
/// Shortest interval.
pub const MIN_INTERVAL_MS: i64 = 1_000;
/// Default and largest page sizes; larger requests are clamped, not refused.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// The most attempts a schedule's retry policy may ask for.
pub const MAX_SCHEDULE_ATTEMPTS: u32 = 100;
/// The largest BUFFER_ALL bound.
pub const MAX_BUFFERED: u32 = 10_000;
/// Default and largest preview lengths.
pub const DEFAULT_PREVIEW: usize = 10;
pub const MAX_PREVIEW: usize = 1_000;

/// What a user sets on a schedule. Absent spec or action is an error on create and
/// "unchanged" on an update that does not name them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScheduleInput {
    pub display_name: String,
    pub description: String,
    pub spec: Option<Spec>,
    pub action: Option<Action>,
    pub policy: Policy,
}

/// The fields an update may name.
pub const UPDATABLE: &[&str] = &[
    "retry",
    "pause_on_failure",
    "on_failure",
    "on_recovery",
    "max_buffered",
    "retention",
    "display_name",
    "description",
    "spec",
    "action",
    "start_time",
    "end_time",
    "max_runs",
    "jitter",
    "overlap_policy",
    "catchup",
    "timeout",
];

/// Every problem with a schedule's user-set fields, paths under `prefix`.
fn violations(input: &ScheduleInput, prefix: &str) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let mut bad = |field: &str, description: String| {
        out.push(FieldViolation::new(
            format!("{prefix}.{field}"),
            description,
        ))
    };
    if input.display_name.chars().count() > MAX_NAME_LEN {
        bad("display_name", format!("at most {MAX_NAME_LEN} characters"));
    }
    if input.description.chars().count() > MAX_DESCRIPTION_LEN {
        bad(
            "description",
            format!("at most {MAX_DESCRIPTION_LEN} characters"),
        );
    }
    match &input.spec {
        None => bad(
            "spec",
            "a spec is required: one of cron, interval, once".into(),
        ),
        Some(spec) => {
            if let Err(e) = spec.compile() {
                bad(&format!("spec.{}", e.field), e.message);
            } else if let Spec::Interval { every_ms, .. } = spec
                && *every_ms < MIN_INTERVAL_MS
            {
                bad(
                    "spec.interval.every",
                    format!("must be at least {}s", MIN_INTERVAL_MS / 1000),
                );
            }
        }
    }
    let p = &input.policy;
    if let (Some(start), Some(end)) = (p.start_ms, p.end_ms)
        && end < start
    {
        bad("end_time", "must not be before start_time".into());
    }
    if let Some(max) = p.max_runs
        && max < 1
    {
        bad(
            "max_runs",
            format!("must be at least 1 (got {max}); leave it unset for no limit"),
        );
    }
    if p.jitter_ms < 0 {
        bad("jitter", "must not be negative".into());
    }
    if let Some(t) = p.timeout_ms
        && t <= 0
    {
        bad("timeout", "must be more than 0".into());
    }
    if p.catchup.window_ms < 0 {
        bad("catchup.window", "must not be negative".into());
    }
    if let Some(r) = &p.retry {
        if !(1..=MAX_SCHEDULE_ATTEMPTS).contains(&r.max_attempts) {
            bad(
                "retry.max_attempts",
                format!("must be 1 to {MAX_SCHEDULE_ATTEMPTS}"),
            );
        }
        if r.initial_backoff_ms < 0 || r.max_backoff_ms < r.initial_backoff_ms {
            bad(
                "retry.max_backoff",
                "backoffs must not be negative, and max_backoff not less than initial_backoff"
                    .into(),
            );
        }
        if !(1.0..=10.0).contains(&r.multiplier) {
            bad("retry.multiplier", "must be between 1 and 10".into());
        }
    }
    if p.max_buffered > MAX_BUFFERED {
        bad("max_buffered", format!("at most {MAX_BUFFERED}"));
    }
    if p.retention.max_age_ms.is_some_and(|a| a <= 0) {
        bad("retention.max_age", "must be more than 0".into());
    }
    out.extend(validate_action(
        input.action.as_ref(),
        &format!("{prefix}.action"),
    ));
    for (field, notification) in [
        ("on_failure", &p.on_failure),
        ("on_recovery", &p.on_recovery),
    ] {
        if let Some(action) = notification_action(notification) {
            out.extend(validate_action(Some(&action), &format!("{prefix}.{field}")));
        }
    }
    out
}

/// A schedule's notification as an action (to validate it like one).
pub(super) fn notification_action(
    n: &Option<almanac_proto::executor::v1::SendNotificationAction>,
) -> Option<Action> {
    n.clone().map(|n| Action {
        kind: Some(almanac_proto::executor::v1::action::Kind::SendNotification(
            n,
        )),
    })
}

fn check_id(id: &str) -> Result<(), SchedulerError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(SchedulerError::invalid(
            "schedule_id",
            format!(
                "{id:?} is not a valid id: 1-{MAX_ID_LEN} letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        ))
    }
}

pub(super) fn not_found(what: &str, id: &str) -> SchedulerError {
    SchedulerError::NotFound(format!("{what} {id:?}"))
}

pub(super) fn page_size(requested: i32) -> u32 {
    match requested {
        n if n <= 0 => DEFAULT_PAGE_SIZE,
        n => (n as u32).min(MAX_PAGE_SIZE),
    }
}

pub(super) fn bad_token() -> SchedulerError {
    SchedulerError::invalid(
        "page_token",
        "malformed page token: use the one a previous response returned",
    )
}

impl Engine {
    /// Creates a schedule; a create repeated with the same request id returns the first.
    pub async fn create_schedule(
        self: &Arc<Self>,
        schedule_id: String,
        input: ScheduleInput,
        request_id: Option<String>,
    ) -> Result<Schedule, SchedulerError> {
        if let Some(rid) = &request_id
            && let Some(existing) = self.store.schedule_by_request_id(rid).await?
        {
            return Ok(existing);
        }
        let id = if schedule_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            check_id(&schedule_id)?;
            schedule_id
        };
        let problems = violations(&input, "schedule");
        if !problems.is_empty() {
            return Err(SchedulerError::InvalidArgument(problems));
        }
        self.ask_executor_all(&input, &[]).await?;
        let now = self.clock.now_ms();
        let (Some(spec), Some(action)) = (input.spec, input.action) else {
            unreachable!("violations() requires spec and action");
        };
        let mut schedule = Schedule {
            id,
            display_name: input.display_name,
            description: input.description,
            spec,
            action,
            policy: input.policy,
            state: ScheduleState::Active,
            pause: None,
            next_fire_ms: None,
            run_count: 0,
            version: 1,
            request_id: request_id.clone(),
            completion_reason: None,
            created_ms: now,
            updated_ms: now,
            consecutive_failures: 0,
            buffer_overruns: 0,
        };
        let spec = schedule.spec.compile().map_err(|e| {
            SchedulerError::invalid(format!("schedule.spec.{}", e.field), e.message)
        })?;
        schedule.next_fire_ms = Some(first_fire(&schedule, &spec, now).map_err(|why| {
            SchedulerError::invalid(
                "schedule.spec",
                format!("the schedule would never fire: {why}"),
            )
        })?);
        match self.store.insert_schedule(&schedule).await {
            Ok(()) => {}
            Err(crate::store::StoreError::AlreadyExists(what)) => {
                // A concurrent create with the same request id won the race: return it.
                if let Some(rid) = &request_id
                    && let Some(existing) = self.store.schedule_by_request_id(rid).await?
                {
                    return Ok(existing);
                }
                return Err(SchedulerError::AlreadyExists(format!(
                    "{what} already exists"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(schedule_id = %schedule.id, next_fire_ms = ?schedule.next_fire_ms, "schedule created");
        self.timer.upsert(&schedule.id, schedule.next_fire_ms);
        Ok(schedule)
    }

    /// Asks the executor whether it can run `action`: the secrets, profiles and programs
    /// it names exist there, its templates parse. The scheduler never sees the
    /// executor's configuration, only this answer.
    async fn ask_executor_all(
        &self,
        input: &ScheduleInput,
        paths: &[&str],
    ) -> Result<(), SchedulerError> {
        let named = |field: &str| paths.is_empty() || paths.contains(&field);
        if named("action")
            && let Some(action) = &input.action
        {
            self.ask_executor(action, "schedule.action").await?;
        }
        for (field, n) in [
            ("on_failure", &input.policy.on_failure),
            ("on_recovery", &input.policy.on_recovery),
        ] {
            if named(field)
                && let Some(action) = notification_action(n)
            {
                self.ask_executor(&action, &format!("schedule.{field}"))
                    .await?;
            }
        }
        Ok(())
    }

    async fn ask_executor(
        &self,
        action: &almanac_proto::executor::v1::Action,
        prefix: &str,
    ) -> Result<(), SchedulerError> {
        use super::executor::ActionRefusal;
        match self.executor.validate_action(action, prefix).await {
            Ok(()) => Ok(()),
            Err(ActionRefusal::Invalid(v)) => Err(SchedulerError::InvalidArgument(v)),
            Err(ActionRefusal::Refused(v)) => Err(SchedulerError::ActionRefused(v)),
            Err(ActionRefusal::Unavailable(why)) => Err(SchedulerError::ExecutorUnavailable(why)),
        }
    }

    /// One schedule.
    pub async fn get_schedule(&self, id: &str) -> Result<Schedule, SchedulerError> {
        self.store
            .get_schedule(id)
            .await?
            .ok_or_else(|| not_found("schedule", id))
    }

    /// A page of schedules by id, and the token of the next page ("" at the end).
    pub async fn list_schedules(
        &self,
        state: Option<ScheduleState>,
        page_size_requested: i32,
        page_token: &str,
    ) -> Result<(Vec<Schedule>, String), SchedulerError> {
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_token(page_token).ok_or_else(bad_token)?)
        };
        let limit = page_size(page_size_requested);
        let mut page = self
            .store
            .list_schedules(state, after.as_deref(), limit + 1)
            .await?;
        let next = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last().map(|s| encode_token(&s.id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }

    /// Changes the fields named by `mask` (all updatable fields when empty), if `etag`
    /// matches.
    pub async fn update_schedule(
        self: &Arc<Self>,
        id: &str,
        etag: &str,
        input: ScheduleInput,
        mask: &[String],
    ) -> Result<Schedule, SchedulerError> {
        let expected = if etag.is_empty() {
            return Err(SchedulerError::invalid(
                "schedule.etag",
                "the etag of the schedule as read is required",
            ));
        } else {
            parse_etag(etag).ok_or_else(|| {
                SchedulerError::invalid(
                    "schedule.etag",
                    format!("{etag:?} is not an etag this server made"),
                )
            })?
        };
        let paths: Vec<&str> = if mask.is_empty() {
            UPDATABLE.to_vec()
        } else {
            mask.iter().map(String::as_str).collect()
        };
        let unknown: Vec<FieldViolation> = paths
            .iter()
            .filter(|p| !UPDATABLE.contains(p))
            .map(|p| {
                FieldViolation::new(
                    "update_mask",
                    format!(
                        "{p:?} cannot be updated; updatable: {}",
                        UPDATABLE.join(", ")
                    ),
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(SchedulerError::InvalidArgument(unknown));
        }
        let now = self.clock.now_ms();
        let specs = self.specs.clone();
        let change = |s: &mut Schedule| -> Result<(), SchedulerError> {
            if s.version != expected {
                return Err(SchedulerError::Aborted(format!(
                    "etag mismatch: schedule {:?} is at {}, the update was made against {etag}; read it again",
                    s.id,
                    s.etag()
                )));
            }
            let mut merged = ScheduleInput {
                display_name: s.display_name.clone(),
                description: s.description.clone(),
                spec: Some(s.spec.clone()),
                action: Some(s.action.clone()),
                policy: s.policy.clone(),
            };
            for path in &paths {
                apply_path(&mut merged, &input, path);
            }
            let problems = violations(&merged, "schedule");
            if !problems.is_empty() {
                return Err(SchedulerError::InvalidArgument(problems));
            }
            let timing_changed = merged.spec.as_ref() != Some(&s.spec)
                || merged.policy.start_ms != s.policy.start_ms
                || merged.policy.end_ms != s.policy.end_ms
                || merged.policy.max_runs != s.policy.max_runs;
            s.display_name = merged.display_name;
            s.description = merged.description;
            s.spec = merged.spec.unwrap_or_else(|| s.spec.clone());
            s.action = merged.action.unwrap_or_else(|| s.action.clone());
            s.policy = merged.policy;
            s.updated_ms = now;
            if timing_changed && s.state != ScheduleState::Paused {
                let spec = s.spec.compile().map_err(|e| {
                    SchedulerError::invalid(format!("schedule.spec.{}", e.field), e.message)
                })?;
                match first_fire(s, &spec, now) {
                    Ok(next) => {
                        s.state = ScheduleState::Active;
                        s.next_fire_ms = Some(next);
                        s.completion_reason = None;
                    }
                    Err(why) => {
                        s.state = ScheduleState::Completed;
                        s.next_fire_ms = None;
                        s.completion_reason = Some(why);
                    }
                }
            }
            Ok(())
        };
        self.ask_executor_all(&input, &paths).await?;
        let updated = self.store.modify_schedule(id, &change).await?;
        specs.remove(id);
        self.timer.upsert(id, active_next(&updated));
        tracing::info!(schedule_id = %id, version = updated.version, "schedule updated");
        Ok(updated)
    }

    /// Deletes a schedule and its ledger.
    pub async fn delete_schedule(&self, id: &str, etag: &str) -> Result<(), SchedulerError> {
        let expected = if etag.is_empty() {
            None
        } else {
            Some(parse_etag(etag).ok_or_else(|| {
                SchedulerError::invalid("etag", format!("{etag:?} is not an etag this server made"))
            })?)
        };
        self.store.delete_schedule(id, expected).await?;
        self.timer.upsert(id, None);
        self.specs.remove(id);
        tracing::info!(schedule_id = %id, "schedule deleted");
        Ok(())
    }

    /// Stops new fires; runs in flight go on. Pausing a paused schedule changes nothing.
    pub async fn pause_schedule(
        &self,
        id: &str,
        note: String,
        identity: String,
    ) -> Result<Schedule, SchedulerError> {
        let now = self.clock.now_ms();
        let change = |s: &mut Schedule| -> Result<(), SchedulerError> {
            match s.state {
                ScheduleState::Completed => Err(SchedulerError::FailedPrecondition(format!(
                    "schedule {:?} is COMPLETED ({}); there is nothing to pause",
                    s.id,
                    s.completion_reason.as_deref().unwrap_or("no fire left")
                ))),
                ScheduleState::Paused => Ok(()),
                ScheduleState::Active => {
                    s.state = ScheduleState::Paused;
                    s.next_fire_ms = None;
                    s.pause = Some(PauseInfo {
                        note: note.clone(),
                        identity: identity.clone(),
                        at_ms: now,
                    });
                    s.updated_ms = now;
                    Ok(())
                }
            }
        };
        let paused = self.store.modify_schedule(id, &change).await?;
        self.timer.upsert(id, None);
        // Runs in flight go on; runs waiting behind them will not start.
        self.store
            .skip_buffered(id, "the schedule was paused", now)
            .await?;
        Ok(paused)
    }

    /// Restarts fires from the next fire time in the future.
    pub async fn resume_schedule(&self, id: &str) -> Result<Schedule, SchedulerError> {
        let now = self.clock.now_ms();
        let change = |s: &mut Schedule| -> Result<(), SchedulerError> {
            match s.state {
                ScheduleState::Completed => Err(SchedulerError::FailedPrecondition(format!(
                    "schedule {:?} is COMPLETED ({}); update its spec or bounds to give it fires again",
                    s.id,
                    s.completion_reason.as_deref().unwrap_or("no fire left")
                ))),
                ScheduleState::Active => Ok(()),
                ScheduleState::Paused => {
                    s.consecutive_failures = 0;
                    let spec = s.spec.compile().map_err(|e| {
                        SchedulerError::invalid(format!("schedule.spec.{}", e.field), e.message)
                    })?;
                    s.pause = None;
                    s.updated_ms = now;
                    match first_fire(s, &spec, now) {
                        Ok(next) => {
                            s.state = ScheduleState::Active;
                            s.next_fire_ms = Some(next);
                        }
                        Err(why) => {
                            s.state = ScheduleState::Completed;
                            s.completion_reason = Some(why);
                        }
                    }
                    Ok(())
                }
            }
        };
        let resumed = self.store.modify_schedule(id, &change).await?;
        self.timer.upsert(id, active_next(&resumed));
        Ok(resumed)
    }
}

/// The next fire the timer should know of.
fn active_next(s: &Schedule) -> Option<i64> {
    s.next_fire_ms.filter(|_| s.state == ScheduleState::Active)
}

fn apply_path(merged: &mut ScheduleInput, input: &ScheduleInput, path: &str) {
    let p = &mut merged.policy;
    let q = &input.policy;
    match path {
        "display_name" => merged.display_name = input.display_name.clone(),
        "description" => merged.description = input.description.clone(),
        "spec" => merged.spec = input.spec.clone(),
        "action" => merged.action = input.action.clone(),
        "start_time" => p.start_ms = q.start_ms,
        "end_time" => p.end_ms = q.end_ms,
        "max_runs" => p.max_runs = q.max_runs,
        "jitter" => p.jitter_ms = q.jitter_ms,
        "overlap_policy" => p.overlap = q.overlap,
        "catchup" => p.catchup = q.catchup,
        "timeout" => p.timeout_ms = q.timeout_ms,
        "retry" => p.retry = q.retry,
        "pause_on_failure" => p.pause_on_failure = q.pause_on_failure,
        "on_failure" => p.on_failure = q.on_failure.clone(),
        "on_recovery" => p.on_recovery = q.on_recovery.clone(),
        "max_buffered" => p.max_buffered = q.max_buffered,
        "retention" => p.retention = q.retention,
        _ => {}
    }
}

pub(super) fn encode_token(text: &str) -> String {
    hex::encode(text)
}

pub(super) fn decode_token(token: &str) -> Option<String> {
    String::from_utf8(hex::decode(token).ok()?).ok()
}
