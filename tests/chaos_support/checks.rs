//! The chaos test's verdict: the final ledger (every schedule, every page) and the sink's
//! record, judged against the outages the test caused. Each violation names the
//! schedule, the nominal time and what was found; the tally feeds the printed figures.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::ms_to_rfc3339;

use super::figures::Tally;
use super::runs::{describe, is, seconds, trigger, ts};
use super::{ChaosSchedule, Delivery, Mix, Outage, Service, in_flight};
use crate::common::{nominal_ms, status_of};

/// How far around an outage its effects may legitimately reach (see `tests/chaos.rs`
/// for why each value is what it is).
#[derive(Debug, Clone, Copy)]
pub struct Grace {
    /// Before the kill: a fire this recent may not have been claimed yet, or be in flight.
    pub before_kill_ms: i64,
    /// After a restarted scheduler is up: its catch-up claim and the re-dispatch of what
    /// was in flight drain, and SKIP schedules may skip fires meanwhile.
    pub after_scheduler_ms: i64,
    /// After a restarted executor is up: the dispatcher's retry backoff (capped at 5 s)
    /// runs out, and the queued attempts drain.
    pub after_executor_ms: i64,
    /// How long after an execution's finish time the ledger may still hold its run in
    /// flight (the finish is written by the dispatcher's group commit).
    pub ledger_lag_ms: i64,
}

impl Grace {
    /// The kill-and-recovery interval of an outage, inclusive.
    pub fn interval(&self, o: &Outage) -> (i64, i64) {
        let after = match o.service {
            Service::Scheduler => self.after_scheduler_ms,
            Service::Executor => self.after_executor_ms,
        };
        (o.kill_ms - self.before_kill_ms, o.ready_ms + after)
    }
}

/// Everything the verdict looks at.
pub struct World<'a> {
    pub schedules: &'a [ChaosSchedule],
    pub ledger: &'a HashMap<String, Vec<pb::Run>>,
    pub deliveries: &'a [Delivery],
    pub outages: &'a [Outage],
    pub grace: Grace,
    /// Several schedulers share the ledger: while one is dead the others fire on time,
    /// so a fire due then need not be a catch-up row.
    pub replicated: bool,
}

impl World<'_> {
    fn intervals(&self) -> Vec<(i64, i64)> {
        self.outages
            .iter()
            .map(|o| self.grace.interval(o))
            .collect()
    }

    fn scheduler_outages(&self) -> impl Iterator<Item = &Outage> {
        self.outages
            .iter()
            .filter(|o| o.service == Service::Scheduler)
    }

    fn executor_outages(&self) -> impl Iterator<Item = &Outage> {
        self.outages
            .iter()
            .filter(|o| o.service == Service::Executor)
    }
}

/// Every violation found, and the tally.
pub fn judge(world: &World<'_>) -> (Vec<String>, Tally) {
    let mut v = Violations::default();
    let mut tally = Tally::default();
    let intervals = world.intervals();
    for s in world.schedules {
        let runs = world.ledger.get(&s.id).map(Vec::as_slice).unwrap_or(&[]);
        check_schedule(world, &intervals, s, runs, &mut v, &mut tally);
    }
    check_deliveries(world, &intervals, &mut v, &mut tally);
    (v.0, tally)
}

#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn at(&mut self, schedule: &str, nominal: i64, what: impl std::fmt::Display) {
        self.0
            .push(format!("{schedule} @ {}: {what}", ms_to_rfc3339(nominal)));
    }
}

