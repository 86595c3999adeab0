//! Pure decisions of the ledger (DESIGN §4.3–4.4): which rows a due schedule writes, how
//! missed fires are caught up, what overlap allows, when a schedule completes. No I/O:
//! the store calls these inside the transaction that writes their result.

use uuid::Uuid;

use super::overlap::{self, InFlight};
use crate::model::{CancelMode, Misfire, MissedRange, Overlap, RunStatus, Schedule, Trigger};
use crate::spec::{CompiledSpec, jitter_ms};

/// More individual rows than this for one kind of outcome in one claim are folded, the
/// oldest first, into one row that stands for a range.
pub const ROW_CAP: usize = 1_000;
/// At most this many fires are enumerated to count a missed range; past it the count
/// is a lower bound and the reason says so.
pub const ENUMERATION_CAP: i64 = 2_000_000;

/// A ledger row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: String,
    pub nominal_ms: i64,
    pub trigger: Trigger,
    /// PENDING (to dispatch), SKIPPED or MISSED.
    pub status: RunStatus,
    pub dispatch_after_ms: Option<i64>,
    /// The first attempt's deadline (PENDING rows only).
    pub deadline_ms: Option<i64>,
    pub reason: Option<String>,
    pub coalesced_into: Option<String>,
    pub missed: Option<MissedRange>,
    pub request_id: Option<String>,
}

impl NewRun {
    /// A row with a fresh id.
    pub(crate) fn new(nominal_ms: i64, trigger: Trigger, status: RunStatus) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            nominal_ms,
            trigger,
            status,
            dispatch_after_ms: None,
            deadline_ms: None,
            reason: None,
            coalesced_into: None,
            missed: None,
            request_id: None,
        }
    }
}

/// What a claim of one due schedule writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirePlan {
    /// Rows in nominal order.
    pub runs: Vec<NewRun>,
    /// The schedule's next fire after this claim.
    pub next_fire_ms: Option<i64>,
    /// Set when the schedule has nothing left to fire.
    pub completed: Option<String>,
    /// Dispatched runs that count against `max_runs`.
    pub counted: i64,
    /// Runs in flight the overlap policy asks to cancel or terminate.
    pub cancel: Vec<(String, CancelMode)>,
    /// Fires SKIPPED because a buffer was full.
    pub overruns: i64,
}

/// The inputs of [`plan_due`].
pub struct DueContext<'a> {
    pub schedule: &'a Schedule,
    pub spec: &'a CompiledSpec,
    pub now_ms: i64,
    /// Fires due before this were missed: when this scheduler process started (joining
    /// live replicas, nothing: see `timer::Missed`).
    pub boot_ms: i64,
    /// What the schedule has in flight and waiting, read from the ledger.
    pub in_flight: InFlight,
}

