//! Cron expression text -> the sets of values each field allows, following crontab(5) as
//! Vixie/ISC cron reads it. We check the text ourselves (for precise messages and to refuse the
//! non-Vixie extensions) and let croner expand the normalised fields into value sets.

use croner::parser::{CronParser, Seconds, Year};

/// Which DST rule a cron job follows (DESIGN §4.2), decided by the *text* of its spec as Vixie
/// cron does: a minute or hour field that starts with `*` makes a wildcard job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// Runs once per matching wall-clock time: in a spring-forward gap at the first instant after
    /// it, in a repeated hour only at the first occurrence.
    Fixed,
    /// Follows the wall clock as it is: missing times never fire, repeated times fire twice.
    Wildcard,
}

/// The parsed expression: one bit per allowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fields {
    pub seconds: u64,
    pub minutes: u64,
    pub hours: u64,
    /// Bits 1..=31.
    pub days_of_month: u64,
    /// Bits 1..=12.
    pub months: u64,
    /// Bits 0..=6, Sunday = 0 (a 7 in the text is folded onto 0).
    pub days_of_week: u64,
    /// The day-of-month text starts with `*` (Vixie's `DOM_STAR`).
    pub dom_star: bool,
    /// The day-of-week text starts with `*` (Vixie's `DOW_STAR`).
    pub dow_star: bool,
    pub kind: JobKind,
}

struct FieldDef {
    name: &'static str,
    lo: u32,
    hi: u32,
    /// Three-letter names, the first standing for `name_base`.
    names: &'static [&'static str],
    name_base: u32,
}

const SECOND: FieldDef = plain("second", 0, 59);
const MINUTE: FieldDef = plain("minute", 0, 59);
const HOUR: FieldDef = plain("hour", 0, 23);
const DAY_OF_MONTH: FieldDef = plain("day-of-month", 1, 31);
const MONTH: FieldDef = FieldDef {
    name: "month",
    lo: 1,
    hi: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    name_base: 1,
};
const DAY_OF_WEEK: FieldDef = FieldDef {
    name: "day-of-week",
    lo: 0,
    hi: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    name_base: 0,
};

const fn plain(name: &'static str, lo: u32, hi: u32) -> FieldDef {
    FieldDef {
        name,
        lo,
        hi,
        names: &[],
        name_base: 0,
    }
}

const MACROS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Parses a crontab(5) expression: 5 fields (`m h dom mon dow`), 6 fields (seconds first), or
/// one of the macros `@yearly @annually @monthly @weekly @daily @midnight @hourly`.
///
/// Deliberately refused: `@reboot` (it has no fire time) and the non-Vixie extensions `L`, `W`,
/// `#` and `?` (Quartz-style "last", "nearest weekday", "nth weekday", "no value"). croner
/// accepts them, but Almanac promises Vixie semantics and users of other crons would get
/// silently different schedules. Also refused, unlike some crons: a step after a single value
/// (`5/10`), backwards ranges, steps wider than the field, names in the wrong field, and
/// day/month combinations that can never occur (`0 0 30 2 *`).
///
/// Errors are messages to show the user, starting with the field at fault.
pub(crate) fn parse(expression: &str) -> Result<Fields, String> {
    let text = expression.trim();
    if text.is_empty() {
        return Err("expression is empty".to_owned());
    }
    let expanded = if text.starts_with('@') {
        expand_macro(text)?
    } else {
        text
    };
    let parts: Vec<&str> = expanded.split_whitespace().collect();
    let (seconds, rest) = match parts.len() {
        5 => ("0", &parts[..]),
        6 => (parts[0], &parts[1..]),
        n => {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (second \
                 first), found {n}"
            ));
        }
    };
    let defs = [&SECOND, &MINUTE, &HOUR, &DAY_OF_MONTH, &MONTH, &DAY_OF_WEEK];
    let texts = [seconds, rest[0], rest[1], rest[2], rest[3], rest[4]];
    let mut normalized = Vec::with_capacity(6);
    for (def, field) in defs.iter().zip(texts) {
        let items = normalize_field(def, field).map_err(|m| format!("{} field: {m}", def.name))?;
        normalized.push(items);
    }
    let fields = expand_with_croner(&normalized.join(" "), texts)?;
    check_days_can_occur(&fields)?;
    Ok(fields)
}

fn expand_macro(text: &str) -> Result<&'static str, String> {
    if text.eq_ignore_ascii_case("@reboot") {
        return Err("@reboot is not supported: a schedule needs fire times".to_owned());
    }
    MACROS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, expansion)| *expansion)
        .ok_or_else(|| {
            let known: Vec<&str> = MACROS.iter().map(|(name, _)| *name).collect();
            format!("unknown macro \"{text}\" (known: {})", known.join(" "))
        })
}

/// Checks one field and rewrites it with numbers only (`MON-FRI` -> `1-5`, `*` -> `0-59`), the
/// form croner reads without guessing (croner replaces names anywhere in the pattern, so `MON` in
/// the month field would silently become January).
fn normalize_field(def: &FieldDef, text: &str) -> Result<String, String> {
    if text.contains('?') {
        return Err(
            "`?` is a Quartz extension that Vixie cron does not have; write `*`".to_owned(),
        );
    }
    if text.contains('#') {
        return Err(format!(
            "\"{text}\": `#` (nth weekday) is an extension that Vixie cron does not have"
        ));
    }
    let mut out = Vec::new();
    for item in text.split(',') {
        out.push(normalize_item(def, text, item)?);
    }
    Ok(out.join(","))
}

