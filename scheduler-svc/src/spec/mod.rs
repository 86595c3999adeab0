//! Schedule specs (DESIGN §4.1, §4.2): what a user writes (`Spec`), how it is checked and
//! prepared (`Spec::compile`), and when it fires (`CompiledSpec`). Pure: no I/O, no clock.
//!
//! All times are UTC milliseconds. Cron fires fall on whole seconds; interval and once fires on
//! the millisecond given.

mod cron_schedule;
mod cron_syntax;
mod jitter;
#[cfg(test)]
mod tests;

use std::iter;

use chrono_tz::{TZ_VARIANTS, Tz};

use cron_schedule::CronSchedule;
pub use jitter::jitter_ms;

/// When a schedule fires; stored as JSON by the scheduler (serde, tagged).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Spec {
    /// A crontab(5) expression read like Vixie cron, in an IANA time zone ("" means UTC).
    /// See [`Spec::compile`] for the accepted syntax.
    Cron {
        expression: String,
        timezone: String,
    },
    /// Fires at `offset_ms + k * every_ms` for every integer `k`: anchored at the Unix epoch, so
    /// it never drifts with execution time.
    Interval { every_ms: i64, offset_ms: i64 },
    /// A single fire at `at_ms`.
    Once { at_ms: i64 },
}

/// A spec that cannot be used, naming the proto field under the spec that is wrong:
/// `cron.expression`, `cron.timezone`, `interval.every`, `interval.offset` or `once.at`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

impl SpecError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl Spec {
    /// Validates and prepares the spec: parses the cron expression, resolves the zone.
    ///
    /// Cron syntax is crontab(5) as Vixie/ISC cron reads it: 5 fields (`m h dom mon dow`) or 6
    /// (seconds first); lists, ranges, steps (`*/15`, `1-30/5`); month and weekday names,
    /// case-insensitive; day-of-week 0 and 7 both Sunday; the macros `@yearly @annually
    /// @monthly @weekly @daily @midnight @hourly`. Deliberately refused: `@reboot`, the
    /// Quartz-style extensions `L`, `W`, `#` and `?` (croner would accept them, but they are not
    /// Vixie cron and would surprise users who know it), a step after a single value (`5/10`),
    /// and day fields that can never match (`0 0 30 2 *`).
    pub fn compile(&self) -> Result<CompiledSpec, SpecError> {
        let inner = match self {
            Spec::Cron {
                expression,
                timezone,
            } => {
                let fields = cron_syntax::parse(expression)
                    .map_err(|message| SpecError::new("cron.expression", message))?;
                Inner::Cron(CronSchedule::new(fields, parse_zone(timezone)?))
            }
            Spec::Interval {
                every_ms,
                offset_ms,
            } => {
                if *every_ms <= 0 {
                    return Err(SpecError::new(
                        "interval.every",
                        format!("every must be more than 0, got {every_ms} ms"),
                    ));
                }
                if !(0..*every_ms).contains(offset_ms) {
                    return Err(SpecError::new(
                        "interval.offset",
                        format!(
                            "offset must be at least 0 and less than every ({every_ms} ms), got \
                             {offset_ms} ms"
                        ),
                    ));
                }
                Inner::Interval {
                    every: *every_ms,
                    offset: *offset_ms,
                }
            }
            Spec::Once { at_ms } => Inner::Once { at: *at_ms },
        };
        Ok(CompiledSpec { inner })
    }
}

fn parse_zone(name: &str) -> Result<Tz, SpecError> {
    if name.is_empty() {
        return Ok(Tz::UTC);
    }
    name.parse::<Tz>().map_err(|_| {
        let hint = TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .map(|tz| format!(" (did you mean \"{}\"?)", tz.name()))
            .unwrap_or_default();
        SpecError::new(
            "cron.timezone",
            format!(
                "unknown time zone \"{name}\"{hint}: expected an IANA name such as \
                 \"Europe/Berlin\""
            ),
        )
    })
}

/// A checked spec, ready to answer "when next". Cheap to clone (plain data), `Send + Sync`.
#[derive(Debug, Clone)]
pub struct CompiledSpec {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Cron(CronSchedule),
    Interval { every: i64, offset: i64 },
    Once { at: i64 },
}

impl CompiledSpec {
    /// The first fire time `>= t_ms` (UTC ms), or `None` if there is none: a once in the past, a
    /// time outside what the calendar can represent, or no cron fire within ~10 years.
    pub fn next_at_or_after(&self, t_ms: i64) -> Option<i64> {
        match &self.inner {
            Inner::Cron(schedule) => {
                // Cron fires are whole seconds: round `t_ms` up to one.
                let t = t_ms.div_euclid(1000) + i64::from(t_ms.rem_euclid(1000) != 0);
                schedule.next_at_or_after(t)?.checked_mul(1000)
            }
            Inner::Interval { every, offset } => {
                let (t, every, offset) =
                    (i128::from(t_ms), i128::from(*every), i128::from(*offset));
                let behind = (t - offset).rem_euclid(every);
                let next = if behind == 0 { t } else { t + every - behind };
                i64::try_from(next).ok()
            }
            Inner::Once { at } => (*at >= t_ms).then_some(*at),
        }
    }

    /// The first fire time `> t_ms`.
    pub fn next_after(&self, t_ms: i64) -> Option<i64> {
        self.next_at_or_after(t_ms.checked_add(1)?)
    }

    /// Fire times `>= t_ms` in strictly increasing order, ending where [`Self::next_after`] finds
    /// none. Unbounded for most specs: take what you need.
    pub fn fires_from(&self, t_ms: i64) -> impl Iterator<Item = i64> + '_ {
        iter::successors(self.next_at_or_after(t_ms), move |&last| {
            self.next_after(last)
        })
    }
}
