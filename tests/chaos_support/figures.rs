//! The chaos test's figures: what the verdict counted, and printing it with the seed,
//! the outages and the recovery grace, so a run can be quoted and replayed.

use std::collections::BTreeMap;

use almanac_proto::time::ms_to_rfc3339;

use super::checks::Grace;
use super::{ChaosSchedule, Mix, Outage, Service, percentile};

/// What the verdict counted.
#[derive(Debug, Default)]
pub struct Tally {
    /// Nominal seconds accounted for by the ledger (range rows count every second).
    pub fires: usize,
    /// Of which outside every kill-and-recovery interval.
    pub fires_outside: usize,
    /// Seconds by the status of the row that accounts for them.
    pub by_status: BTreeMap<&'static str, usize>,
    /// Catch-up claims (one per schedule per scheduler restart that missed fires).
    pub catch_ups: usize,
    /// RECOVERY runs that ran and SUCCEEDED.
    pub recovery_runs: usize,
    /// RUN_ONCE recovery runs SKIPPED because a run was still in flight.
    pub recovery_runs_skipped: usize,
    /// Missed seconds SKIPPED as coalesced into a RUN_ONCE recovery run.
    pub coalesced: usize,
    /// Missed seconds SKIPPED by misfire SKIP.
    pub misfire_skipped: usize,
    /// Rows SKIPPED by the overlap policy.
    pub overlap_skipped: usize,
    /// Of which behind a run a killed service left in flight.
    pub skips_behind_a_crash: usize,
    /// Of which outside every interval, behind an on-time run still in flight (a run
    /// that took more than a second on the loaded machine).
    pub skips_behind_a_slow_run: usize,
    pub deliveries: usize,
    /// Idempotency keys the sink received more than once, and the extra deliveries.
    pub repeated_keys: usize,
    pub repeated_deliveries: usize,
    /// First delivery minus nominal time, for SUCCEEDED runs outside the intervals.
    pub lateness_ms: Vec<i64>,
}

/// Everything printed besides the tally.
pub struct Setting<'a> {
    pub seed: u64,
    pub iterations: usize,
    pub schedules: &'a [ChaosSchedule],
    pub outages: &'a [Outage],
    pub grace: Grace,
    pub elapsed_s: f64,
}

/// The figures, as printed.
pub fn render(setting: &Setting<'_>, tally: &mut Tally) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "chaos figures (seed {}, {} iterations, {:.1} s)",
        setting.seed, setting.iterations, setting.elapsed_s
    ));
    let mut mixes: BTreeMap<Mix, usize> = BTreeMap::new();
    for s in setting.schedules {
        *mixes.entry(s.mix).or_default() += 1;
    }
    let mixes: Vec<String> = mixes
        .iter()
        .map(|(m, n)| format!("{n} {}", m.label()))
        .collect();
    line(format!(
        "  schedules: {} ({}), each firing every second",
        setting.schedules.len(),
        mixes.join(", ")
    ));
    let kills = |svc| setting.outages.iter().filter(|o| o.service == svc).count();
    line(format!(
        "  kills: {} (scheduler {}, executor {})",
        setting.outages.len(),
        kills(Service::Scheduler),
        kills(Service::Executor)
    ));
    for (i, o) in setting.outages.iter().enumerate() {
        let (a, b) = setting.grace.interval(o);
        line(format!(
            "    #{:<2} {:<9} killed {} (reaped +{} ms), restarted after {} ms, up +{} ms; interval {} .. {}",
            i + 1,
            format!("{:?}", o.service).to_lowercase(),
            ms_to_rfc3339(o.kill_ms),
            o.dead_ms - o.kill_ms,
            o.spawn_ms - o.dead_ms,
            o.ready_ms - o.spawn_ms,
            ms_to_rfc3339(a),
            ms_to_rfc3339(b)
        ));
    }
    let g = setting.grace;
    line(format!(
        "  recovery grace: {} ms before a kill; {} ms after a scheduler, {} ms after an executor is up again; ledger lag {} ms",
        g.before_kill_ms, g.after_scheduler_ms, g.after_executor_ms, g.ledger_lag_ms
    ));
    let pct = |n: usize| 100.0 * n as f64 / tally.fires.max(1) as f64;
    line(format!(
        "  fires (ledger seconds): {}; outside the kill-and-recovery intervals: {} ({:.1} %)",
        tally.fires,
        tally.fires_outside,
        pct(tally.fires_outside)
    ));
    let statuses: Vec<String> = tally
        .by_status
        .iter()
        .map(|(s, n)| format!("{} {n}", s.trim_start_matches("RUN_STATUS_")))
        .collect();
    line(format!("  seconds by status: {}", statuses.join(", ")));
    line(format!(
        "  catch-ups: {}; recovery runs SUCCEEDED: {}; RUN_ONCE recovery runs SKIPPED by overlap: {}",
        tally.catch_ups, tally.recovery_runs, tally.recovery_runs_skipped
    ));
    line(format!(
        "  SKIPPED: coalesced {}, misfire SKIP {}, overlap {} (behind a run a killed service left in flight: {}; outside the intervals behind a run slower than a second: {}); MISSED seconds: {}",
        tally.coalesced,
        tally.misfire_skipped,
        tally.overlap_skipped,
        tally.skips_behind_a_crash,
        tally.skips_behind_a_slow_run,
        tally
            .by_status
            .get("RUN_STATUS_MISSED")
            .copied()
            .unwrap_or(0)
    ));
    line(format!(
        "  deliveries: {}; keys delivered more than once: {} ({} repeated deliveries, each under its one key)",
        tally.deliveries, tally.repeated_keys, tally.repeated_deliveries
    ));
    tally.lateness_ms.sort_unstable();
    let p = |q| percentile(&tally.lateness_ms, q).map_or("-".into(), |v| format!("{v} ms"));
    line(format!(
        "  lateness outside the intervals (first delivery - nominal): p50 {}, p99 {}, max {} over {} deliveries",
        p(50),
        p(99),
        p(100),
        tally.lateness_ms.len()
    ));
    out
}
