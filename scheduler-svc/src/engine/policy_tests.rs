//! Unit tests of the ledger decisions: catch-up, overlap, bounds, jitter.
use super::*;
use crate::engine::overlap::InFlight;
use crate::model::{Catchup, Policy, ScheduleState};
use crate::spec::Spec;
use almanac_proto::executor::v1::Action;

fn every_second(next_fire_ms: i64, policy: Policy) -> Schedule {
    Schedule {
        id: "s".into(),
        display_name: String::new(),
        description: String::new(),
        spec: Spec::Interval {
            every_ms: 1_000,
            offset_ms: 0,
        },
        action: Action::default(),
        policy,
        state: ScheduleState::Active,
        pause: None,
        next_fire_ms: Some(next_fire_ms),
        run_count: 0,
        version: 1,
        request_id: None,
        completion_reason: None,
        created_ms: 0,
        updated_ms: 0,
        consecutive_failures: 0,
        buffer_overruns: 0,
    }
}

fn plan(s: &Schedule, now_ms: i64, boot_ms: i64, in_flight: Option<&str>) -> FirePlan {
    let spec = s.spec.compile().unwrap();
    plan_due(&DueContext {
        schedule: s,
        spec: &spec,
        now_ms,
        boot_ms,
        in_flight: InFlight {
            running: in_flight.map(String::from).into_iter().collect(),
            buffered: 0,
        },
    })
}

/// (nominal, trigger, status) of every row, for compact assertions.
fn rows(p: &FirePlan) -> Vec<(i64, Trigger, RunStatus)> {
    p.runs
        .iter()
        .map(|r| (r.nominal_ms, r.trigger, r.status))
        .collect()
}

#[test]
fn a_fire_due_after_boot_runs_as_scheduled_and_the_next_fire_advances() {
    let s = every_second(10_000, Policy::default());
    let p = plan(&s, 10_003, 0, None);
    assert_eq!(rows(&p), [(10_000, Trigger::Scheduled, RunStatus::Pending)]);
    assert_eq!(p.next_fire_ms, Some(11_000));
    assert_eq!(p.counted, 1);
    assert_eq!(p.runs[0].dispatch_after_ms, Some(10_000));
}

#[test]
fn late_fires_after_boot_all_run_however_late_inside_the_window() {
    let s = every_second(
        10_000,
        Policy {
            overlap: Overlap::AllowAll,
            ..Policy::default()
        },
    );
    let p = plan(&s, 12_500, 0, None);
    assert_eq!(
        rows(&p),
        [
            (10_000, Trigger::Scheduled, RunStatus::Pending),
            (11_000, Trigger::Scheduled, RunStatus::Pending),
            (12_000, Trigger::Scheduled, RunStatus::Pending),
        ]
    );
}

#[test]
fn run_once_runs_the_latest_missed_fire_and_coalesces_the_others_into_it() {
    let s = every_second(1_000, Policy::default());
    let p = plan(&s, 5_600, 5_500, None);
    let recovery = &p.runs.last().unwrap();
    assert_eq!(
        (recovery.nominal_ms, recovery.trigger, recovery.status),
        (5_000, Trigger::Recovery, RunStatus::Pending)
    );
    let skipped: Vec<_> = p.runs[..4]
        .iter()
        .map(|r| (r.nominal_ms, r.status, r.coalesced_into.clone()))
        .collect();
    for (i, (nominal, status, into)) in skipped.into_iter().enumerate() {
        assert_eq!(nominal, 1_000 * (i as i64 + 1));
        assert_eq!(status, RunStatus::Skipped);
        assert_eq!(into.as_deref(), Some(recovery.id.as_str()));
    }
    assert_eq!(p.next_fire_ms, Some(6_000));
}

#[test]
fn fires_older_than_the_window_become_one_missed_range() {
    let s = every_second(0, Policy::default());
    // Down from 0 to 199.0 s; the window is 60 s.
    let p = plan(&s, 200_000, 199_000, None);
    let missed = &p.runs[0];
    assert_eq!(missed.status, RunStatus::Missed);
    assert_eq!(
        missed.missed,
        Some(MissedRange {
            first_ms: 0,
            last_ms: 139_000,
            count: 140
        })
    );
    let by_status = |st| p.runs.iter().filter(|r| r.status == st).count();
    // 140_000..=197_000 coalesced, 198_000 recovery, 199_000 and 200_000 skipped by
    // the default SKIP overlap because the recovery run is in flight.
    assert_eq!(by_status(RunStatus::Pending), 1);
    assert_eq!(by_status(RunStatus::Skipped), 58 + 2);
    let total: i64 = p.runs.iter().map(|r| r.missed.map_or(1, |m| m.count)).sum();
    assert_eq!(
        total, 201,
        "every nominal time from 0 to 200 s is accounted for once"
    );
}

#[test]
fn run_all_runs_each_missed_fire_up_to_max_catchup_oldest_first() {
    let policy = Policy {
        overlap: Overlap::AllowAll,
        catchup: Catchup {
            misfire: Misfire::RunAll,
            max_catchup: 3,
            ..Catchup::default()
        },
        ..Policy::default()
    };
    let s = every_second(1_000, policy);
    let p = plan(&s, 5_100, 5_050, None);
    assert_eq!(
        rows(&p),
        [
            (1_000, Trigger::Recovery, RunStatus::Missed),
            (3_000, Trigger::Recovery, RunStatus::Pending),
            (4_000, Trigger::Recovery, RunStatus::Pending),
            (5_000, Trigger::Recovery, RunStatus::Pending),
        ]
    );
    assert_eq!(p.runs[0].missed.unwrap().count, 2);
}

