//! crontab(5) syntax as Vixie cron reads it: what each form fires, and what is refused and why.

use super::check;
use crate::spec::Spec;

#[test]
fn fields_lists_ranges_steps_and_names() {
    check(&[
        // Both day fields restricted: a day matches if EITHER matches. June 2026: the 1st is a
        // Monday (one fire, not two).
        (
            "",
            "0 0 1 * MON",
            "2026-06-01T00:00:00Z",
            "2026-07-01T00:00:00Z",
            &[
                "2026-06-01T00:00:00+00:00",
                "2026-06-08T00:00:00+00:00",
                "2026-06-15T00:00:00+00:00",
                "2026-06-22T00:00:00+00:00",
                "2026-06-29T00:00:00+00:00",
            ],
        ),
        // July 2026: the 1st is a Wednesday.
        (
            "",
            "0 0 1 * MON",
            "2026-07-01T00:00:00Z",
            "2026-08-01T00:00:00Z",
            &[
                "2026-07-01T00:00:00+00:00",
                "2026-07-06T00:00:00+00:00",
                "2026-07-13T00:00:00+00:00",
                "2026-07-20T00:00:00+00:00",
                "2026-07-27T00:00:00+00:00",
            ],
        ),
        // A day field starting with `*` (here `*/2`) makes Vixie intersect: odd-day Mondays.
        (
            "",
            "0 0 */2 * MON",
            "2026-07-01T00:00:00Z",
            "2026-08-01T00:00:00Z",
            &["2026-07-13T00:00:00+00:00", "2026-07-27T00:00:00+00:00"],
        ),
        (
            "",
            "0 0 1 * *",
            "2026-07-01T00:00:00Z",
            "2026-08-02T00:00:00Z",
            &["2026-07-01T00:00:00+00:00", "2026-08-01T00:00:00+00:00"],
        ),
        // Sunday is 0, 7 or SUN (any case); 2026-03-01 and 03-08 are Sundays.
        (
            "",
            "0 12 * * 0",
            "2026-03-01T00:00:00Z",
            "2026-03-15T00:00:00Z",
            &["2026-03-01T12:00:00+00:00", "2026-03-08T12:00:00+00:00"],
        ),
        (
            "",
            "0 12 * * 7",
            "2026-03-01T00:00:00Z",
            "2026-03-15T00:00:00Z",
            &["2026-03-01T12:00:00+00:00", "2026-03-08T12:00:00+00:00"],
        ),
        (
            "",
            "0 12 * * sun",
            "2026-03-01T00:00:00Z",
            "2026-03-15T00:00:00Z",
            &["2026-03-01T12:00:00+00:00", "2026-03-08T12:00:00+00:00"],
        ),
        (
            "",
            "0 9 * * Mon-Fri",
            "2026-03-06T00:00:00Z",
            "2026-03-11T00:00:00Z",
            &[
                "2026-03-06T09:00:00+00:00",
                "2026-03-09T09:00:00+00:00",
                "2026-03-10T09:00:00+00:00",
            ],
        ),
        // A name range may end on Sunday.
        (
            "",
            "0 0 * * FRI-SUN",
            "2026-03-05T00:00:00Z",
            "2026-03-10T00:00:00Z",
            &[
                "2026-03-06T00:00:00+00:00",
                "2026-03-07T00:00:00+00:00",
                "2026-03-08T00:00:00+00:00",
            ],
        ),
        (
            "",
            "0 0 * * 5-7",
            "2026-03-05T00:00:00Z",
            "2026-03-10T00:00:00Z",
            &[
                "2026-03-06T00:00:00+00:00",
                "2026-03-07T00:00:00+00:00",
                "2026-03-08T00:00:00+00:00",
            ],
        ),
        (
            "",
            "0 0 1 jan,Jul *",
            "2026-06-01T00:00:00Z",
            "2027-06-01T00:00:00Z",
            &["2026-07-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"],
        ),
        (
            "",
            "0 0 1 FEB-APR/2 *",
            "2026-01-01T00:00:00Z",
            "2026-12-31T00:00:00Z",
            &["2026-02-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00"],
        ),
        (
            "",
            "*/7 * * * *",
            "2026-01-01T00:49:00Z",
            "2026-01-01T01:08:00Z",
            &[
                "2026-01-01T00:49:00+00:00",
                "2026-01-01T00:56:00+00:00",
                "2026-01-01T01:00:00+00:00",
                "2026-01-01T01:07:00+00:00",
            ],
        ),
        (
            "",
            "5-20/5,59 * * * *",
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            &[
                "2026-01-01T00:05:00+00:00",
                "2026-01-01T00:10:00+00:00",
                "2026-01-01T00:15:00+00:00",
                "2026-01-01T00:20:00+00:00",
                "2026-01-01T00:59:00+00:00",
            ],
        ),
        // Leap days only: every four years.
        (
            "",
            "0 0 29 2 *",
            "2026-01-01T00:00:00Z",
            "2033-01-01T00:00:00Z",
            &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
        ),
        // 6 fields: seconds first.
        (
            "",
            "*/20 * * * * *",
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:01:00Z",
            &[
                "2026-01-01T00:00:00+00:00",
                "2026-01-01T00:00:20+00:00",
                "2026-01-01T00:00:40+00:00",
            ],
        ),
        (
            "Europe/Paris",
            "30 0 9 * * *",
            "2026-07-01T00:00:00Z",
            "2026-07-03T00:00:00Z",
            &["2026-07-01T09:00:30+02:00", "2026-07-02T09:00:30+02:00"],
        ),
        (
            "UTC",
            "  0   12  *  *  * ",
            "2026-07-01T00:00:00Z",
            "2026-07-02T00:00:00Z",
            &["2026-07-01T12:00:00+00:00"],
        ),
    ]);
}

