//! A long downtime, row by row: the scheduler (in process, on a manual clock) stops for ten
//! minutes while three schedules fire every second with a 5 min catch-up window. After
//! the restart every second of the downtime is in the ledger exactly once, as its
//! schedule's misfire policy says: RUN_ONCE one recovery run with the rest coalesced into
//! it, RUN_ALL the newest `max_catchup` fires run oldest first with the older excess one
//! MISSED range, SKIP nothing run — and fires older than the window one MISSED range each.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::{ms_to_duration, ms_to_rfc3339, timestamp_to_ms};
use almanac_scheduler::engine::clock::{Clock, ManualClock};
use common::sink::Sink;
use common::*;

type Client = pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel>;

/// 2030-01-01T00:00:00Z: far from today, so nothing depends on the real time.
const T0: i64 = 1_893_456_000_000;
const WINDOW_MS: i64 = 300_000;
/// Ten minutes and half a second: no fire lands on the instant of the restart.
const DOWNTIME_MS: i64 = 600_500;
const MAX_CATCHUP: u32 = 30;

const SCHEDULES: [(&str, pb::OverlapPolicy, pb::Misfire); 3] = [
    ("once", pb::OverlapPolicy::Skip, pb::Misfire::RunOnce),
    ("all", pb::OverlapPolicy::AllowAll, pb::Misfire::RunAll),
    ("skip", pb::OverlapPolicy::Skip, pb::Misfire::Skip),
];

/// What one ledger row is, as far as this test is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Row {
    /// MISSED, standing for every second from its nominal time to `last`.
    Missed { last: i64, count: i64 },
    /// SKIPPED, coalesced into the schedule's one recovery run.
    Coalesced,
    /// SKIPPED by misfire SKIP: recorded, not run, not coalesced.
    Skipped,
    /// Dispatched once and SUCCEEDED, with this trigger.
    Ran(pb::RunTrigger),
}

fn observe(r: &pb::Run) -> Row {
    let status = status_of(r);
    let trigger = pb::RunTrigger::try_from(r.trigger).expect("trigger");
    match (status, &r.missed) {
        (pb::RunStatus::Missed, Some(m)) => Row::Missed {
            last: timestamp_to_ms(m.last_time.as_ref().expect("last time")),
            count: m.count,
        },
        (pb::RunStatus::Skipped, None)
            if !r.coalesced_into_run_id.is_empty() && r.attempts.is_empty() =>
        {
            Row::Coalesced
        }
        (pb::RunStatus::Skipped, None) if r.attempts.is_empty() => Row::Skipped,
        (pb::RunStatus::Succeeded, None) if r.attempts.len() == 1 => Row::Ran(trigger),
        _ => panic!(
            "{} @ {}: unexpected row {:?} {trigger:?} attempts {} missed {:?} reason {:?} error {:?}",
            r.schedule_id,
            ms_to_rfc3339(nominal_ms(r)),
            status,
            r.attempts.len(),
            r.missed,
            r.reason,
            r.error
        ),
    }
}

/// The rows a schedule must have for the downtime: fires `after` < f <= `boot`, given
/// its misfire policy. Keyed by nominal time (a range row by its first second).
fn expected_rows(misfire: pb::Misfire, after: i64, boot: i64) -> BTreeMap<i64, Row> {
    let fires: Vec<i64> = (after + 1_000..boot).step_by(1_000).collect();
    let (old, recent): (Vec<i64>, Vec<i64>) = fires.iter().partition(|&&f| boot - f > WINDOW_MS);
    let mut rows = BTreeMap::new();
    if let (Some(&first), Some(&last)) = (old.first(), old.last()) {
        let count = old.len() as i64;
        rows.insert(first, Row::Missed { last, count });
    }
    match misfire {
        pb::Misfire::RunOnce => {
            let (&latest, older) = recent.split_last().expect("fires inside the window");
            rows.extend(older.iter().map(|&f| (f, Row::Coalesced)));
            rows.insert(latest, Row::Ran(pb::RunTrigger::Recovery));
        }
        pb::Misfire::RunAll => {
            let excess = recent.len() - MAX_CATCHUP as usize;
            let (beyond, kept) = recent.split_at(excess);
            let count = beyond.len() as i64;
            rows.insert(
                beyond[0],
                Row::Missed {
                    last: beyond[beyond.len() - 1],
                    count,
                },
            );
            rows.extend(
                kept.iter()
                    .map(|&f| (f, Row::Ran(pb::RunTrigger::Recovery))),
            );
        }
        _ => rows.extend(recent.iter().map(|&f| (f, Row::Skipped))),
    }
    rows
}