fn normalize_item(def: &FieldDef, field: &str, item: &str) -> Result<String, String> {
    if item.is_empty() {
        return Err(format!("empty item in the list \"{field}\""));
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(parse_step(def, item, step)?)),
        None => (item, None),
    };
    let (lo, hi) = if base == "*" {
        (def.lo, def.hi)
    } else if let Some((a, b)) = base.split_once('-') {
        let start = value(def, a)?;
        let mut end = value(def, b)?;
        // `FRI-SUN`: a name range ending on Sunday means day 7.
        if def.name_base == 0 && !def.names.is_empty() && end == 0 && start > 0 && is_name(b) {
            end = 7;
        }
        if start > end {
            return Err(format!("range {a}-{b} is backwards (start after end)"));
        }
        (start, end)
    } else {
        let single = value(def, base)?;
        if let Some(step) = step {
            return Err(format!(
                "\"{item}\": a step needs `*` or a range before it, e.g. \"*/{step}\" or \
                 \"{single}-{}/{step}\"",
                def.hi
            ));
        }
        return Ok(single.to_string());
    };
    Ok(match step {
        Some(step) => format!("{lo}-{hi}/{step}"),
        None => format!("{lo}-{hi}"),
    })
}

fn parse_step(def: &FieldDef, item: &str, step: &str) -> Result<u32, String> {
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{item}\": the step \"{step}\" is not a number"));
    }
    let span = def.hi - def.lo;
    match step.parse::<u32>() {
        Ok(0) => Err(format!("\"{item}\": the step must be at least 1")),
        Ok(n) if n <= span => Ok(n),
        _ => Err(format!(
            "\"{item}\": the step {step} is larger than the field's range {}-{}",
            def.lo, def.hi
        )),
    }
}

fn is_name(token: &str) -> bool {
    token.bytes().all(|b| b.is_ascii_alphabetic())
}

fn value(def: &FieldDef, token: &str) -> Result<u32, String> {
    if token.is_empty() {
        return Err("a range is missing a value (write e.g. \"1-5\")".to_owned());
    }
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return match token.parse::<u32>() {
            Ok(v) if (def.lo..=def.hi).contains(&v) => Ok(v),
            _ => Err(format!("{token} is out of range {}-{}", def.lo, def.hi)),
        };
    }
    if let Some(i) = def.names.iter().position(|n| n.eq_ignore_ascii_case(token)) {
        return Ok(def.name_base + i as u32);
    }
    let upper = token.to_ascii_uppercase();
    let extension = (def.name == DAY_OF_MONTH.name || def.name == DAY_OF_WEEK.name)
        && (upper.contains('L') || upper.contains('W'))
        && upper
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'L' || b == b'W');
    if extension {
        return Err(format!(
            "\"{token}\": `L` and `W` (last day, nearest weekday) are extensions that Vixie cron \
             does not have"
        ));
    }
    Err(match def.names.first() {
        Some(first) => format!(
            "\"{token}\" is neither a number in {}-{} nor a name {first}-{}",
            def.lo,
            def.hi,
            def.names[def.names.len() - 1]
        ),
        None => format!("\"{token}\" is not a number in {}-{}", def.lo, def.hi),
    })
}

/// Lets croner expand the checked, numeric fields into value sets.
fn expand_with_croner(normalized: &str, texts: [&str; 6]) -> Result<Fields, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Disallowed)
        .build()
        .parse(normalized)
        // Unreachable after our checks; kept as an honest error rather than a panic.
        .map_err(|e| format!("cannot parse \"{normalized}\": {e}"))?;
    let p = &cron.pattern;
    let bits = |values: Vec<u16>| values.into_iter().fold(0u64, |acc, v| acc | 1 << v);
    let wildcard = texts[1].starts_with('*') || texts[2].starts_with('*');
    Ok(Fields {
        seconds: bits(p.seconds.values()),
        minutes: bits(p.minutes.values()),
        hours: bits(p.hours.values()),
        days_of_month: bits(p.days.values()),
        months: bits(p.months.values()),
        days_of_week: bits(p.days_of_week.values()),
        dom_star: texts[3].starts_with('*'),
        dow_star: texts[5].starts_with('*'),
        kind: if wildcard {
            JobKind::Wildcard
        } else {
            JobKind::Fixed
        },
    })
}

/// Refuses expressions whose day fields can never match, like `0 0 30 2 *`, which would
/// otherwise be accepted and never fire. Any (month, day) pair that exists falls on every
/// weekday within 28 years, so only the day-of-month x month combination can be impossible.
fn check_days_can_occur(f: &Fields) -> Result<(), String> {
    const MAX_DAYS: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let day_of_week_alone_suffices = !f.dom_star && !f.dow_star && f.days_of_week != 0;
    let possible = (1..=12u32).any(|m| {
        f.months & (1 << m) != 0
            && (1..=MAX_DAYS[m as usize]).any(|d| f.days_of_month & (1 << d) != 0)
    });
    if possible || day_of_week_alone_suffices {
        Ok(())
    } else {
        Err(
            "day-of-month field: none of its days occurs in the months of the month field \
             (e.g. 30 February), so it would never fire"
                .to_owned(),
        )
    }
}