fn check_schedule(
    world: &World<'_>,
    intervals: &[(i64, i64)],
    s: &ChaosSchedule,
    runs: &[pb::Run],
    v: &mut Violations,
    tally: &mut Tally,
) {
    if runs.is_empty() {
        v.at(&s.id, 0, "no ledger row at all");
        return;
    }
    // Exactly one row per second, no gap, from the first fire to the last.
    let mut cover: BTreeMap<i64, &pb::Run> = BTreeMap::new();
    for r in runs {
        match seconds(r) {
            Ok(secs) => {
                for t in secs {
                    if let Some(other) = cover.insert(t, r) {
                        v.at(
                            &s.id,
                            t,
                            format!("two ledger rows: {} and {}", describe(other), describe(r)),
                        );
                    }
                }
            }
            Err(e) => v.at(&s.id, nominal_ms(r), e),
        }
    }
    let (first, last) = match (cover.keys().next(), cover.keys().next_back()) {
        (Some(&a), Some(&b)) => (a, b),
        _ => return,
    };
    for &t in cover.keys() {
        if (t - first) % 1_000 != 0 {
            v.at(
                &s.id,
                t,
                "a nominal time off the schedule's one-second grid",
            );
        }
    }
    for t in (first..=last).step_by(1_000) {
        if !cover.contains_key(&t) {
            v.at(&s.id, t, "no ledger row: the fire is lost");
        }
    }

    for (&t, &r) in &cover {
        tally.fires += 1;
        *tally
            .by_status
            .entry(status_of(r).as_str_name())
            .or_default() += 1;
        if in_flight(r) {
            v.at(&s.id, t, format!("left non-terminal: {}", describe(r)));
        }
        let inside = intervals.iter().any(|&(a, b)| a <= t && t <= b);
        if !inside {
            tally.fires_outside += 1;
            let ok = r.missed.is_none()
                && trigger(r) == pb::RunTrigger::Scheduled
                && is(r, pb::RunStatus::Succeeded);
            if !ok && behind_a_slow_run(r, &cover, world.grace.ledger_lag_ms) {
                // SKIP did its job: the previous on-time run was still in flight (it
                // took over a second on the loaded machine, but at most SLOW_RUN_MS).
                tally.skips_behind_a_slow_run += 1;
            } else if !ok {
                v.at(
                    &s.id,
                    t,
                    format!(
                        "outside every kill-and-recovery interval, yet not a SUCCEEDED scheduled run: {}",
                        describe(r)
                    ),
                );
            }
        }
        if s.mix == Mix::AllowAllRunAll && (r.missed.is_some() || !is(r, pb::RunStatus::Succeeded))
        {
            v.at(
                &s.id,
                t,
                format!("RUN_ALL + ALLOW_ALL: the fire did not run: {}", describe(r)),
            );
        }
        for o in world.scheduler_outages().filter(|_| !world.replicated) {
            if o.dead_ms < t && t <= o.spawn_ms && trigger(r) != pb::RunTrigger::Recovery {
                v.at(
                    &s.id,
                    t,
                    format!(
                        "due while the scheduler was dead ({} to {}) but not a catch-up row: {}",
                        ms_to_rfc3339(o.dead_ms),
                        ms_to_rfc3339(o.spawn_ms),
                        describe(r)
                    ),
                );
            }
        }
    }

    for r in runs {
        check_run(world, s, r, v);
    }
    check_catch_ups(s, runs, v, tally);
    check_overlap_skips(world, s, runs, v, tally);
}