/// Advances the clock one second at a time, `seconds` times, waiting each time until the
/// timer has claimed every due schedule and no run is in flight.
async fn tick(clock: &ManualClock, client: &Client, seconds: usize) {
    for _ in 0..seconds {
        clock.advance(1_000);
        settle(clock, client).await;
    }
}

/// Waits until every schedule's next fire is in the future and no run is in flight.
async fn settle(clock: &ManualClock, client: &Client) {
    let now = clock.now_ms();
    eventually(Duration::from_secs(30), "the scheduler to settle", || {
        let mut client = client.clone();
        async move {
            for (id, _, _) in SCHEDULES {
                let s = client
                    .get_schedule(pb::GetScheduleRequest {
                        schedule_id: id.into(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .schedule?;
                let claimed = s
                    .next_fire_time
                    .as_ref()
                    .is_some_and(|t| timestamp_to_ms(t) > now);
                let runs = all_runs(&mut client, id).await;
                if !claimed || !runs.iter().all(is_terminal) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
}

fn create_request(
    id: &str,
    overlap: pb::OverlapPolicy,
    misfire: pb::Misfire,
    sink: &Sink,
) -> pb::CreateScheduleRequest {
    let mut req = create(
        id,
        every(1_000),
        call_api("POST", &sink.url(&format!("/{id}"))),
    );
    let s = req.schedule.as_mut().expect("schedule");
    s.overlap_policy = overlap as i32;
    s.catchup = Some(pb::CatchupPolicy {
        window: Some(ms_to_duration(WINDOW_MS)),
        misfire: misfire as i32,
        max_catchup: MAX_CATCHUP,
    });
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_minutes_down_every_second_is_accounted_for_by_its_misfire_policy() {
    let clock = ManualClock::new(T0);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let executor = start_executor(dir.path()).await;
    let sink = Sink::start().await;
    let scheduler = start_scheduler_with(dir.path(), &executor.url(), Some(shared.clone())).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    for (id, overlap, misfire) in SCHEDULES {
        client
            .create_schedule(create_request(id, overlap, misfire, &sink))
            .await
            .expect("create");
    }
    tick(&clock, &client, 3).await;
    let mut last_before = BTreeMap::new();
    for (id, _, _) in SCHEDULES {
        let runs = all_runs(&mut client, id).await;
        assert!(runs.len() >= 3, "{id} fired before the downtime");
        last_before.insert(id, runs.iter().map(nominal_ms).max().unwrap());
    }
    scheduler.stop().await;

    clock.advance(DOWNTIME_MS);
    let boot = clock.now_ms();
    let scheduler = start_scheduler_with(dir.path(), &executor.url(), Some(shared)).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    settle(&clock, &client).await;
    // Firing goes on as usual after the catch-up.
    tick(&clock, &client, 2).await;

    for (id, _, misfire) in SCHEDULES {
        let runs = all_runs(&mut client, id).await;
        let after = last_before[id];
        let mut expected = expected_rows(misfire, after, boot);
        let resumed: Vec<i64> = (boot..=clock.now_ms()).filter(|t| t % 1_000 == 0).collect();
        assert_eq!(resumed.len(), 2, "two on-time fires after the catch-up");
        expected.extend(
            resumed
                .iter()
                .map(|&f| (f, Row::Ran(pb::RunTrigger::Scheduled))),
        );
        let actual: BTreeMap<i64, Row> = runs
            .iter()
            .filter(|r| nominal_ms(r) > after)
            .map(|r| (nominal_ms(r), observe(r)))
            .collect();
        for (t, want) in &expected {
            let got = actual.get(t);
            assert_eq!(
                got,
                Some(want),
                "{id} @ {}: expected {want:?}, found {got:?}",
                ms_to_rfc3339(*t)
            );
        }
        let extra: Vec<String> = actual
            .keys()
            .filter(|t| !expected.contains_key(t))
            .map(|t| ms_to_rfc3339(*t))
            .collect();
        assert!(extra.is_empty(), "{id}: unexpected rows at {extra:?}");

        check_reasons_and_links(id, misfire, &runs, after);
        check_every_second_once(id, &runs);
        check_deliveries(id, &runs, &sink);
    }
    scheduler.stop().await;
    executor.stop().await;
}

/// SKIPPED and MISSED rows say why; coalesced rows name the recovery run; RUN_ALL wrote
/// the kept fires oldest first (run ids are UUIDv7, ordered by creation).
fn check_reasons_and_links(id: &str, misfire: pb::Misfire, runs: &[pb::Run], after: i64) {
    let recovery: Vec<&pb::Run> = runs
        .iter()
        .filter(|r| r.trigger == pb::RunTrigger::Recovery as i32 && !r.attempts.is_empty())
        .collect();
    for r in runs.iter().filter(|r| nominal_ms(r) > after) {
        let why = |word: &str| {
            assert!(
                r.reason.contains(word),
                "{id} @ {}: the reason of a {:?} row should mention {word:?}: {:?}",
                ms_to_rfc3339(nominal_ms(r)),
                status_of(r),
                r.reason
            )
        };
        match status_of(r) {
            // The range older than the window starts right after the last fire before the
            // downtime; RUN_ALL's excess over max_catchup comes after it.
            pb::RunStatus::Missed if nominal_ms(r) == after + 1_000 => why("window"),
            pb::RunStatus::Missed => why("max_catchup"),
            pb::RunStatus::Skipped => {
                assert!(!r.reason.is_empty(), "{id}: a SKIPPED row says why");
                if misfire == pb::Misfire::RunOnce {
                    assert_eq!(
                        r.coalesced_into_run_id, recovery[0].id,
                        "{id}: coalesced into the recovery run"
                    );
                }
            }
            _ => {}
        }
    }
    match misfire {
        pb::Misfire::RunOnce => assert_eq!(recovery.len(), 1, "{id}: one recovery run"),
        pb::Misfire::RunAll => {
            assert_eq!(
                recovery.len(),
                MAX_CATCHUP as usize,
                "{id}: max_catchup runs"
            );
            let mut by_nominal = recovery.clone();
            by_nominal.sort_by_key(|r| nominal_ms(r));
            let mut by_creation = recovery.clone();
            by_creation.sort_by(|a, b| a.id.cmp(&b.id));
            let order = |v: &[&pb::Run]| v.iter().map(|r| nominal_ms(r)).collect::<Vec<_>>();
            assert_eq!(
                order(&by_creation),
                order(&by_nominal),
                "{id}: RUN_ALL writes its catch-up runs oldest first"
            );
        }
        _ => assert!(recovery.is_empty(), "{id}: misfire SKIP runs nothing"),
    }
}

/// Every second from the first fire to the last is accounted for by exactly one row.
fn check_every_second_once(id: &str, runs: &[pb::Run]) {
    let mut covered = BTreeMap::new();
    for r in runs {
        let (first, last) = match &r.missed {
            Some(m) => (
                timestamp_to_ms(m.first_time.as_ref().unwrap()),
                timestamp_to_ms(m.last_time.as_ref().unwrap()),
            ),
            None => (nominal_ms(r), nominal_ms(r)),
        };
        if let Some(m) = &r.missed {
            assert_eq!((last - first) / 1_000 + 1, m.count, "{id}: range count");
        }
        for t in (first..=last).step_by(1_000) {
            assert!(
                covered.insert(t, r.id.clone()).is_none(),
                "{id} @ {}: accounted for twice",
                ms_to_rfc3339(t)
            );
        }
    }
    let first = *covered.keys().next().unwrap();
    let last = *covered.keys().next_back().unwrap();
    assert_eq!(
        covered.len() as i64,
        (last - first) / 1_000 + 1,
        "{id}: a second between {} and {} has no row",
        ms_to_rfc3339(first),
        ms_to_rfc3339(last)
    );
}

/// The target received each dispatched run once, under its key and nominal time, and
/// nothing for SKIPPED or MISSED rows.
fn check_deliveries(id: &str, runs: &[pb::Run], sink: &Sink) {
    let hits = sink.hits_on(&format!("/{id}"));
    let dispatched: Vec<&pb::Run> = runs.iter().filter(|r| !r.attempts.is_empty()).collect();
    assert_eq!(
        hits.len(),
        dispatched.len(),
        "{id}: one delivery per dispatched run"
    );
    for r in dispatched {
        let key = &r.attempts[0].execution_key;
        let hit = hits
            .iter()
            .find(|h| h.header("idempotency-key") == Some(key.as_str()))
            .unwrap_or_else(|| panic!("{id}: no delivery under {key}"));
        assert_eq!(
            hit.header("x-almanac-nominal-time"),
            Some(ms_to_rfc3339(nominal_ms(r)).as_str()),
            "{id}: the delivery carries the run's nominal time"
        );
    }
}
