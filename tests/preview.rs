//! PreviewSchedule through the real gRPC API, over daylight-saving changes: Vixie cron's
//! rules for fixed-time and wildcard jobs (DESIGN §4.2), one `check` per row.

mod common;

use almanac_proto::scheduler::v1::{self as pb, scheduler_service_client::SchedulerServiceClient};
use almanac_proto::time::{ms_to_rfc3339, timestamp_to_ms};
use chrono::DateTime;
use common::*;
use tonic::transport::Channel;

async fn preview(
    client: &mut SchedulerServiceClient<Channel>,
    expr: &str,
    tz: &str,
    from: &str,
    count: i32,
) -> Vec<String> {
    let start = DateTime::parse_from_rfc3339(from)
        .expect("from")
        .timestamp_millis();
    client
        .preview_schedule(pb::PreviewScheduleRequest {
            spec: Some(cron(expr, tz)),
            start_time: Some(almanac_proto::time::ms_to_timestamp(start)),
            count,
            ..Default::default()
        })
        .await
        .expect("preview")
        .into_inner()
        .fire_times
        .iter()
        .map(|t| ms_to_rfc3339(timestamp_to_ms(t)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_follows_vixie_rules_across_dst_changes() {
    let stack = Stack::start().await;
    let mut client = stack.scheduler_client().await;
    // (expression, zone, from, count, expected fire times in UTC)
    let table: &[(&str, &str, &str, i32, &[&str])] = &[
        // Spring forward: 02:30 does not exist on 2026-03-08; a fixed-time job runs once
        // at 03:00 EDT (07:00Z), the first instant after the gap.
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T12:00:00Z",
            3,
            &[
                "2026-03-08T07:00:00.000Z",
                "2026-03-09T06:30:00.000Z",
                "2026-03-10T06:30:00.000Z",
            ],
        ),
        // Fall back: 01:30 happens twice on 2026-11-01; a fixed-time job runs once, at
        // the first occurrence (EDT, 05:30Z).
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            2,
            &["2026-11-01T05:30:00.000Z", "2026-11-02T06:30:00.000Z"],
        ),
        // A wildcard job follows the wall clock: both 01:xx hours fire.
        (
            "*/15 * * * *",
            "America/New_York",
            "2026-11-01T05:00:00Z",
            8,
            &[
                "2026-11-01T05:00:00.000Z",
                "2026-11-01T05:15:00.000Z",
                "2026-11-01T05:30:00.000Z",
                "2026-11-01T05:45:00.000Z",
                "2026-11-01T06:00:00.000Z",
                "2026-11-01T06:15:00.000Z",
                "2026-11-01T06:30:00.000Z",
                "2026-11-01T06:45:00.000Z",
            ],
        ),
        // ... and local times inside the spring gap simply do not fire.
        (
            "*/30 * * * *",
            "America/New_York",
            "2026-03-08T06:00:00Z",
            3,
            &[
                "2026-03-08T06:00:00.000Z",
                "2026-03-08T06:30:00.000Z",
                "2026-03-08T07:00:00.000Z",
            ],
        ),
        // Both day fields restricted: the 1st of the month OR a Monday (July 2026: the
        // 1st is a Wednesday; Mondays are the 6th, 13th...).
        (
            "0 0 1 * MON",
            "UTC",
            "2026-06-30T00:00:01Z",
            3,
            &[
                "2026-07-01T00:00:00.000Z",
                "2026-07-06T00:00:00.000Z",
                "2026-07-13T00:00:00.000Z",
            ],
        ),
        // Lord Howe moves by 30 minutes: 02:00 -> 02:30 on 2026-10-04 (UTC+10:30 -> +11).
        (
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2026-10-03T00:00:00Z",
            2,
            &["2026-10-03T15:30:00.000Z", "2026-10-04T15:15:00.000Z"],
        ),
        // Sydney (southern hemisphere) springs forward on 2026-10-04, 02:00 -> 03:00.
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2026-10-02T00:00:00Z",
            3,
            &[
                "2026-10-02T16:30:00.000Z",
                "2026-10-03T16:00:00.000Z",
                "2026-10-04T15:30:00.000Z",
            ],
        ),
        // ... and falls back on 2026-04-05, 03:00 -> 02:00: 02:30 once, at its first occurrence.
        (
            "30 2 * * *",
            "Australia/Sydney",
            "2026-04-03T00:00:00Z",
            2,
            &["2026-04-03T15:30:00.000Z", "2026-04-04T15:30:00.000Z"],
        ),
        // Six fields: seconds first.
        (
            "*/20 0 12 * * *",
            "UTC",
            "2026-05-05T12:00:00Z",
            4,
            &[
                "2026-05-05T12:00:00.000Z",
                "2026-05-05T12:00:20.000Z",
                "2026-05-05T12:00:40.000Z",
                "2026-05-06T12:00:00.000Z",
            ],
        ),
        // A macro.
        (
            "@daily",
            "Europe/Paris",
            "2026-03-28T12:00:00Z",
            2,
            &["2026-03-28T23:00:00.000Z", "2026-03-29T22:00:00.000Z"],
        ),
    ];
    for (expr, tz, from, count, expected) in table {
        let got = preview(&mut client, expr, tz, from, *count).await;
        assert_eq!(&got, expected, "{expr} in {tz} from {from}");
    }
}
