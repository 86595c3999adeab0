//! Bad input gets a clear error naming the field, the process keeps serving, and
//! nothing already stored is damaged (one table, one `check` per row).

mod common;

use almanac_proto::executor::v1 as ex;
use almanac_proto::scheduler::v1 as pb;
use almanac_proto::status::field_violations;
use almanac_proto::time::ms_to_timestamp;
use common::*;
use tonic::Code;

fn assert_refused(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    field: &str,
    case: &str,
) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), code, "{case}: {status:?}");
    if code == Code::InvalidArgument {
        let fields: Vec<String> = field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(
            fields.iter().any(|f| f == field),
            "{case}: expected a violation of {field}, got {fields:?} ({})",
            status.message()
        );
    } else {
        assert!(
            status.message().contains(field),
            "{case}: the message names {field}: {}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_refused_naming_the_field_and_nothing_is_stored() {
    let stack = Stack::start().await;
    let mut client = stack.scheduler_client().await;
    let good = client
        .create_schedule(create(
            "good",
            cron("0 0 1 1 *", "UTC"),
            call_api("GET", "http://127.0.0.1:9/x"),
        ))
        .await
        .expect("a good schedule")
        .into_inner()
        .schedule
        .unwrap();

    let with = |f: &dyn Fn(&mut pb::Schedule)| {
        let mut req = create(
            "bad",
            cron("* * * * *", "UTC"),
            call_api("GET", "http://127.0.0.1:9/x"),
        );
        f(req.schedule.as_mut().unwrap());
        req
    };
    let interval = |every_ms: i64| pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::Interval(pb::IntervalSpec {
            every: Some(almanac_proto::time::ms_to_duration(every_ms)),
            offset: None,
        })),
    };
    let cases: Vec<(&str, pb::CreateScheduleRequest, &str)> = vec![
        (
            "unparseable cron",
            with(&|s| s.spec = Some(cron("61 * * * *", "UTC"))),
            "schedule.spec.cron.expression",
        ),
        (
            "garbage cron",
            with(&|s| s.spec = Some(cron("every tuesday", "UTC"))),
            "schedule.spec.cron.expression",
        ),
        (
            "unknown time zone",
            with(&|s| s.spec = Some(cron("* * * * *", "Mars/Olympus"))),
            "schedule.spec.cron.timezone",
        ),
        (
            "interval zero",
            with(&|s| s.spec = Some(interval(0))),
            "schedule.spec.interval.every",
        ),
        (
            "interval negative",
            with(&|s| s.spec = Some(interval(-5_000))),
            "schedule.spec.interval.every",
        ),
        ("missing spec", with(&|s| s.spec = None), "schedule.spec"),
        (
            "empty spec",
            with(&|s| s.spec = Some(pb::ScheduleSpec { kind: None })),
            "schedule.spec",
        ),
        (
            "end before start",
            with(&|s| {
                s.start_time = Some(ms_to_timestamp(2_000_000_000_000));
                s.end_time = Some(ms_to_timestamp(1_900_000_000_000));
            }),
            "schedule.end_time",
        ),
        (
            "max_runs zero",
            with(&|s| s.max_runs = Some(0)),
            "schedule.max_runs",
        ),
        (
            "max_runs negative",
            with(&|s| s.max_runs = Some(-3)),
            "schedule.max_runs",
        ),
        (
            "missing action",
            with(&|s| s.action = None),
            "schedule.action",
        ),
        (
            "empty action",
            with(&|s| s.action = Some(ex::Action { kind: None })),
            "schedule.action",
        ),
        (
            "action kind not built yet",
            with(&|s| {
                s.action = Some(ex::Action {
                    kind: Some(ex::action::Kind::RunTask(ex::RunTaskAction::default())),
                })
            }),
            "schedule.action.run_task",
        ),
        (
            "unknown overlap enum",
            with(&|s| s.overlap_policy = 99),
            "schedule.overlap_policy",
        ),
        (
            "a buffer too large",
            with(&|s| {
                s.overlap_policy = pb::OverlapPolicy::BufferAll as i32;
                s.max_buffered = 1_000_000;
            }),
            "schedule.max_buffered",
        ),
        (
            "a schedule retry with no attempt left",
            with(&|s| {
                s.retry = Some(almanac_proto::executor::v1::RetryPolicy {
                    max_attempts: 1_000,
                    ..Default::default()
                })
            }),
            "schedule.retry.max_attempts",
        ),
        (
            "unknown misfire enum",
            with(&|s| {
                s.catchup = Some(pb::CatchupPolicy {
                    misfire: 42,
                    ..Default::default()
                })
            }),
            "schedule.catchup.misfire",
        ),
        (
            "ftp url",
            with(&|s| s.action = Some(call_api("GET", "ftp://127.0.0.1/x"))),
            "schedule.action.call_api.url",
        ),
        (
            "file url",
            with(&|s| s.action = Some(call_api("GET", "file:///etc/passwd"))),
            "schedule.action.call_api.url",
        ),
        (
            "not a url",
            with(&|s| s.action = Some(call_api("GET", "not a url"))),
            "schedule.action.call_api.url",
        ),
        (
            "bad id",
            {
                let mut r = with(&|_| {});
                r.schedule_id = "no spaces allowed".into();
                r
            },
            "schedule_id",
        ),
    ];
    for (case, request, field) in cases {
        assert_refused(
            client.create_schedule(request).await,
            Code::InvalidArgument,
            field,
            case,
        );
    }
    assert_refused(
        client
            .create_schedule(create(
                "good",
                cron("* * * * *", "UTC"),
                call_api("GET", "http://127.0.0.1:9/x"),
            ))
            .await,
        Code::AlreadyExists,
        "good",
        "duplicate id",
    );
    assert_refused(
        client
            .get_schedule(pb::GetScheduleRequest {
                schedule_id: "nope".into(),
            })
            .await,
        Code::NotFound,
        "nope",
        "unknown id",
    );
    assert_refused(
        client
            .pause_schedule(pb::PauseScheduleRequest {
                schedule_id: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "nope",
        "pause unknown id",
    );
    assert_refused(
        client
            .list_runs(pb::ListRunsRequest {
                schedule_id: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "nope",
        "runs of unknown id",
    );
    assert_refused(
        client
            .trigger_schedule(pb::TriggerScheduleRequest {
                schedule_id: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "nope",
        "trigger unknown id",
    );
    assert_refused(
        client
            .list_schedules(pb::ListSchedulesRequest {
                page_token: "zz-not-a-token".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
        "malformed page token",
    );

    // A stale etag is ABORTED and changes nothing.
    let mut stale = good.clone();
    stale.display_name = "renamed".into();
    let fresh = client
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(stale.clone()),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .expect("update with the current etag")
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(fresh.display_name, "renamed");
    assert_ne!(fresh.etag, good.etag);
    stale.display_name = "lost update".into();
    let aborted = client
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(stale),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await;
    assert_eq!(aborted.unwrap_err().code(), Code::Aborted);
    let unknown_path = client
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(fresh.clone()),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await;
    assert_refused(
        unknown_path,
        Code::InvalidArgument,
        "update_mask",
        "update of an output-only field",
    );
    let bad_update = client
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule {
                spec: Some(cron("nope", "UTC")),
                ..fresh.clone()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["spec".into()],
            }),
        })
        .await;
    assert_refused(
        bad_update,
        Code::InvalidArgument,
        "schedule.spec.cron.expression",
        "update to a bad cron",
    );

    // Page sizes over the maximum are clamped, not refused.
    let page = client
        .list_schedules(pb::ListSchedulesRequest {
            page_size: 1_000_000,
            ..Default::default()
        })
        .await
        .expect("a huge page size is clamped")
        .into_inner();
    assert_eq!(
        page.schedules.len(),
        1,
        "nothing but the good schedule was stored"
    );
    let stored = &page.schedules[0];
    assert_eq!(
        (
            stored.id.as_str(),
            stored.etag.as_str(),
            stored.display_name.as_str()
        ),
        ("good", fresh.etag.as_str(), "renamed")
    );
    let runs = client
        .list_runs(pb::ListRunsRequest {
            schedule_id: "good".into(),
            page_size: 5_000,
            ..Default::default()
        })
        .await
        .expect("clamped")
        .into_inner();
    assert!(runs.runs.is_empty());

    // The refused creates left nothing behind: the id is free for a good schedule, and a
    // once-spec refused for being in the past does not shadow a later good one.
    let past = pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::Once(pb::OnceSpec {
            at: Some(ms_to_timestamp(1_577_836_800_000)),
        })),
    };
    assert_refused(
        client
            .create_schedule(create("bad", past, call_api("GET", "http://127.0.0.1:9/x")))
            .await,
        Code::InvalidArgument,
        "schedule.spec",
        "a once spec in the past never fires",
    );
    let future = pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::Once(pb::OnceSpec {
            at: Some(ms_to_timestamp(4_102_444_800_000)),
        })),
    };
    client
        .create_schedule(create(
            "bad",
            future,
            call_api("GET", "http://127.0.0.1:9/x"),
        ))
        .await
        .expect("the id of refused creates is still free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_reusing_a_key_with_another_request_is_refused_and_changes_nothing() {
    let stack = Stack::start().await;
    let sink = common::sink::Sink::start().await;
    let mut executor = stack.executor_client().await;
    let request = |url: &str| ex::ExecuteRequest {
        idempotency_key: "k-1".into(),
        action: Some(call_api("GET", url)),
        ..Default::default()
    };
    let mut stream = executor
        .execute(request(&sink.url("/a")))
        .await
        .expect("execute")
        .into_inner();
    let mut first = Vec::new();
    while let Some(response) = stream.message().await.expect("event") {
        first.push(response.event.unwrap());
    }
    let other = executor.execute(request(&sink.url("/b"))).await;
    assert_eq!(other.unwrap_err().code(), Code::AlreadyExists);
    let stored = executor
        .get_execution(ex::GetExecutionRequest {
            idempotency_key: "k-1".into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(
        stored.last_seq,
        first.last().unwrap().seq,
        "nothing was appended"
    );
    assert!(sink.hits_on("/b").is_empty());
    assert_eq!(sink.hits_on("/a").len(), 1);
}
