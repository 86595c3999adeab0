//! Cross-checks the span walk against a brute-force reading of DESIGN §4.2 around every 2026
//! offset change of zones with unusual shifts. The oracle matches wall-clock times with croner's
//! own matcher, minute by minute, so it shares no search code with the module under test.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone};
use chrono_tz::{GapInfo, Tz};
use croner::Cron;

use super::{cron, show};

const ZONES: &[&str] = &[
    "America/New_York",
    "Australia/Lord_Howe", // 30-minute shifts
    "Australia/Sydney",
    "America/Havana",    // shifts at midnight
    "America/Santiago",  // shifts at midnight, southern hemisphere
    "Antarctica/Troll",  // 2-hour shifts
    "Pacific/Chatham",   // +12:45 / +13:45
    "Europe/Dublin",     // "negative DST" in the tz database
    "Africa/Casablanca", // DST suspended for Ramadan
];

/// Only expressions on which croner's day rule agrees with Vixie's (no restricted day field
/// starting with `*`).
const EXPRESSIONS: &[&str] = &[
    "30 2 * * *",
    "0,30 2 * * *",
    "45 2,3 * * *",
    "30 1 * * *",
    "0-59 1 * * *",
    "0 0 * * *",
    "30 23 * * *",
    "*/15 * * * *",
    "* 1 * * *",
    "*/20 2 * * *",
    "0 */2 * * *",
    "15 0 * * SUN",
];

fn offset_at(tz: Tz, t: i64) -> i32 {
    let utc = DateTime::from_timestamp(t, 0)
        .expect("in range")
        .naive_utc();
    tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()
}

/// Instants (UTC seconds) where the zone's offset changes during 2026.
fn changes_in_2026(tz: Tz) -> Vec<i64> {
    let (start, end) = (1_767_225_600, 1_798_761_600); // 2026-01-01, 2027-01-01
    let mut changes = Vec::new();
    let mut t = start;
    while t < end {
        let next = t + 3600;
        if offset_at(tz, next) != offset_at(tz, t) {
            let (mut lo, mut hi) = (t, next);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if offset_at(tz, mid) == offset_at(tz, t) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            changes.push(hi);
        }
        t = next;
    }
    changes
}

fn naive(local: i64) -> NaiveDateTime {
    DateTime::from_timestamp(local, 0)
        .expect("in range")
        .naive_utc()
}

/// The fires in `[from, until)` (UTC seconds) by the letter of §4.2.
fn oracle(tz: Tz, expression: &str, from: i64, until: i64) -> Vec<i64> {
    let pattern = Cron::from_str(expression).expect("croner parses the oracle expressions");
    let matches = |local: i64| pattern.is_time_matching(&naive(local)).expect("valid time");
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let wildcard = fields[0].starts_with('*') || fields[1].starts_with('*');
    let mut fires = Vec::new();
    if wildcard {
        // Every instant whose wall-clock time matches.
        for t in (from..until).step_by(60) {
            if matches(t + i64::from(offset_at(tz, t))) {
                fires.push(t);
            }
        }
    } else {
        // Every matching wall-clock time, once: its first instant, or the end of its gap.
        let day = 86_400;
        for local in (from - day..until + day).step_by(60) {
            if !matches(local) {
                continue;
            }
            let at = |o: chrono_tz::TzOffset| local - i64::from(o.fix().local_minus_utc());
            let fire = match tz.offset_from_local_datetime(&naive(local)) {
                LocalResult::Single(o) => at(o),
                LocalResult::Ambiguous(a, b) => at(a).min(at(b)),
                LocalResult::None => GapInfo::new(&naive(local), &tz)
                    .and_then(|gap| gap.end)
                    .expect("a gap has an end")
                    .timestamp(),
            };
            fires.push(fire);
        }
        fires.retain(|&t| (from..until).contains(&t));
        fires.sort_unstable();
        fires.dedup();
    }
    fires
}

#[test]
fn span_walk_agrees_with_brute_force_around_every_2026_transition() {
    let mut failures = Vec::new();
    let mut windows = 0;
    for zone in ZONES {
        let tz: Tz = zone.parse().expect("known zone");
        let changes = changes_in_2026(tz);
        assert!(!changes.is_empty(), "{zone} should change offset in 2026");
        for change in changes {
            let (from, until) = (change - 30 * 3600, change + 30 * 3600);
            for expression in EXPRESSIONS {
                windows += 1;
                let expected = oracle(tz, expression, from, until);
                let actual: Vec<i64> = cron(zone, expression)
                    .fires_from(from * 1000)
                    .take_while(|&t| t < until * 1000)
                    .map(|t| t / 1000)
                    .collect();
                if actual != expected {
                    let list =
                        |v: &[i64]| v.iter().map(|&t| show(t * 1000, zone)).collect::<Vec<_>>();
                    failures.push(format!(
                        "{expression:?} in {zone} around {}:\n  oracle {:?}\n  actual {:?}",
                        show(change * 1000, zone),
                        list(&expected),
                        list(&actual)
                    ));
                }
            }
        }
    }
    assert!(windows > 100, "only {windows} windows checked");
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