/// One row on its own: how it ended, and whether its trigger fits the outages.
fn check_run(world: &World<'_>, s: &ChaosSchedule, r: &pb::Run, v: &mut Violations) {
    let t = nominal_ms(r);
    match trigger(r) {
        pb::RunTrigger::Scheduled | pb::RunTrigger::Recovery => {}
        _ => v.at(&s.id, t, format!("unexpected trigger: {}", describe(r))),
    }
    if r.attempts.len() > 1 {
        let keys: Vec<&str> = r
            .attempts
            .iter()
            .map(|a| a.execution_key.as_str())
            .collect();
        v.at(
            &s.id,
            t,
            format!(
                "two executions for one nominal time {keys:?}: {}",
                describe(r)
            ),
        );
    }
    if !r.attempts.is_empty() && !in_flight(r) && !is(r, pb::RunStatus::Succeeded) {
        v.at(
            &s.id,
            t,
            format!(
                "dispatched to a target that always answers 200, yet ended: {}",
                describe(r)
            ),
        );
    }
    if is(r, pb::RunStatus::Missed) {
        v.at(
            &s.id,
            t,
            format!(
                "MISSED, though no outage comes near the 1 min catch-up window: {}",
                describe(r)
            ),
        );
    }
    if trigger(r) == pb::RunTrigger::Recovery {
        let created = ts(&r.create_time).unwrap_or_default();
        if t >= created {
            v.at(
                &s.id,
                t,
                format!(
                    "a catch-up row written at {} for a fire not yet due: {}",
                    ms_to_rfc3339(created),
                    describe(r)
                ),
            );
        }
        let explained = world.scheduler_outages().any(|o| {
            let (a, b) = world.grace.interval(o);
            a <= t && t <= b && o.spawn_ms <= created
        });
        if !explained {
            v.at(
                &s.id,
                t,
                format!(
                    "a catch-up row that no scheduler outage explains: {}",
                    describe(r)
                ),
            );
        }
    }
}

/// The rows of each catch-up (one claim after a restart writes them together, so they
/// share a create time) follow the schedule's misfire policy.
fn check_catch_ups(s: &ChaosSchedule, runs: &[pb::Run], v: &mut Violations, tally: &mut Tally) {
    let mut claims: BTreeMap<i64, Vec<&pb::Run>> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| trigger(r) == pb::RunTrigger::Recovery)
    {
        claims
            .entry(ts(&r.create_time).unwrap_or_default())
            .or_default()
            .push(r);
    }
    for group in claims.values_mut() {
        group.sort_by_key(|r| nominal_ms(r));
        let latest = nominal_ms(group[group.len() - 1]);
        tally.catch_ups += 1;
        match s.mix {
            Mix::SkipRunOnce => {
                let anchors: Vec<&&pb::Run> = group
                    .iter()
                    .filter(|r| r.coalesced_into_run_id.is_empty())
                    .collect();
                let [anchor] = anchors.as_slice() else {
                    let found: Vec<String> = anchors.iter().map(|r| describe(r)).collect();
                    v.at(
                        &s.id,
                        latest,
                        format!(
                            "RUN_ONCE catch-up of {} fire(s) must have one recovery run, found {}: {found:?}",
                            group.len(),
                            anchors.len()
                        ),
                    );
                    continue;
                };
                if nominal_ms(anchor) != latest {
                    v.at(
                        &s.id,
                        nominal_ms(anchor),
                        format!(
                            "RUN_ONCE recovery run is not at the latest missed fire ({}): {}",
                            ms_to_rfc3339(latest),
                            describe(anchor)
                        ),
                    );
                }
                if is(anchor, pb::RunStatus::Succeeded) {
                    tally.recovery_runs += 1;
                } else if !is(anchor, pb::RunStatus::Skipped) {
                    v.at(
                        &s.id,
                        latest,
                        format!("RUN_ONCE recovery run did not run: {}", describe(anchor)),
                    );
                }
                for r in group.iter().filter(|r| r.id != anchor.id) {
                    let ok = is(r, pb::RunStatus::Skipped)
                        && r.coalesced_into_run_id == anchor.id
                        && r.attempts.is_empty();
                    if ok {
                        tally.coalesced += seconds(r).map_or(1, |s| s.len());
                    } else {
                        v.at(
                            &s.id,
                            nominal_ms(r),
                            format!(
                                "RUN_ONCE: a missed fire not coalesced into recovery run {}: {}",
                                anchor.id,
                                describe(r)
                            ),
                        );
                    }
                }
            }
            Mix::SkipMisfireSkip => {
                for r in group.iter() {
                    let ok = is(r, pb::RunStatus::Skipped)
                        && r.coalesced_into_run_id.is_empty()
                        && r.attempts.is_empty();
                    if ok {
                        tally.misfire_skipped += seconds(r).map_or(1, |s| s.len());
                    } else {
                        v.at(
                            &s.id,
                            nominal_ms(r),
                            format!(
                                "misfire SKIP: a missed fire must be SKIPPED, never run: {}",
                                describe(r)
                            ),
                        );
                    }
                }
            }
            Mix::AllowAllRunAll => {
                // Each one must have SUCCEEDED: checked second by second above.
                tally.recovery_runs += group
                    .iter()
                    .filter(|r| is(r, pb::RunStatus::Succeeded))
                    .count();
            }
        }
    }
}

