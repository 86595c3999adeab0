//! Long walks, intervals, once, jitter and the stored JSON form.

use chrono::{DateTime, Datelike, NaiveTime, Timelike};
use chrono_tz::Tz;

use super::{cron, ms, show};
use crate::spec::{Spec, SpecError, jitter_ms};

#[test]
fn five_years_of_berlin_mornings_are_one_per_day_at_nine_local() {
    let zone: Tz = "Europe/Berlin".parse().expect("zone");
    let spec = cron("Europe/Berlin", "0 9 * * *");
    let (from, until) = (ms("2026-01-01T00:00:00Z"), ms("2031-01-01T00:00:00Z"));
    let fires: Vec<i64> = spec.fires_from(from).take_while(|&t| t < until).collect();
    assert_eq!(fires.len(), 5 * 365 + 1, "2026-2030 has one leap day");
    let mut previous_day = None;
    for &t in &fires {
        let local = DateTime::from_timestamp_millis(t)
            .expect("in range")
            .with_timezone(&zone);
        assert_eq!(
            local.time(),
            NaiveTime::from_hms_opt(9, 0, 0).expect("time"),
            "{local}"
        );
        if let Some(previous) = previous_day {
            assert_eq!(local.date_naive().pred_opt(), Some(previous), "{local}");
        }
        previous_day = Some(local.date_naive());
    }
    assert_eq!(previous_day.map(|d| d.year()), Some(2030));
}

#[test]
fn a_year_of_quarter_hours_in_new_york_is_every_fifteen_utc_minutes() {
    let spec = cron("America/New_York", "*/15 * * * *");
    let (from, until) = (ms("2026-01-01T05:00:00Z"), ms("2027-01-01T05:00:00Z"));
    let fires: Vec<i64> = spec.fires_from(from).take_while(|&t| t < until).collect();
    // 4 wall-clock times lost in March, 4 repeated in November: a plain year's count.
    assert_eq!(fires.len(), 365 * 96);
    // A wildcard job follows the wall clock as it is, which for whole-hour shifts means a
    // steady 15 minutes of real time, across both transitions.
    let odd_steps: Vec<String> = fires
        .windows(2)
        .filter(|w| w[1] - w[0] != 15 * 60_000)
        .map(|w| show(w[1], "America/New_York"))
        .collect();
    assert!(odd_steps.is_empty(), "{odd_steps:?}");
}

#[test]
fn five_years_of_a_fixed_job_in_the_gap_fire_once_per_local_day() {
    let zone: Tz = "America/New_York".parse().expect("zone");
    let spec = cron("America/New_York", "30 2 * * *");
    let (from, until) = (ms("2026-01-01T05:00:00Z"), ms("2031-01-01T05:00:00Z"));
    let fires: Vec<i64> = spec.fires_from(from).take_while(|&t| t < until).collect();
    assert_eq!(fires.len(), 5 * 365 + 1);
    let moved: Vec<String> = fires
        .iter()
        .map(|&t| {
            DateTime::from_timestamp_millis(t)
                .expect("t")
                .with_timezone(&zone)
        })
        .filter(|local| (local.hour(), local.minute()) != (2, 30))
        .map(|local| local.to_rfc3339())
        .collect();
    assert_eq!(
        moved,
        [
            "2026-03-08T03:00:00-04:00",
            "2027-03-14T03:00:00-04:00",
            "2028-03-12T03:00:00-04:00",
            "2029-03-11T03:00:00-04:00",
            "2030-03-10T03:00:00-04:00",
        ]
    );
}

#[test]
fn enumerating_a_hundred_thousand_missed_fires_is_quick() {
    let spec = cron("America/New_York", "* * * * * *");
    let from = ms("2026-11-01T05:00:00Z");
    let fires: Vec<i64> = spec.fires_from(from).take(100_000).collect();
    // 100k seconds straight through the fall-back: every second fires, the repeat included.
    assert_eq!(fires.last().copied(), Some(from + 99_999_000));
}

#[test]
fn cron_without_fire_in_the_horizon_or_calendar_answers_none() {
    let leap = cron("", "0 0 29 2 *");
    assert_eq!(
        leap.next_after(ms("2028-02-29T00:00:00Z")),
        Some(ms("2032-02-29T00:00:00Z"))
    );
    // Searches stop at the calendar's ends instead of overflowing.
    let daily = cron("Asia/Tokyo", "@daily");
    assert_eq!(daily.next_at_or_after(i64::MAX), None);
    assert_eq!(daily.next_after(i64::MAX), None);
    assert_eq!(daily.next_at_or_after(i64::MIN), None);
    assert!(
        daily.next_at_or_after(-5_000_000_000_000_000).is_some(),
        "about 156,000 BC"
    );
}

/// An interval row: every, offset, t, first fire >= t, first fire > t.
type IntervalRow = (i64, i64, i64, Option<i64>, Option<i64>);