#[test]
fn misfire_skip_records_each_missed_fire_and_runs_none() {
    let policy = Policy {
        catchup: Catchup {
            misfire: Misfire::Skip,
            ..Catchup::default()
        },
        ..Policy::default()
    };
    let p = plan(&every_second(1_000, policy), 3_100, 3_050, None);
    assert_eq!(
        rows(&p),
        [
            (1_000, Trigger::Recovery, RunStatus::Skipped),
            (2_000, Trigger::Recovery, RunStatus::Skipped),
            (3_000, Trigger::Recovery, RunStatus::Skipped),
        ]
    );
    assert_eq!(p.counted, 0);
}

#[test]
fn skip_overlap_skips_while_a_run_is_in_flight_and_allow_all_does_not() {
    let p = plan(
        &every_second(1_000, Policy::default()),
        1_000,
        0,
        Some("other"),
    );
    assert_eq!(rows(&p), [(1_000, Trigger::Scheduled, RunStatus::Skipped)]);
    assert!(p.runs[0].reason.as_deref().unwrap().contains("other"));
    let allow = Policy {
        overlap: Overlap::AllowAll,
        ..Policy::default()
    };
    let p = plan(&every_second(1_000, allow), 1_000, 0, Some("other"));
    assert_eq!(rows(&p), [(1_000, Trigger::Scheduled, RunStatus::Pending)]);
}

#[test]
fn max_runs_completes_the_schedule_and_stops_writing_rows() {
    let policy = Policy {
        max_runs: Some(3),
        overlap: Overlap::AllowAll,
        ..Policy::default()
    };
    let mut s = every_second(1_000, policy);
    s.run_count = 2;
    let p = plan(&s, 2_000, 0, None);
    assert_eq!(rows(&p), [(1_000, Trigger::Scheduled, RunStatus::Pending)]);
    assert_eq!(p.next_fire_ms, None);
    assert_eq!(p.completed.as_deref(), Some("max_runs (3) reached"));
}

#[test]
fn end_time_bounds_the_fires_and_completes_the_schedule() {
    let policy = Policy {
        end_ms: Some(2_000),
        overlap: Overlap::AllowAll,
        ..Policy::default()
    };
    let p = plan(&every_second(1_000, policy), 5_000, 0, None);
    assert_eq!(p.runs.len(), 2);
    assert_eq!(p.next_fire_ms, None);
    assert_eq!(p.completed.as_deref(), Some("end_time passed"));
}

#[test]
fn jitter_delays_dispatch_but_never_moves_the_nominal_time() {
    let policy = Policy {
        jitter_ms: 500,
        timeout_ms: Some(10_000),
        ..Policy::default()
    };
    let p = plan(&every_second(7_000, policy), 7_000, 0, None);
    let run = &p.runs[0];
    assert_eq!(run.nominal_ms, 7_000);
    let after = run.dispatch_after_ms.unwrap();
    assert!((7_000..7_500).contains(&after), "{after}");
    assert_eq!(run.deadline_ms, Some(after + 10_000));
    let again = plan(&every_second(7_000, p_policy_with_jitter()), 7_000, 0, None);
    assert_eq!(
        again.runs[0].dispatch_after_ms,
        Some(after),
        "the same fire, the same delay"
    );
}

fn p_policy_with_jitter() -> Policy {
    Policy {
        jitter_ms: 500,
        timeout_ms: Some(10_000),
        ..Policy::default()
    }
}

#[test]
fn a_manual_run_follows_the_overlap_policy_unless_overridden() {
    let s = every_second(1_000, Policy::default());
    let busy = InFlight {
        running: vec!["busy".into()],
        buffered: 0,
    };
    let (run, _, _) = plan_manual(&s, &busy, 42, Some("r1".into()), None);
    assert_eq!(
        (run.trigger, run.status),
        (Trigger::Manual, RunStatus::Skipped)
    );
    let (run, _, _) = plan_manual(&s, &busy, 42, None, Some(Overlap::AllowAll));
    assert_eq!(
        (run.status, run.dispatch_after_ms),
        (RunStatus::Pending, Some(42))
    );
}

#[test]
fn first_fire_respects_start_end_and_max_runs() {
    let mut s = every_second(
        0,
        Policy {
            start_ms: Some(5_500),
            ..Policy::default()
        },
    );
    let spec = s.spec.compile().unwrap();
    assert_eq!(first_fire(&s, &spec, 1_000), Ok(6_000));
    s.policy.end_ms = Some(5_900);
    assert!(first_fire(&s, &spec, 1_000).is_err());
    s.policy = Policy {
        max_runs: Some(1),
        ..Policy::default()
    };
    s.run_count = 1;
    assert_eq!(first_fire(&s, &spec, 0), Err("max_runs (1) reached".into()));
}

#[test]
fn buffered_fires_wait_and_terminate_other_asks_to_cut_the_run_in_flight() {
    let buffer = Policy {
        overlap: Overlap::BufferOne,
        ..Policy::default()
    };
    let p = plan(&every_second(10_000, buffer), 12_000, 0, Some("r0"));
    assert_eq!(
        rows(&p),
        [
            (10_000, Trigger::Scheduled, RunStatus::Buffered),
            (11_000, Trigger::Scheduled, RunStatus::Skipped),
            (12_000, Trigger::Scheduled, RunStatus::Skipped),
        ]
    );
    assert_eq!(p.overruns, 2);
    let terminate = Policy {
        overlap: Overlap::TerminateOther,
        ..Policy::default()
    };
    let p = plan(&every_second(10_000, terminate), 10_000, 0, Some("r0"));
    assert_eq!(rows(&p), [(10_000, Trigger::Scheduled, RunStatus::Pending)]);
    assert_eq!(p.cancel, [("r0".to_owned(), CancelMode::Terminate)]);
}
