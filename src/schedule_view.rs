//! Schedules, specs, actions and runs as text for people: one-line summaries for tables,
//! the `key  value` block of `schedule get`, and one run as `run cancel`/`rerun` show it.

use almanac_proto::executor::v1::{Action, action, run_task_action, send_notification_action};
use almanac_proto::scheduler::v1::{
    OverlapPolicy, Run, RunStatus, RunTrigger, Schedule, ScheduleSpec, ScheduleState, schedule_spec,
};

use crate::output::{self, Table, label, outln, time};

/// `active`, `paused`, `completed`.
pub fn state(s: &Schedule) -> String {
    ScheduleState::try_from(s.state)
        .map(|st| label(st.as_str_name(), "SCHEDULE_STATE_"))
        .unwrap_or_else(|_| s.state.to_string())
}

/// `succeeded`, `timed_out`, ...
pub fn run_status(status: i32) -> String {
    RunStatus::try_from(status)
        .map(|st| label(st.as_str_name(), "RUN_STATUS_"))
        .unwrap_or_else(|_| status.to_string())
}

/// `cron "30 2 * * *" America/New_York`, `every 1m offset 5s`, `once 2026-...Z`.
pub fn spec(spec: Option<&ScheduleSpec>) -> String {
    match spec.and_then(|s| s.kind.as_ref()) {
        Some(schedule_spec::Kind::Cron(c)) => {
            let zone = if c.timezone.is_empty() {
                "UTC"
            } else {
                &c.timezone
            };
            format!("cron {:?} {zone}", c.expression)
        }
        Some(schedule_spec::Kind::Interval(i)) => {
            let mut text = format!("every {}", output::duration(i.every.as_ref()));
            if let Some(offset) = &i.offset {
                text.push_str(&format!(" offset {}", output::duration(Some(offset))));
            }
            text
        }
        Some(schedule_spec::Kind::Once(o)) => format!("once {}", time(o.at.as_ref())),
        None => "-".to_owned(),
    }
}

/// The zone a spec fires in, when it has one other than UTC.
pub fn spec_zone(spec: Option<&ScheduleSpec>) -> Option<chrono_tz::Tz> {
    match spec.and_then(|s| s.kind.as_ref()) {
        Some(schedule_spec::Kind::Cron(c)) => c
            .timezone
            .parse::<chrono_tz::Tz>()
            .ok()
            .filter(|tz| *tz != chrono_tz::UTC),
        _ => None,
    }
}

/// `call_api POST http://...`, `run_task queue=reports`, ...
pub fn action(action: Option<&Action>) -> String {
    let Some(kind) = action.and_then(|a| a.kind.as_ref()) else {
        return "-".to_owned();
    };
    let name = almanac_proto::action::kind_name(kind);
    match kind {
        action::Kind::CallApi(c) => {
            let method = if c.method.is_empty() {
                "GET"
            } else {
                &c.method
            };
            format!("{name} {method} {}", c.url)
        }
        action::Kind::RunTask(t) => match &t.target {
            Some(run_task_action::Target::Queue(q)) => format!("{name} queue={q}"),
            Some(run_task_action::Target::Command(c)) => {
                format!("{name} command={}", c.argv.join(" "))
            }
            None => name.to_owned(),
        },
        action::Kind::ExecutePipeline(p) if p.version > 0 => {
            format!("{name} {}@{}", p.pipeline_id, p.version)
        }
        action::Kind::ExecutePipeline(p) => format!("{name} {}", p.pipeline_id),
        action::Kind::SendNotification(n) => {
            use send_notification_action::Channel;
            let channel = match &n.channel {
                Some(Channel::Webhook(w)) => format!("webhook {}", w.url),
                Some(Channel::Slack(_)) => "slack".to_owned(),
                Some(Channel::Discord(_)) => "discord".to_owned(),
                Some(Channel::Teams(_)) => "teams".to_owned(),
                Some(Channel::Email(e)) => format!("email to {}", e.to.join(", ")),
                None => "?".to_owned(),
            };
            format!("{name} {channel}")
        }
    }
}

/// The one-row-per-schedule table of `schedule list`.
pub fn schedule_table(schedules: &[Schedule]) -> Table {
    let mut table = Table::new(&["ID", "STATE", "SPEC", "NEXT FIRE", "RUNS"]);
    for s in schedules {
        table.row(vec![
            s.id.clone(),
            state(s),
            spec(s.spec.as_ref()),
            time(s.next_fire_time.as_ref()),
            runs(s),
        ]);
    }
    table
}

fn runs(s: &Schedule) -> String {
    match s.max_runs {
        Some(max) => format!("{}/{max}", s.run_count),
        None => s.run_count.to_string(),
    }
}

