//! Fitting a message into a channel's documented limits: text is cut with an ellipsis
//! (never refused), and fields beyond a channel's count or size budget are summarised
//! in one last "… N more" field.

use almanac_proto::executor::v1::MessageField;

/// The mark left where text was cut.
const ELLIPSIS: char = '…';

/// At most `max` characters of `s`, the last one an ellipsis when it was cut.
pub(super) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push(ELLIPSIS);
    out
}

/// At most `max` bytes of UTF-8 of `s`, cut at a character boundary and ending in an
/// ellipsis when it was cut (for limits stated in bytes, like Teams' message size).
pub(super) fn truncate_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let room = max.saturating_sub(ELLIPSIS.len_utf8());
    let mut end = room.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = s[..end].to_owned();
    if max >= ELLIPSIS.len_utf8() {
        out.push(ELLIPSIS);
    }
    out
}

/// How a channel measures and bounds fields.
pub(super) struct FieldLimits {
    /// The most fields shown (the summary field included).
    pub max_count: usize,
    /// The longest name, in the channel's unit.
    pub max_name: usize,
    /// The longest value, in the channel's unit.
    pub max_value: usize,
    /// The most all names and values may take together, in the channel's unit.
    pub budget: usize,
    /// Characters (`false`) or UTF-8 bytes (`true`).
    pub bytes: bool,
}

impl FieldLimits {
    fn cut(&self, s: &str, max: usize) -> String {
        if self.bytes {
            truncate_bytes(s, max)
        } else {
            truncate_chars(s, max)
        }
    }

    fn len(&self, s: &str) -> usize {
        if self.bytes {
            s.len()
        } else {
            s.chars().count()
        }
    }
}

/// The fields as a channel can show them: each name and value cut to its limit, in
/// order, until the count or the budget is spent; then one `("…", "N more fields")`.
pub(super) fn fit_fields(fields: &[MessageField], limits: &FieldLimits) -> Vec<(String, String)> {
    let summary = |n: usize| {
        let noun = if n == 1 { "field" } else { "fields" };
        (ELLIPSIS.to_string(), format!("{n} more {noun}"))
    };
    // Room kept for the summary, should one be needed.
    let summary_cost = 16;
    let mut out = Vec::new();
    let mut used = 0;
    for (i, field) in fields.iter().enumerate() {
        let name = limits.cut(&field.name, limits.max_name);
        let value = limits.cut(&field.value, limits.max_value);
        let cost = limits.len(&name) + limits.len(&value);
        let is_last = i + 1 == fields.len();
        let count_left = if is_last {
            out.len() < limits.max_count
        } else {
            out.len() + 1 < limits.max_count
        };
        let reserve = if is_last { 0 } else { summary_cost };
        if !count_left || used + cost + reserve > limits.budget {
            out.push(summary(fields.len() - i));
            return out;
        }
        used += cost;
        out.push((name, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(n: usize, value: &str) -> Vec<MessageField> {
        (0..n)
            .map(|i| MessageField {
                name: format!("f{i}"),
                value: value.to_owned(),
            })
            .collect()
    }

    #[test]
    fn text_is_cut_with_an_ellipsis_within_the_limit() {
        assert_eq!(truncate_chars("short", 10), "short");
        assert_eq!(truncate_chars("abcdef", 4), "abc…");
        assert_eq!(truncate_chars("ééééé", 3).chars().count(), 3);
        let cut = truncate_bytes("ééééé", 6);
        assert!(cut.len() <= 6 && cut.ends_with('…'), "{cut:?}");
        assert_eq!(truncate_bytes("abc", 3), "abc");
    }

    #[test]
    fn fields_beyond_the_count_are_summarised() {
        let limits = FieldLimits {
            max_count: 3,
            max_name: 10,
            max_value: 10,
            budget: 1000,
            bytes: false,
        };
        let got = fit_fields(&fields(5, "v"), &limits);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], ("…".to_string(), "3 more fields".to_string()));
        assert_eq!(fit_fields(&fields(3, "v"), &limits).len(), 3);
        assert_eq!(fit_fields(&fields(3, "v"), &limits)[2].0, "f2");
    }

    #[test]
    fn fields_beyond_the_budget_are_summarised_and_values_cut() {
        let limits = FieldLimits {
            max_count: 25,
            max_name: 256,
            max_value: 8,
            budget: 60,
            bytes: false,
        };
        let got = fit_fields(&fields(10, "a long value"), &limits);
        let (summary, shown) = got.split_last().unwrap();
        assert!(shown.iter().all(|(_, v)| v.chars().count() <= 8));
        assert_eq!(summary.0, "…");
        let total: usize = got
            .iter()
            .map(|(n, v)| n.chars().count() + v.chars().count())
            .sum();
        assert!(total <= 60, "{total}");
    }
}