#[test]
fn interval_fires_on_the_epoch_anchored_grid() {
    let rows: &[IntervalRow] = &[
        (60_000, 15_000, 0, Some(15_000), Some(15_000)),
        (60_000, 15_000, 15_000, Some(15_000), Some(75_000)),
        (60_000, 15_000, 15_001, Some(75_000), Some(75_000)),
        (60_000, 15_000, -1, Some(15_000), Some(15_000)),
        (60_000, 15_000, -45_000, Some(-45_000), Some(15_000)),
        (60_000, 15_000, -50_000, Some(-45_000), Some(-45_000)),
        (60_000, 0, -120_000, Some(-120_000), Some(-60_000)),
        (1, 0, 42, Some(42), Some(43)),
        (60_000, 0, i64::MAX, None, None),
        (i64::MAX, 0, 1, Some(i64::MAX), Some(i64::MAX)),
        (
            1_000,
            999,
            i64::MIN,
            Some(i64::MIN + 807),
            Some(i64::MIN + 807),
        ),
    ];
    for &(every_ms, offset_ms, t, at_or_after, after) in rows {
        let spec = Spec::Interval {
            every_ms,
            offset_ms,
        }
        .compile()
        .expect("valid interval");
        let row = format!("every {every_ms} offset {offset_ms} from {t}");
        assert_eq!(spec.next_at_or_after(t), at_or_after, "{row}: at or after");
        assert_eq!(spec.next_after(t), after, "{row}: after");
    }
    let spec = Spec::Interval {
        every_ms: 90_000,
        offset_ms: 30_000,
    }
    .compile()
    .expect("valid");
    let fires: Vec<i64> = spec.fires_from(-100_000).take(4).collect();
    assert_eq!(fires, [-60_000, 30_000, 120_000, 210_000]);
}

#[test]
fn once_fires_once() {
    let spec = Spec::Once {
        at_ms: ms("2026-05-01T12:00:00Z"),
    }
    .compile()
    .expect("valid");
    let at = ms("2026-05-01T12:00:00Z");
    assert_eq!(spec.fires_from(at - 1).collect::<Vec<_>>(), [at]);
    assert_eq!(spec.next_at_or_after(at), Some(at));
    assert_eq!(spec.next_after(at), None);
    assert_eq!(spec.next_at_or_after(at + 1), None);
}

#[test]
fn invalid_intervals_name_the_field() {
    let rows: &[(i64, i64, &str, &str)] = &[
        (
            0,
            0,
            "interval.every",
            "every must be more than 0, got 0 ms",
        ),
        (
            -5,
            0,
            "interval.every",
            "every must be more than 0, got -5 ms",
        ),
        (
            60_000,
            -1,
            "interval.offset",
            "offset must be at least 0 and less than every (60000 ms), got -1 ms",
        ),
        (
            60_000,
            60_000,
            "interval.offset",
            "less than every (60000 ms), got 60000 ms",
        ),
    ];
    for &(every_ms, offset_ms, field, text) in rows {
        let err = Spec::Interval {
            every_ms,
            offset_ms,
        }
        .compile()
        .expect_err("invalid");
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(text), "{err}");
    }
    let err = SpecError {
        field: "interval.every",
        message: "every must be more than 0".into(),
    };
    assert_eq!(err.to_string(), "interval.every: every must be more than 0");
}

#[test]
fn jitter_is_deterministic_in_range_and_frozen() {
    assert_eq!(jitter_ms("nightly", 1_000, 0), 0);
    assert_eq!(jitter_ms("nightly", 1_000, -5), 0);
    assert_eq!(jitter_ms("nightly", 1_000, 1), 0);
    // Pinned values: these may never change, or recovery would re-plan every jittered fire.
    assert_eq!(jitter_ms("nightly", 1_767_225_600_000, 60_000), PINNED[0]);
    assert_eq!(jitter_ms("nightly", 1_767_312_000_000, 60_000), PINNED[1]);
    assert_eq!(jitter_ms("", 0, i64::MAX), PINNED[2]);
    let max = 30_000;
    let mut sum = 0i64;
    for i in 0..10_000i64 {
        let d = jitter_ms(&format!("schedule-{}", i % 97), i * 60_000, max);
        assert!((0..max).contains(&d), "{d}");
        assert_eq!(
            d,
            jitter_ms(&format!("schedule-{}", i % 97), i * 60_000, max)
        );
        sum += d;
    }
    let mean = sum / 10_000;
    assert!(
        (13_500..16_500).contains(&mean),
        "mean {mean} should be near {}",
        max / 2
    );
}

/// Cross-checked outside Rust: Python's `hashlib.sha256` over the same bytes gives the same.
const PINNED: [i64; 3] = [33_085, 5_413, 4_673_668_335_504_684_788];

#[test]
fn specs_are_stored_as_tagged_json() {
    let rows = [
        (
            Spec::Cron {
                expression: "0 9 * * *".into(),
                timezone: "Europe/Berlin".into(),
            },
            r#"{"kind":"cron","expression":"0 9 * * *","timezone":"Europe/Berlin"}"#,
        ),
        (
            Spec::Interval {
                every_ms: 60_000,
                offset_ms: 5,
            },
            r#"{"kind":"interval","every_ms":60000,"offset_ms":5}"#,
        ),
        (Spec::Once { at_ms: -7 }, r#"{"kind":"once","at_ms":-7}"#),
    ];
    for (spec, json) in rows {
        assert_eq!(serde_json::to_string(&spec).expect("serialize"), json);
        assert_eq!(
            serde_json::from_str::<Spec>(json).expect("deserialize"),
            spec
        );
    }
}

#[test]
fn compiled_specs_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<crate::spec::CompiledSpec>();
}