/// The `key  value` block of `schedule get` (and of create's answer).
pub fn print_schedule(s: &Schedule) {
    let mut st = state(s);
    if !s.completion_reason.is_empty() {
        st = format!("{st} ({})", s.completion_reason);
    }
    let paused = s.pause.as_ref().map_or_else(String::new, |p| {
        let mut text = format!("at {}", time(p.pause_time.as_ref()));
        if !p.identity.is_empty() {
            text = format!("by {} {text}", p.identity);
        }
        if !p.note.is_empty() {
            text.push_str(&format!(": {}", p.note));
        }
        text
    });
    let overlap = OverlapPolicy::try_from(s.overlap_policy)
        .map(|o| label(o.as_str_name(), "OVERLAP_POLICY_"))
        .unwrap_or_default();
    let catchup = s.catchup.as_ref().map_or_else(String::new, |c| {
        let misfire = almanac_proto::scheduler::v1::Misfire::try_from(c.misfire)
            .map(|m| label(m.as_str_name(), "MISFIRE_"))
            .unwrap_or_default();
        format!(
            "window {} misfire {misfire}",
            output::duration(c.window.as_ref())
        )
    });
    let opt_time = |t: Option<&pbjson_types::Timestamp>| t.map(|t| time(Some(t)));
    output::print_fields(&[
        ("id", s.id.clone()),
        ("name", s.display_name.clone()),
        ("description", s.description.clone()),
        ("state", st),
        ("spec", spec(s.spec.as_ref())),
        ("action", action(s.action.as_ref())),
        ("next fire", time(s.next_fire_time.as_ref())),
        ("runs", runs(s)),
        ("paused", paused),
        ("start", opt_time(s.start_time.as_ref()).unwrap_or_default()),
        ("end", opt_time(s.end_time.as_ref()).unwrap_or_default()),
        (
            "jitter",
            s.jitter
                .as_ref()
                .map_or_else(String::new, |d| output::duration(Some(d))),
        ),
        (
            "timeout",
            s.timeout
                .as_ref()
                .map_or_else(String::new, |d| output::duration(Some(d))),
        ),
        ("overlap", overlap),
        ("catch-up", catchup),
        ("etag", s.etag.clone()),
        ("created", time(s.create_time.as_ref())),
        ("updated", time(s.update_time.as_ref())),
    ]);
}

/// The table of `schedule runs`.
pub fn run_table(runs: &[Run]) -> Table {
    let mut table = Table::new(&[
        "NOMINAL TIME",
        "TRIGGER",
        "STATUS",
        "ATTEMPT",
        "DURATION",
        "EXECUTION",
        "RUN",
        "ERROR/REASON",
    ]);
    for r in runs {
        let trigger = RunTrigger::try_from(r.trigger)
            .map(|t| label(t.as_str_name(), "RUN_TRIGGER_"))
            .unwrap_or_else(|_| r.trigger.to_string());
        let execution = r
            .attempts
            .last()
            .map(|a| output::or_dash(&a.execution_id))
            .unwrap_or_else(|| "-".to_owned());
        table.row(vec![
            time(r.nominal_time.as_ref()),
            trigger,
            run_status(r.status),
            r.attempt.to_string(),
            output::elapsed(r.start_time.as_ref(), r.finish_time.as_ref()),
            execution,
            r.id.clone(),
            why(r),
        ]);
    }
    table
}

/// One run: a headline (`run ID of schedule S: status`, then `note` when not empty) and
/// its row of the `schedule runs` table.
pub fn print_run(r: &Run, note: &str) {
    let mut headline = format!(
        "run {} of schedule {}: {}",
        r.id,
        r.schedule_id,
        run_status(r.status)
    );
    if !note.is_empty() {
        headline.push_str(&format!(", {note}"));
    }
    outln!("{headline}");
    run_table(std::slice::from_ref(r)).print();
}

/// Why a run did not succeed, or what it stands for.
fn why(r: &Run) -> String {
    if !r.error.is_empty() {
        return r.error.clone();
    }
    if let Some(m) = &r.missed {
        let range = format!(
            "{} fires from {} to {}",
            m.count,
            time(m.first_time.as_ref()),
            time(m.last_time.as_ref())
        );
        return if r.reason.is_empty() {
            range
        } else {
            format!("{}: {range}", r.reason)
        };
    }
    if !r.coalesced_into_run_id.is_empty() {
        return format!("{} (into run {})", r.reason, r.coalesced_into_run_id);
    }
    r.reason.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::scheduler::v1::{CronSpec, IntervalSpec};
    use almanac_proto::time::ms_to_duration;

    #[test]
    fn specs_read_as_one_line() {
        let cron = ScheduleSpec {
            kind: Some(schedule_spec::Kind::Cron(CronSpec {
                expression: "30 2 * * *".into(),
                timezone: "America/New_York".into(),
            })),
        };
        assert_eq!(spec(Some(&cron)), r#"cron "30 2 * * *" America/New_York"#);
        assert_eq!(spec_zone(Some(&cron)), Some(chrono_tz::America::New_York));
        let every = ScheduleSpec {
            kind: Some(schedule_spec::Kind::Interval(IntervalSpec {
                every: Some(ms_to_duration(60_000)),
                offset: Some(ms_to_duration(5_000)),
            })),
        };
        assert_eq!(spec(Some(&every)), "every 1m offset 5s");
        assert_eq!(spec_zone(Some(&every)), None);
    }
}
