//! Reading a run back from the ledger, for the chaos test's checks: its timestamps, its
//! status and trigger, the seconds a row accounts for, and how a violation shows it.

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::{ms_to_rfc3339, timestamp_to_ms};

use crate::common::{nominal_ms, status_of};

pub fn ts(t: &Option<pbjson_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(timestamp_to_ms)
}

/// A run as a violation message shows it.
pub fn describe(r: &pb::Run) -> String {
    let trigger = pb::RunTrigger::try_from(r.trigger)
        .map(|t| t.as_str_name())
        .unwrap_or("?");
    let mut text = format!(
        "run {} {:?} {trigger} attempt {}",
        r.id,
        status_of(r),
        r.attempt
    );
    if let Some(m) = &r.missed {
        text.push_str(&format!(" (range of {})", m.count));
    }
    for (label, value) in [
        ("reason", &r.reason),
        ("error", &r.error),
        ("coalesced into", &r.coalesced_into_run_id),
    ] {
        if !value.is_empty() {
            text.push_str(&format!("; {label}: {value}"));
        }
    }
    text
}

pub fn is(r: &pb::Run, status: pb::RunStatus) -> bool {
    status_of(r) == status
}

pub fn trigger(r: &pb::Run) -> pb::RunTrigger {
    pb::RunTrigger::try_from(r.trigger).unwrap_or(pb::RunTrigger::Unspecified)
}

/// The seconds a row accounts for: its nominal time, or every second of its range.
pub fn seconds(r: &pb::Run) -> Result<Vec<i64>, String> {
    let Some(m) = &r.missed else {
        return Ok(vec![nominal_ms(r)]);
    };
    let (Some(first), Some(last)) = (ts(&m.first_time), ts(&m.last_time)) else {
        return Err(format!("range row without bounds: {}", describe(r)));
    };
    if last < first || (last - first) % 1_000 != 0 || (last - first) / 1_000 + 1 != m.count {
        return Err(format!(
            "range {}..{} does not hold {} one-second fires: {}",
            ms_to_rfc3339(first),
            ms_to_rfc3339(last),
            m.count,
            describe(r)
        ));
    }
    Ok((first..=last).step_by(1_000).collect())
}