#[test]
fn macros_expand_like_vixie() {
    check(&[
        (
            "",
            "@yearly",
            "2026-03-01T00:00:00Z",
            "2028-01-02T00:00:00Z",
            &["2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00"],
        ),
        (
            "",
            "@annually",
            "2026-03-01T00:00:00Z",
            "2027-03-01T00:00:00Z",
            &["2027-01-01T00:00:00+00:00"],
        ),
        (
            "",
            "@monthly",
            "2026-03-01T00:00:01Z",
            "2026-05-02T00:00:00Z",
            &["2026-04-01T00:00:00+00:00", "2026-05-01T00:00:00+00:00"],
        ),
        (
            "",
            "@weekly",
            "2026-03-02T00:00:00Z",
            "2026-03-16T00:00:00Z",
            &["2026-03-08T00:00:00+00:00", "2026-03-15T00:00:00+00:00"],
        ),
        (
            "",
            "@DAILY",
            "2026-03-02T10:00:00Z",
            "2026-03-04T00:00:01Z",
            &["2026-03-03T00:00:00+00:00", "2026-03-04T00:00:00+00:00"],
        ),
        (
            "",
            "@midnight",
            "2026-03-02T10:00:00Z",
            "2026-03-04T00:00:00Z",
            &["2026-03-03T00:00:00+00:00"],
        ),
        (
            "",
            "@hourly",
            "2026-03-02T10:00:00.001Z",
            "2026-03-02T12:00:00Z",
            &["2026-03-02T11:00:00+00:00"],
        ),
    ]);
}

/// A row: expression, zone, the field at fault and text its message must contain.
type Bad<'a> = (&'a str, &'a str, &'a str, &'a str);