/// A fire SKIPPED by the overlap policy needs a run in flight when it was claimed: an
/// earlier dispatched run created before it that had not finished yet (allowing the
/// ledger's lag behind the executor's finish time) — or that was unfinished in the ledger
/// when the scheduler was killed, so that the restarted one still saw it in flight while
/// recovering.
fn check_overlap_skips(
    world: &World<'_>,
    s: &ChaosSchedule,
    runs: &[pb::Run],
    v: &mut Violations,
    tally: &mut Tally,
) {
    let skipped_by_overlap = runs.iter().filter(|r| {
        is(r, pb::RunStatus::Skipped)
            && r.coalesced_into_run_id.is_empty()
            && r.missed.is_none()
            && !(s.mix == Mix::SkipMisfireSkip && trigger(r) == pb::RunTrigger::Recovery)
    });
    for k in skipped_by_overlap {
        let t = ts(&k.create_time).unwrap_or_default();
        tally.overlap_skipped += 1;
        if trigger(k) == pb::RunTrigger::Recovery {
            tally.recovery_runs_skipped += 1;
        }
        let mut by_crash = false;
        let justified = runs.iter().any(|r| {
            if r.attempts.is_empty()
                || nominal_ms(r) >= nominal_ms(k)
                || ts(&r.create_time).is_none_or(|c| c > t)
            {
                return false;
            }
            let created = ts(&r.create_time).unwrap_or_default();
            let finished = ts(&r.finish_time);
            if finished.is_none_or(|f| f + world.grace.ledger_lag_ms >= t) {
                return true;
            }
            // Possibly still in flight in the ledger when the scheduler died: its finish
            // is written by the restarted one, while that one recovers.
            let lag = world.grace.ledger_lag_ms;
            // With replicas the others write rows while the killed one is down.
            let crash = world.scheduler_outages().any(|o| {
                let writers_back = if world.replicated {
                    o.kill_ms
                } else {
                    o.spawn_ms
                };
                created <= o.kill_ms
                    && finished.is_some_and(|f| f + lag >= o.kill_ms)
                    && writers_back <= t
                    && t <= o.ready_ms + world.grace.after_scheduler_ms
            });
            // In flight when the executor died: the restarted executor finishes it on its
            // own, and the scheduler learns the outcome when its send, retried with
            // backoff, reaches the executor again.
            let outage = world.executor_outages().any(|o| {
                created <= o.ready_ms
                    && finished.is_some_and(|f| f + lag >= o.kill_ms)
                    && t <= o.ready_ms + world.grace.after_executor_ms
            });
            by_crash |= crash || outage;
            crash || outage
        });
        if !justified {
            v.at(
                &s.id,
                nominal_ms(k),
                format!(
                    "SKIPPED by overlap at {} while no earlier run was in flight: {}",
                    ms_to_rfc3339(t),
                    describe(k)
                ),
            );
        } else if by_crash {
            tally.skips_behind_a_crash += 1;
        }
    }
}

