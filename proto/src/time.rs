//! Conversions between the wire's `Timestamp`/`Duration` and the integer milliseconds
//! the services compute and store with (DESIGN §4.3: nominal times are whole UTC
//! milliseconds, the same key on every backend).

use chrono::{DateTime, SecondsFormat, Utc};
use pbjson_types::{Duration, Timestamp};

/// Whole milliseconds since the Unix epoch, UTC; sub-millisecond parts are truncated
/// toward negative infinity so that ordering is preserved.
pub fn timestamp_to_ms(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos).div_euclid(1_000_000))
}

/// The `Timestamp` of a millisecond instant.
pub fn ms_to_timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Whether a `Timestamp` is well formed (nanos in range, year 1..=9999 as in RFC 3339).
pub fn timestamp_is_valid(ts: &Timestamp) -> bool {
    const MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    (0..1_000_000_000).contains(&ts.nanos) && (MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds)
}

/// Whole milliseconds of a `Duration`, or `None` when it does not fit in an `i64` or its
/// seconds and nanos disagree in sign.
pub fn duration_to_ms(d: &Duration) -> Option<i64> {
    if (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0) {
        return None;
    }
    if d.nanos.abs() >= 1_000_000_000 {
        return None;
    }
    d.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(d.nanos) / 1_000_000)
}

/// Whether a `Duration` has a part finer than a millisecond.
pub fn duration_has_sub_ms(d: &Duration) -> bool {
    d.nanos % 1_000_000 != 0
}

/// The `Duration` of a number of milliseconds.
pub fn ms_to_duration(ms: i64) -> Duration {
    Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A millisecond instant as a chrono `DateTime<Utc>`.
pub fn ms_to_datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 with milliseconds and `Z`, as in `X-Almanac-Nominal-Time`.
pub fn ms_to_rfc3339(ms: i64) -> String {
    ms_to_datetime(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_milliseconds() {
        for ms in [0, 1, 999, 1_000, -1, -999, -1_001, 1_793_000_000_123] {
            assert_eq!(timestamp_to_ms(&ms_to_timestamp(ms)), ms, "{ms}");
        }
    }

    #[test]
    fn sub_millisecond_parts_truncate_toward_the_past() {
        let ts = Timestamp {
            seconds: -1,
            nanos: 999_999_999,
        };
        assert_eq!(timestamp_to_ms(&ts), -1);
        let ts = Timestamp {
            seconds: 5,
            nanos: 1_999_999,
        };
        assert_eq!(timestamp_to_ms(&ts), 5_001);
    }

    #[test]
    fn durations_convert_and_reject_mixed_signs() {
        assert_eq!(duration_to_ms(&ms_to_duration(1_500)), Some(1_500));
        assert_eq!(duration_to_ms(&ms_to_duration(-1_500)), Some(-1_500));
        assert_eq!(
            duration_to_ms(&Duration {
                seconds: 1,
                nanos: -1
            }),
            None
        );
        assert_eq!(
            duration_to_ms(&Duration {
                seconds: i64::MAX,
                nanos: 0
            }),
            None
        );
    }

    #[test]
    fn rfc3339_has_milliseconds_and_z() {
        assert_eq!(ms_to_rfc3339(1_793_000_000_123), "2026-10-26T07:33:20.123Z");
    }
}
