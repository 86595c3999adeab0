//! Rendering the live view: the node table at an instant (elapsed and countdown times
//! tick), the summary line, and fitting the lines into the terminal.

use almanac_proto::executor::v1::ExecutionStatus;

use super::{Phase, View};
use crate::output::{Table, label, millis};

/// The order of the summary's counts.
const SUMMARY_ORDER: &[&str] = &[
    "succeeded",
    "failed",
    "timed_out",
    "skipped",
    "cancelled",
    "running",
    "retrying",
    "pending",
];

impl View {
    /// The view at `now_ms`: a title, the node table, and a summary line.
    pub fn render(&self, now_ms: i64) -> Vec<String> {
        let mut table = Table::new(&["NODE", "KIND", "STATUS", "ATTEMPT", "TIME", "DETAIL"]);
        for n in &self.nodes {
            let attempt = if n.attempt == 0 {
                "-".to_owned()
            } else {
                n.attempt.to_string()
            };
            let (time, detail) = match &n.phase {
                Phase::Pending => (String::new(), String::new()),
                Phase::Running { since_ms } => {
                    let detail =
                        n.progress
                            .as_ref()
                            .map_or_else(String::new, |(percent, message)| {
                                format!("{percent:.0}% {message}").trim_end().to_owned()
                            });
                    (ticking(now_ms - since_ms), detail)
                }
                Phase::Succeeded { took_ms } => {
                    (took_ms.map_or_else(String::new, millis), String::new())
                }
                Phase::Failed { error, took_ms } => {
                    (took_ms.map_or_else(String::new, millis), one_line(error))
                }
                Phase::Retrying {
                    error,
                    next_attempt,
                    at_ms,
                    backoff_ms,
                } => {
                    let wait = ticking((at_ms - now_ms).max(0));
                    let mut detail = format!(
                        "attempt {next_attempt} in {wait} (backoff {})",
                        millis(*backoff_ms)
                    );
                    if !error.is_empty() {
                        detail.push_str(&format!(": {}", one_line(error)));
                    }
                    (String::new(), detail)
                }
                Phase::Skipped { reason } => (String::new(), one_line(reason)),
                Phase::Cancelled { error } | Phase::TimedOut { error } => {
                    (String::new(), one_line(error))
                }
            };
            let kind = if n.kind.is_empty() {
                "-".to_owned()
            } else {
                n.kind.clone()
            };
            table.row(vec![
                n.id.clone(),
                kind,
                n.phase.word().to_owned(),
                attempt,
                time,
                detail,
            ]);
        }
        let mut lines = vec![self.title.clone()];
        lines.extend(table.render());
        lines.push(self.summary(now_ms));
        lines
    }

    /// `running for 3.2s: 2 succeeded, 1 running, 3 pending`, or once over
    /// `failed in 4.1s: 3 succeeded, 1 failed, 2 cancelled: <error>`; then the note.
    fn summary(&self, now_ms: i64) -> String {
        let mut line = self.status_line(now_ms);
        if !self.note.is_empty() {
            line.push_str(&format!(" ({})", self.note));
        }
        line
    }

    fn status_line(&self, now_ms: i64) -> String {
        let counts: Vec<String> = SUMMARY_ORDER
            .iter()
            .filter_map(|word| {
                let n = self
                    .nodes
                    .iter()
                    .filter(|n| n.phase.word() == *word)
                    .count();
                (n > 0).then(|| format!("{n} {word}"))
            })
            .collect();
        let counts = counts.join(", ");
        match &self.finished {
            Some(outcome) => {
                let status = ExecutionStatus::try_from(outcome.status)
                    .map(|s| label(s.as_str_name(), "EXECUTION_STATUS_"))
                    .unwrap_or_else(|_| outcome.status.to_string());
                let mut line = match (self.started_ms, outcome.at_ms) {
                    (Some(s), Some(f)) => format!("{status} in {}", millis(f - s)),
                    _ => status,
                };
                if !counts.is_empty() {
                    line.push_str(&format!(": {counts}"));
                }
                if !outcome.error.is_empty() {
                    line.push_str(&format!(": {}", one_line(&outcome.error)));
                }
                line
            }
            None => {
                let mut line = match self.started_ms {
                    Some(s) => format!("running for {}", ticking(now_ms - s)),
                    None => "running".to_owned(),
                };
                if !counts.is_empty() {
                    line.push_str(&format!(": {counts}"));
                }
                line
            }
        }
    }
}

/// A time that changes as the view ticks, to a tenth of a second.
fn ticking(ms: i64) -> String {
    millis(ms.max(0) / 100 * 100)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Fits the lines of [`View::render`] into a terminal of `width` columns and `height`
/// rows: long lines are cut (a wrapped line would break the redraw), and when the table is
/// too tall its last rows give way to a `… N more nodes` line, keeping the title, the
/// header and the summary. The last row of the terminal stays free for the cursor.
pub fn fit(mut lines: Vec<String>, width: usize, height: usize) -> Vec<String> {
    let room = height.max(6) - 1;
    if lines.len() > room && lines.len() >= 3 {
        let summary = lines.pop().unwrap_or_default();
        // Title, header, the rows that fit, "more", summary.
        let keep = room - 4;
        let hidden = lines.len() - 2 - keep;
        lines.truncate(2 + keep);
        lines.push(format!("… {hidden} more nodes"));
        lines.push(summary);
    }
    let width = width.max(10);
    lines
        .into_iter()
        .map(|l| {
            if l.chars().count() < width {
                l
            } else {
                let mut cut: String = l.chars().take(width - 2).collect();
                cut.push('…');
                cut
            }
        })
        .collect()
}