/// The sink's record against the ledger: every delivery is an attempt of a ledger row,
/// one key per nominal time, every SUCCEEDED run delivered.
fn check_deliveries(
    world: &World<'_>,
    intervals: &[(i64, i64)],
    v: &mut Violations,
    tally: &mut Tally,
) {
    let mut by_id: HashMap<&str, &pb::Run> = HashMap::new();
    for runs in world.ledger.values() {
        for r in runs {
            by_id.insert(r.id.as_str(), r);
        }
    }
    let mut keys_by_fire: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    let mut per_key: HashMap<String, (usize, i64)> = HashMap::new();
    for d in world.deliveries {
        tally.deliveries += 1;
        let Some(run) = d.run_id.as_deref().and_then(|id| by_id.get(id)) else {
            let sched = d.schedule_id.clone().unwrap_or_else(|| d.path.clone());
            v.at(
                &sched,
                d.nominal_ms().unwrap_or_default(),
                format!("a delivery that maps to no ledger row: {d:?}"),
            );
            continue;
        };
        let t = nominal_ms(run);
        let key = d.key.clone().unwrap_or_default();
        let expected_path = format!("/s/{}", run.schedule_id);
        let fits = d.schedule_id.as_deref() == Some(run.schedule_id.as_str())
            && d.nominal_ms() == Some(t)
            && d.path == expected_path
            && run.attempts.iter().any(|a| a.execution_key == key);
        if !fits {
            v.at(
                &run.schedule_id,
                t,
                format!(
                    "a delivery that does not match its ledger row {}: {d:?}",
                    describe(run)
                ),
            );
        }
        keys_by_fire
            .entry((run.schedule_id.clone(), t))
            .or_default()
            .insert(key.clone());
        let entry = per_key.entry(key).or_insert((0, d.received_ms));
        entry.0 += 1;
        entry.1 = entry.1.min(d.received_ms);
    }
    for ((schedule, t), keys) in &keys_by_fire {
        if keys.len() > 1 {
            v.at(
                schedule,
                *t,
                format!("two executions: delivered under keys {keys:?}"),
            );
        }
    }
    for (count, _) in per_key.values() {
        if *count > 1 {
            tally.repeated_keys += 1;
            tally.repeated_deliveries += count - 1;
        }
    }
    for runs in world.ledger.values() {
        for r in runs.iter().filter(|r| is(r, pb::RunStatus::Succeeded)) {
            let t = nominal_ms(r);
            let first = r
                .attempts
                .iter()
                .filter_map(|a| per_key.get(&a.execution_key))
                .map(|&(_, at)| at)
                .min();
            match first {
                None => v.at(
                    &r.schedule_id,
                    t,
                    format!("SUCCEEDED but the sink never received it: {}", describe(r)),
                ),
                Some(at) if !intervals.iter().any(|&(a, b)| a <= t && t <= b) => {
                    tally.lateness_ms.push(at - t);
                }
                Some(_) => {}
            }
        }
    }
}

/// The longest an on-time run may take, nominal time to finish, for a fire skipped behind
/// it outside every interval to count as the SKIP policy at work rather than a fault.
const SLOW_RUN_MS: i64 = 3_000;

/// Whether `r` is a scheduled fire SKIPPED by overlap behind an earlier run of its
/// schedule that the ledger shows really in flight when `r` was written (its end not yet
/// in the ledger: at most `lag_ms` after its finish time), and that SUCCEEDED within
/// `SLOW_RUN_MS` of its own nominal time.
fn behind_a_slow_run(r: &pb::Run, cover: &BTreeMap<i64, &pb::Run>, lag_ms: i64) -> bool {
    let Some(blocker_id) = r
        .reason
        .strip_prefix("overlap policy SKIP: run ")
        .and_then(|rest| rest.strip_suffix(" was in flight"))
    else {
        return false;
    };
    if trigger(r) != pb::RunTrigger::Scheduled || !is(r, pb::RunStatus::Skipped) {
        return false;
    }
    let Some(written) = ts(&r.create_time) else {
        return false;
    };
    cover.values().any(|b| {
        b.id == blocker_id
            && trigger(b) == pb::RunTrigger::Scheduled
            && is(b, pb::RunStatus::Succeeded)
            && nominal_ms(b) < nominal_ms(r)
            && ts(&b.finish_time)
                .is_some_and(|f| f + lag_ms >= written && f - nominal_ms(b) <= SLOW_RUN_MS)
    })
}
