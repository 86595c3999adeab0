//! Data-driven tests of spec semantics: each table row is a spec, a window of time and the
//! fires expected in it, written as RFC 3339 instants (in the zone's local offset where that
//! helps a reader check them by eye).

mod dst;
mod oracle;
mod other;
mod syntax;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::{CompiledSpec, Spec};

fn ms(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("bad test instant {rfc3339:?}: {e}"))
        .timestamp_millis()
}

/// An instant as RFC 3339 in `zone`, e.g. `2026-03-08T03:00:00-04:00`.
fn show(t_ms: i64, zone: &str) -> String {
    let tz: Tz = if zone.is_empty() {
        Tz::UTC
    } else {
        zone.parse().expect("test zone")
    };
    match DateTime::<Utc>::from_timestamp_millis(t_ms) {
        Some(t) => t.with_timezone(&tz).to_rfc3339(),
        None => format!("{t_ms} ms (out of range)"),
    }
}

fn cron(zone: &str, expression: &str) -> CompiledSpec {
    Spec::Cron {
        expression: expression.to_owned(),
        timezone: zone.to_owned(),
    }
    .compile()
    .unwrap_or_else(|e| panic!("{expression:?} in {zone:?} should compile: {e}"))
}

/// A row: zone, expression, window `[from, until)`, and every fire expected in the window.
type Row<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [&'a str]);

/// Checks every row and reports all failing rows at once.
fn check(rows: &[Row<'_>]) {
    let failures: Vec<String> = rows.iter().filter_map(|row| check_row(row).err()).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

fn check_row(&(zone, expression, from, until, expected): &Row<'_>) -> Result<(), String> {
    let spec = cron(zone, expression);
    let (from, until) = (ms(from), ms(until));
    let actual: Vec<i64> = spec.fires_from(from).take_while(|&t| t < until).collect();
    let expected: Vec<i64> = expected.iter().map(|s| ms(s)).collect();
    let fail = |what: String| {
        let list = |v: &[i64]| v.iter().map(|&t| show(t, zone)).collect::<Vec<_>>();
        Err(format!(
            "{expression:?} in {zone:?} from {}: {what}\n  expected {:?}\n  actual   {:?}",
            show(from, zone),
            list(&expected),
            list(&actual)
        ))
    };
    if actual != expected {
        return fail("wrong fires".into());
    }
    // Each fire is found from itself, from just before (sub-second too) and as the next one.
    let mut previous = from - 1;
    for &fire in &expected {
        let probes = [
            spec.next_at_or_after(fire),
            spec.next_at_or_after(fire - 500),
            spec.next_after(fire - 1),
            spec.next_after(previous),
        ];
        if probes.iter().any(|&p| p != Some(fire)) {
            return fail(format!(
                "probes around {} gave {probes:?}",
                show(fire, zone)
            ));
        }
        previous = fire;
    }
    Ok(())
}