/// The rows a due schedule writes and its next fire.
///
/// A due fire is *missed* when it was due before this process started or is older than
/// the catch-up window; other due fires run as SCHEDULED, however late. Missed fires older
/// than the window become one MISSED range row; those inside it follow `misfire`.
pub fn plan_due(ctx: &DueContext<'_>) -> FirePlan {
    let s = ctx.schedule;
    let window = s.policy.catchup.window_ms.max(0);
    let mut old: Option<MissedRange> = None;
    let mut old_truncated = false;
    let mut recent: Vec<i64> = Vec::new();
    let mut on_time: Vec<i64> = Vec::new();
    let mut next = s.next_fire_ms;
    let mut steps = 0i64;
    while let Some(f) = next {
        if f > ctx.now_ms || s.policy.end_ms.is_some_and(|end| f > end) {
            break;
        }
        if ctx.now_ms - f > window {
            let r = old.get_or_insert(MissedRange {
                first_ms: f,
                last_ms: f,
                count: 0,
            });
            r.last_ms = f;
            r.count += 1;
            steps += 1;
            if steps >= ENUMERATION_CAP {
                old_truncated = true;
                next = ctx.spec.next_at_or_after(ctx.now_ms - window);
                continue;
            }
        } else if f < ctx.boot_ms {
            recent.push(f);
        } else {
            on_time.push(f);
        }
        next = ctx.spec.next_after(f);
    }

    let mut plan = FirePlan::default();
    if let Some(range) = old {
        let mut row = NewRun::new(range.first_ms, Trigger::Recovery, RunStatus::Missed);
        row.reason = Some(format!(
            "{}{} fire(s) missed, older than the catch-up window of {}",
            if old_truncated { "at least " } else { "" },
            range.count,
            human_ms(window)
        ));
        row.missed = Some(range);
        plan.runs.push(row);
    }

    // Candidates to dispatch, oldest first: nominal time, trigger, and an id chosen early
    // when other rows must name the run.
    let mut candidates: Vec<(i64, Trigger, Option<String>)> = Vec::new();
    match s.policy.catchup.misfire {
        Misfire::RunOnce => {
            if let Some((&latest, older)) = recent.split_last() {
                let id = Uuid::now_v7().to_string();
                let reason =
                    format!("missed while the scheduler was down; coalesced into run {id}");
                push_skipped(&mut plan, older, &reason, Some(&id));
                candidates.push((latest, Trigger::Recovery, Some(id)));
            }
        }
        Misfire::RunAll => {
            let cap = s.policy.catchup.max_catchup.max(1) as usize;
            let (beyond, kept) = recent.split_at(recent.len().saturating_sub(cap));
            if let (Some(&first), Some(&last)) = (beyond.first(), beyond.last()) {
                let mut row = NewRun::new(first, Trigger::Recovery, RunStatus::Missed);
                row.reason = Some(format!(
                    "{} missed fire(s) beyond max_catchup ({cap})",
                    beyond.len()
                ));
                row.missed = Some(MissedRange {
                    first_ms: first,
                    last_ms: last,
                    count: beyond.len() as i64,
                });
                plan.runs.push(row);
            }
            candidates.extend(kept.iter().map(|&f| (f, Trigger::Recovery, None)));
        }
        Misfire::Skip => push_skipped(
            &mut plan,
            &recent,
            "missed while the scheduler was down (misfire SKIP)",
            None,
        ),
    }
    candidates.extend(on_time.iter().map(|&f| (f, Trigger::Scheduled, None)));

    let mut in_flight = ctx.in_flight.clone();
    for (nominal, trigger, id) in candidates {
        if max_runs_reached(s, plan.counted) {
            break;
        }
        let mut row = NewRun::new(nominal, trigger, RunStatus::Pending);
        if let Some(id) = id {
            row.id = id;
        }
        let decision = overlap::decide(s.policy.overlap, s.policy.max_buffered(), &in_flight);
        let after = nominal + jitter_ms(&s.id, nominal, s.policy.jitter_ms);
        shape_row(&mut row, &decision, after, s.policy.timeout_ms);
        if let overlap::Decision::Skip { overrun: true, .. } = decision {
            plan.overruns += 1;
        }
        if matches!(row.status, RunStatus::Pending | RunStatus::Buffered) {
            plan.counted += 1;
        }
        plan.cancel
            .extend(overlap::apply(&decision, &row.id, &mut in_flight));
        plan.runs.push(row);
    }

    plan.next_fire_ms = next.filter(|&f| s.policy.end_ms.is_none_or(|end| f <= end));
    if max_runs_reached(s, plan.counted) {
        plan.next_fire_ms = None;
        plan.completed = Some(format!(
            "max_runs ({}) reached",
            s.policy.max_runs.unwrap_or_default()
        ));
    } else if plan.next_fire_ms.is_none() {
        plan.completed = Some(no_fire_left_reason(s));
    }
    plan
}

