//! When a parsed cron expression fires: finds matching wall-clock times in the job's zone and
//! turns them into UTC instants with Vixie's DST rules (DESIGN §4.2).
//!
//! The search walks UTC time one *offset span* (a stretch with one UTC offset) at a time. Inside
//! a span, local time is UTC plus a constant, so the first matching local time gives the first
//! fire; if that lies past the span's end, the walk continues in the next span. That makes the
//! two DST rules local decisions at span starts: a fixed-time job fires at the start of a span
//! for matching times that the spring-forward gap skipped, and skips the repeated wall-clock
//! times at the start of a span that follows a fall-back.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;

use super::cron_syntax::{Fields, JobKind};

const DAY: i64 = 86_400;
/// How far ahead a search looks before answering "never" (~10 years).
const HORIZON_DAYS: i64 = 3_660;
/// Offset changes are looked for at this spacing, then pinned down by bisection. This is safe
/// while no offset span is shorter than the probe: in chrono-tz 0.10's data for 1900-2100 the
/// shortest span of any zone is about seven days.
const PROBE: i64 = DAY;
/// Bound on span changes plus skipped repeated times in one search (10 years hold ~20 spans).
const MAX_STEPS: usize = 100_000;

/// A cron expression bound to a time zone, ready to answer "when next".
#[derive(Debug, Clone, Copy)]
pub(crate) struct CronSchedule {
    fields: Fields,
    tz: Tz,
    first_second: u32,
    first_minute: u32,
}

impl CronSchedule {
    pub(crate) fn new(fields: Fields, tz: Tz) -> Self {
        Self {
            first_second: fields.seconds.trailing_zeros(),
            first_minute: fields.minutes.trailing_zeros(),
            fields,
            tz,
        }
    }

    /// The first fire at or after `t` (UTC seconds), or `None` if none comes within the horizon.
    pub(crate) fn next_at_or_after(&self, t: i64) -> Option<i64> {
        let fixed = self.fields.kind == JobKind::Fixed;
        let mut offset = self.offset_at(t)?;
        let before = self.offset_at(t.checked_sub(1)?)?;
        let last_day = (t + i64::from(offset)).div_euclid(DAY) + HORIZON_DAYS;
        // `t` may itself be the first instant of a span; then the span-start rules apply to it.
        let mut span = SpanStart::new(t, before, offset, fixed);
        // Instants in [span.at, known_until] are known to have `offset`.
        let mut known_until = t;
        let mut local_from = span.local_from.max(t + i64::from(offset));
        for _ in 0..MAX_STEPS {
            if let Some((gap_start, gap_end)) = span.gap.take()
                && self
                    .next_local(gap_start, last_day)
                    .is_some_and(|local| local < gap_end)
            {
                return Some(span.at);
            }
            let local = self.next_local(local_from, last_day)?;
            let candidate = local - i64::from(offset);
            if let Some(change) = self.offset_change(known_until, candidate, offset)? {
                let next_offset = self.offset_at(change)?;
                span = SpanStart::new(change, offset, next_offset, fixed);
                offset = next_offset;
                known_until = change;
                local_from = span.local_from;
                continue;
            }
            known_until = candidate;
            // Only reachable when the search starts inside a repeated hour: span starts skip them.
            if fixed && self.is_second_occurrence(local, candidate)? {
                local_from = local + 1;
                continue;
            }
            return Some(candidate);
        }
        None
    }

