//! How results look: canonical proto3 JSON for scripts, and for people aligned tables,
//! `key  value` blocks, RFC 3339 UTC times with milliseconds, short durations and short
//! lowercase enum names (`succeeded`, not `RUN_STATUS_SUCCEEDED`).

use almanac_proto::time::{ms_to_datetime, ms_to_rfc3339, timestamp_to_ms};
use chrono::SecondsFormat;
use pbjson_types::{Duration, Timestamp, Value};
use serde::Serialize;

/// Writes one line to stdout. A reader that went away (`almanac ... | head`) ends the
/// program quietly, as it would end any Unix filter, instead of a panic.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`write_line`].
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Prints a message as pretty canonical JSON (what grpcurl prints).
pub fn print_json<T: Serialize>(message: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(message)?);
    Ok(())
}

/// Prints a message as canonical JSON on one line (one event per line for streams).
pub fn print_json_line<T: Serialize>(message: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(message)?);
    Ok(())
}

/// A table of left-aligned columns separated by two spaces.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column titles (printed as given).
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds one row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines, the last column not padded.
    pub fn render(&self) -> Vec<String> {
        let all = std::iter::once(&self.header).chain(&self.rows);
        let mut widths = vec![0; self.header.len()];
        for row in all.clone() {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        all.map(|row| {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i == last {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
    }

    /// Prints the table.
    pub fn print(&self) {
        for line in self.render() {
            outln!("{line}");
        }
    }
}

/// Prints `key  value` lines with the keys aligned, skipping empty values.
pub fn print_fields(fields: &[(&str, String)]) {
    for line in render_fields(fields) {
        outln!("{line}");
    }
}

/// The lines of [`print_fields`].
pub fn render_fields(fields: &[(&str, String)]) -> Vec<String> {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| format!("{key:<width$}  {value}"))
        .collect()
}

/// RFC 3339 UTC with milliseconds, or `-` when absent.
pub fn time(ts: Option<&Timestamp>) -> String {
    ts.map_or_else(|| "-".to_owned(), |ts| ms_to_rfc3339(timestamp_to_ms(ts)))
}

/// An instant in a zone, RFC 3339 with milliseconds and the zone's offset.
pub fn time_in_zone(ts: &Timestamp, zone: chrono_tz::Tz) -> String {
    ms_to_datetime(timestamp_to_ms(ts))
        .with_timezone(&zone)
        .to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// A short duration: `850ms`, `1.25s`, `1m`, `3m4s`, `2h`, `2h1m` (coarser parts dropped).
pub fn millis(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let text = if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else if ms < 3_600_000 {
        match (ms / 60_000, (ms % 60_000) / 1000) {
            (m, 0) => format!("{m}m"),
            (m, s) => format!("{m}m{s}s"),
        }
    } else {
        match (ms / 3_600_000, (ms % 3_600_000) / 60_000) {
            (h, 0) => format!("{h}h"),
            (h, m) => format!("{h}h{m}m"),
        }
    };
    format!("{sign}{text}")
}

/// A proto duration, or `-` when absent.
pub fn duration(d: Option<&Duration>) -> String {
    d.and_then(almanac_proto::time::duration_to_ms)
        .map_or_else(|| "-".to_owned(), millis)
}

/// The time between two instants, or `-` unless both are known.
pub fn elapsed(start: Option<&Timestamp>, end: Option<&Timestamp>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => millis(timestamp_to_ms(e) - timestamp_to_ms(s)),
        _ => "-".to_owned(),
    }
}

/// An enum's proto name without its type prefix, lowercased: `RUN_STATUS_TIMED_OUT` with
/// prefix `RUN_STATUS_` is `timed_out`.
pub fn label(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .to_lowercase()
}

/// A JSON value on one line, or empty when absent. Whole numbers print without `.0`
/// (protobuf's `Value` holds every number as a double).
pub fn value(v: Option<&Value>) -> String {
    v.and_then(|v| serde_json::to_value(v).ok())
        .map(|v| whole_numbers(v).to_string())
        .unwrap_or_default()
}

fn whole_numbers(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Number(n) => match n.as_f64() {
            // Exactly representable: |f| < 2^53.
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => J::from(f as i64),
            _ => J::Number(n),
        },
        J::Array(items) => J::Array(items.into_iter().map(whole_numbers).collect()),
        J::Object(map) => J::Object(
            map.into_iter()
                .map(|(k, v)| (k, whole_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// `text` or `-` when empty.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_do_not_pad_the_last() {
        let mut t = Table::new(&["ID", "STATE", "RUNS"]);
        t.row(vec!["walk".into(), "active".into(), "12".into()]);
        t.row(vec!["a-much-longer-id".into(), "paused".into(), "3".into()]);
        assert_eq!(
            t.render(),
            vec![
                "ID                STATE   RUNS",
                "walk              active  12",
                "a-much-longer-id  paused  3",
            ]
        );
    }

    #[test]
    fn durations_are_short() {
        let check = |ms: i64, expected: &str| assert_eq!(millis(ms), expected, "{ms}");
        check(0, "0ms");
        check(850, "850ms");
        check(1_000, "1s");
        check(1_250, "1.25s");
        check(60_000, "1m");
        check(184_000, "3m4s");
        check(7_200_000, "2h");
        check(7_260_000, "2h1m");
        check(-5, "-5ms");
    }

    #[test]
    fn times_are_utc_with_milliseconds_or_in_a_zone() {
        let ts = almanac_proto::time::ms_to_timestamp(1_772_953_200_000);
        assert_eq!(time(Some(&ts)), "2026-03-08T07:00:00.000Z");
        assert_eq!(time(None), "-");
        let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
        assert_eq!(time_in_zone(&ts, ny), "2026-03-08T03:00:00.000-04:00");
    }

    #[test]
    fn values_print_whole_numbers_without_a_fraction() {
        let v: Value = serde_json::from_str(r#"{"status":200,"ms":1.5,"list":[3]}"#).unwrap();
        assert_eq!(value(Some(&v)), r#"{"list":[3],"ms":1.5,"status":200}"#);
        assert_eq!(value(None), "");
    }

    #[test]
    fn labels_drop_the_prefix_and_lowercase() {
        assert_eq!(label("RUN_STATUS_TIMED_OUT", "RUN_STATUS_"), "timed_out");
        assert_eq!(label("OTHER", "RUN_STATUS_"), "other");
    }
}