/// The manual run a trigger writes (PENDING now, BUFFERED, or SKIPPED as the overlap
/// policy says), the cancellations it asks for, and whether it was an overrun.
pub fn plan_manual(
    schedule: &Schedule,
    in_flight: &InFlight,
    now_ms: i64,
    request_id: Option<String>,
    overlap_override: Option<Overlap>,
) -> (NewRun, Vec<(String, CancelMode)>, bool) {
    let mut row = NewRun::new(now_ms, Trigger::Manual, RunStatus::Pending);
    row.request_id = request_id;
    let policy = overlap_override.unwrap_or(schedule.policy.overlap);
    let decision = overlap::decide(policy, schedule.policy.max_buffered(), in_flight);
    shape_row(&mut row, &decision, now_ms, schedule.policy.timeout_ms);
    let overrun = matches!(decision, overlap::Decision::Skip { overrun: true, .. });
    let cancel = overlap::apply(&decision, &row.id, &mut in_flight.clone());
    (row, cancel, overrun)
}

/// Sets a new row's status (and dispatch time, deadline, reason) from its decision.
fn shape_row(
    row: &mut NewRun,
    decision: &overlap::Decision,
    dispatch_after: i64,
    timeout_ms: Option<i64>,
) {
    match decision {
        overlap::Decision::Skip { reason, .. } => {
            row.status = RunStatus::Skipped;
            row.reason = Some(reason.clone());
        }
        overlap::Decision::Buffer | overlap::Decision::BufferCancelling(_) => {
            row.status = RunStatus::Buffered;
            row.dispatch_after_ms = Some(dispatch_after);
        }
        overlap::Decision::Start | overlap::Decision::StartTerminating(_) => {
            row.status = RunStatus::Pending;
            row.dispatch_after_ms = Some(dispatch_after);
            row.deadline_ms = timeout_ms.map(|t| dispatch_after + t);
        }
    }
}

fn max_runs_reached(s: &Schedule, counted_now: i64) -> bool {
    s.policy
        .max_runs
        .is_some_and(|max| s.run_count + counted_now >= max)
}

fn no_fire_left_reason(s: &Schedule) -> String {
    match (&s.spec, s.policy.end_ms) {
        (crate::spec::Spec::Once { .. }, _) => "the one fire of a once spec is done".into(),
        (_, Some(_)) => "end_time passed".into(),
        _ => "the spec has no fire left".into(),
    }
}

/// The next fire of a schedule from `from_ms` on (at create, resume and spec change), or
/// the reason it has none.
pub fn first_fire(s: &Schedule, spec: &CompiledSpec, from_ms: i64) -> Result<i64, String> {
    if max_runs_reached(s, 0) {
        return Err(format!(
            "max_runs ({}) reached",
            s.policy.max_runs.unwrap_or_default()
        ));
    }
    let from = s
        .policy
        .start_ms
        .map_or(from_ms, |start| start.max(from_ms));
    match spec.next_at_or_after(from) {
        Some(f) if s.policy.end_ms.is_none_or(|end| f <= end) => Ok(f),
        _ => Err(no_fire_left_reason(s)),
    }
}

/// Records `fires` SKIPPED, folding all but the newest `ROW_CAP - 1` into one range row.
fn push_skipped(plan: &mut FirePlan, fires: &[i64], reason: &str, into: Option<&String>) {
    let fold = fires.len().saturating_sub(ROW_CAP - 1);
    let (folded, single) = if fires.len() > ROW_CAP {
        fires.split_at(fold)
    } else {
        (&fires[..0], fires)
    };
    if let (Some(&first), Some(&last)) = (folded.first(), folded.last()) {
        let mut row = NewRun::new(first, Trigger::Recovery, RunStatus::Skipped);
        row.reason = Some(reason.to_string());
        row.coalesced_into = into.cloned();
        row.missed = Some(MissedRange {
            first_ms: first,
            last_ms: last,
            count: folded.len() as i64,
        });
        plan.runs.push(row);
    }
    for &f in single {
        let mut row = NewRun::new(f, Trigger::Recovery, RunStatus::Skipped);
        row.reason = Some(reason.to_string());
        row.coalesced_into = into.cloned();
        plan.runs.push(row);
    }
}

/// "1m", "90s", "250ms": for reasons people read.
pub fn human_ms(ms: i64) -> String {
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