#[test]
fn invalid_cron_specs_name_the_field_and_the_problem() {
    let rows: &[Bad<'_>] = &[
        (
            "61 0 * * *",
            "",
            "cron.expression",
            "minute field: 61 is out of range 0-59",
        ),
        (
            "0 24 * * *",
            "",
            "cron.expression",
            "hour field: 24 is out of range 0-23",
        ),
        (
            "0 0 0 * *",
            "",
            "cron.expression",
            "day-of-month field: 0 is out of range 1-31",
        ),
        (
            "0 0 * 13 *",
            "",
            "cron.expression",
            "month field: 13 is out of range 1-12",
        ),
        (
            "0 0 * * 8",
            "",
            "cron.expression",
            "day-of-week field: 8 is out of range 0-7",
        ),
        (
            "60 * * * * *",
            "",
            "cron.expression",
            "second field: 60 is out of range 0-59",
        ),
        (
            "99999999999 * * * *",
            "",
            "cron.expression",
            "99999999999 is out of range 0-59",
        ),
        ("* * * *", "", "cron.expression", "expected 5 fields"),
        (
            "* * * * * * *",
            "",
            "cron.expression",
            "or 6 (second first), found 7",
        ),
        ("", "", "cron.expression", "expression is empty"),
        ("   ", "", "cron.expression", "expression is empty"),
        ("@reboot", "", "cron.expression", "@reboot is not supported"),
        (
            "@fortnightly",
            "",
            "cron.expression",
            "unknown macro \"@fortnightly\"",
        ),
        ("@daily 5", "", "cron.expression", "unknown macro"),
        (
            "0 0 L * *",
            "",
            "cron.expression",
            "day-of-month field: \"L\": `L` and `W`",
        ),
        (
            "0 0 15W * *",
            "",
            "cron.expression",
            "day-of-month field: \"15W\": `L` and `W`",
        ),
        (
            "0 0 * * 5L",
            "",
            "cron.expression",
            "day-of-week field: \"5L\": `L` and `W`",
        ),
        ("0 0 * * MON#2", "", "cron.expression", "`#` (nth weekday)"),
        (
            "0 0 ? * MON",
            "",
            "cron.expression",
            "`?` is a Quartz extension",
        ),
        (
            "*/0 * * * *",
            "",
            "cron.expression",
            "the step must be at least 1",
        ),
        (
            "*/61 * * * *",
            "",
            "cron.expression",
            "the step 61 is larger than the field's range",
        ),
        (
            "*/x * * * *",
            "",
            "cron.expression",
            "the step \"x\" is not a number",
        ),
        (
            "5/10 * * * *",
            "",
            "cron.expression",
            "a step needs `*` or a range before it",
        ),
        (
            "30-10 * * * *",
            "",
            "cron.expression",
            "range 30-10 is backwards",
        ),
        (
            "1- * * * *",
            "",
            "cron.expression",
            "minute field: a range is missing a value",
        ),
        (
            "1,,2 * * * *",
            "",
            "cron.expression",
            "minute field: empty item in the list",
        ),
        (
            "abc * * * *",
            "",
            "cron.expression",
            "minute field: \"abc\" is not a number in 0-59",
        ),
        (
            "0 0 * MON *",
            "",
            "cron.expression",
            "month field: \"MON\" is neither a number",
        ),
        (
            "0 0 * * JAN",
            "",
            "cron.expression",
            "day-of-week field: \"JAN\" is neither",
        ),
        ("0 0 30 2 *", "", "cron.expression", "would never fire"),
        (
            "0 0 31 4,6,9,11 *",
            "",
            "cron.expression",
            "would never fire",
        ),
        (
            "0 0 * * *",
            "Mars/Olympus",
            "cron.timezone",
            "unknown time zone \"Mars/Olympus\"",
        ),
        (
            "0 0 * * *",
            "america/new_york",
            "cron.timezone",
            "did you mean \"America/New_York\"?",
        ),
        ("0 0 * * *", " UTC", "cron.timezone", "unknown time zone"),
    ];
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|&(expression, zone, field, text)| {
            let spec = Spec::Cron {
                expression: expression.into(),
                timezone: zone.into(),
            };
            match spec.compile() {
                Err(e) if e.field == field && e.message.contains(text) => None,
                Err(e) => Some(format!(
                    "{expression:?} {zone:?}: got {e}, want {field}: ..{text}.."
                )),
                Ok(_) => Some(format!(
                    "{expression:?} {zone:?}: accepted, want {field}: {text}"
                )),
            }
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn borderline_but_valid_cron_specs_compile() {
    for (expression, zone) in [
        ("0 0 31 2,3 *", ""), // fires on 31 March
        ("0 0 30 2 MON", ""), // either day field: every Monday
        ("0 0 * * 0-7", ""),  // 7 folds onto Sunday
        ("*/59 * * * *", ""), // the widest step
        ("0 0 * * */7", ""),  // 0 and 7: Sundays
        ("0 0 1 1 *", "UTC"),
        ("0 0 1 1 *", "Etc/GMT+5"),
    ] {
        let spec = Spec::Cron {
            expression: expression.into(),
            timezone: zone.into(),
        };
        if let Err(e) = spec.compile() {
            panic!("{expression:?} in {zone:?} should compile: {e}");
        }
    }
}