    /// The first instant in `(from, to]` whose UTC offset is not `offset`, if any.
    /// The outer `None` means a time outside chrono's range.
    fn offset_change(&self, from: i64, to: i64, offset: i32) -> Option<Option<i64>> {
        let mut lo = from;
        while lo < to {
            let hi = lo.saturating_add(PROBE).min(to);
            if self.offset_at(hi)? != offset {
                let mut hi = hi;
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if self.offset_at(mid)? == offset {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                return Some(Some(hi));
            }
            lo = hi;
        }
        Some(None)
    }

    /// UTC offset in seconds at instant `t`.
    fn offset_at(&self, t: i64) -> Option<i32> {
        let utc = DateTime::from_timestamp(t, 0)?.naive_utc();
        Some(
            self.tz
                .offset_from_utc_datetime(&utc)
                .fix()
                .local_minus_utc(),
        )
    }

    /// Whether `instant` is the later of two instants that show the wall-clock time `local`.
    fn is_second_occurrence(&self, local: i64, instant: i64) -> Option<bool> {
        Some(match self.tz.offset_from_local_datetime(&naive(local)?) {
            LocalResult::Ambiguous(a, b) => {
                let first = (local - i64::from(a.fix().local_minus_utc()))
                    .min(local - i64::from(b.fix().local_minus_utc()));
                instant > first
            }
            _ => false,
        })
    }

    /// The first matching wall-clock time at or after `from` (seconds on the local clock, as if
    /// it were UTC), up to the end of day `last_day` (days since 1970-01-01).
    fn next_local(&self, from: i64, last_day: i64) -> Option<i64> {
        let mut day = from.div_euclid(DAY);
        let mut time_of_day = from.rem_euclid(DAY) as u32;
        let mut date = naive(day * DAY)?.date();
        while day <= last_day {
            if !has(self.fields.months, date.month()) {
                let next = first_of_next_month(date)?;
                day += (next - date).num_days();
                date = next;
                time_of_day = 0;
                continue;
            }
            if self.day_matches(date)
                && let Some(second) = self.first_time_from(time_of_day)
            {
                return Some(day * DAY + i64::from(second));
            }
            date = date.succ_opt()?;
            day += 1;
            time_of_day = 0;
        }
        None
    }

    /// Vixie's day rule: when both day fields are restricted either may match; when one starts
    /// with `*` both must (which, for a plain `*`, means only the other one restricts).
    fn day_matches(&self, date: NaiveDate) -> bool {
        let f = &self.fields;
        let dom = has(f.days_of_month, date.day());
        let dow = has(f.days_of_week, date.weekday().num_days_from_sunday());
        if f.dom_star || f.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first matching second of the day at or after `second_of_day`.
    fn first_time_from(&self, second_of_day: u32) -> Option<u32> {
        let f = &self.fields;
        let (h, m, s) = (
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60,
        );
        let at = |h: u32, m: u32, s: u32| h * 3600 + m * 60 + s;
        if has(f.hours, h) {
            if has(f.minutes, m)
                && let Some(s) = next_bit(f.seconds, s)
            {
                return Some(at(h, m, s));
            }
            if let Some(m) = next_bit(f.minutes, m + 1) {
                return Some(at(h, m, self.first_second));
            }
        }
        let h = next_bit(f.hours, h + 1)?;
        Some(at(h, self.first_minute, self.first_second))
    }
}

/// What the DST rules say at the first instant `at` of an offset span.
struct SpanStart {
    at: i64,
    /// Where the search for ordinary matches starts, on the local clock.
    local_from: i64,
    /// For a fixed-time job after a spring-forward: the skipped wall-clock times `[start, end)`,
    /// any match among which fires at `at`.
    gap: Option<(i64, i64)>,
}

impl SpanStart {
    fn new(at: i64, before: i32, offset: i32, fixed: bool) -> Self {
        let (before_local, local) = (at + i64::from(before), at + i64::from(offset));
        Self {
            at,
            gap: (fixed && offset > before).then_some((before_local, local)),
            // After a fall-back, a fixed-time job already ran in the first occurrence of the
            // repeated times, so it resumes where the earlier span's wall clock stopped.
            local_from: if fixed {
                local.max(before_local)
            } else {
                local
            },
        }
    }
}

fn naive(local: i64) -> Option<NaiveDateTime> {
    Some(DateTime::from_timestamp(local, 0)?.naive_utc())
}

fn first_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    match date.month() {
        12 => NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1),
        m => NaiveDate::from_ymd_opt(date.year(), m + 1, 1),
    }
}

fn has(mask: u64, value: u32) -> bool {
    value < 64 && mask & (1 << value) != 0
}

/// The smallest set bit at position `from` or above.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}
