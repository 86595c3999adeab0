//! The scheduling policies of DESIGN §4.4 through the real gRPC API, against a slow or
//! failing loopback target: the six overlap policies, the schedule's own retries, the
//! attempt timeout, pause_on_failure, on_failure / on_recovery notifications, CancelRun,
//! RerunRun (backfill and retention: `backfill_and_retention.rs`).

mod common;

use std::time::Duration;

use almanac_proto::executor::v1 as ex;
use almanac_proto::scheduler::v1::{self as pb, scheduler_service_client::SchedulerServiceClient};
use almanac_proto::time::{ms_to_duration, timestamp_to_ms};
use common::sink::Sink;
use common::*;
use tonic::transport::Channel;

type Client = SchedulerServiceClient<Channel>;

async fn get_run(client: &mut Client, id: &str) -> pb::Run {
    client
        .get_run(pb::GetRunRequest { run_id: id.into() })
        .await
        .expect("get run")
        .into_inner()
        .run
        .unwrap()
}

async fn schedule(client: &mut Client, id: &str) -> pb::Schedule {
    client
        .get_schedule(pb::GetScheduleRequest {
            schedule_id: id.into(),
        })
        .await
        .expect("get schedule")
        .into_inner()
        .schedule
        .unwrap()
}

fn time_of(t: &Option<pbjson_types::Timestamp>) -> i64 {
    timestamp_to_ms(t.as_ref().expect("a time"))
}

/// A call_api action tried once (no retry inside the execution).
fn call_once(url: &str) -> ex::Action {
    let mut action = call_api("GET", url);
    if let Some(ex::action::Kind::CallApi(c)) = &mut action.kind {
        c.retry = Some(ex::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        });
    }
    action
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_one_keeps_one_run_waiting_and_skips_the_rest_as_overruns() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/slow", 200, Duration::from_millis(800));
    let mut client = stack.scheduler_client().await;
    idle(&mut client, "b1", &sink.url("/slow"), |s| {
        s.overlap_policy = pb::OverlapPolicy::BufferOne as i32
    })
    .await;
    let first = trigger_now(&mut client, "b1").await;
    let second = trigger_now(&mut client, "b1").await;
    let third = trigger_now(&mut client, "b1").await;
    assert_eq!(status_of(&first), pb::RunStatus::Pending);
    assert_eq!(status_of(&second), pb::RunStatus::Buffered);
    assert_eq!(status_of(&third), pb::RunStatus::Skipped);
    assert!(third.reason.contains("BUFFER_ONE"), "{}", third.reason);
    let second = wait_for_run(&client, &second.id, "the buffered run to succeed", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    let first = get_run(&mut client, &first.id).await;
    assert_eq!(status_of(&first), pb::RunStatus::Succeeded);
    assert!(
        time_of(&second.start_time) >= time_of(&first.finish_time),
        "the buffered run started after the first ended"
    );
    assert_eq!(schedule(&mut client, "b1").await.buffer_overruns, 1);
    assert_eq!(sink.hits_on("/slow").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_all_runs_every_waiting_run_in_order_up_to_its_bound() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/slow", 200, Duration::from_millis(300));
    let mut client = stack.scheduler_client().await;
    idle(&mut client, "ball", &sink.url("/slow"), |s| {
        s.overlap_policy = pb::OverlapPolicy::BufferAll as i32;
        s.max_buffered = 2;
    })
    .await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(trigger_now(&mut client, "ball").await);
    }
    let statuses: Vec<_> = runs.iter().map(status_of).collect();
    assert_eq!(
        statuses,
        [
            pb::RunStatus::Pending,
            pb::RunStatus::Buffered,
            pb::RunStatus::Buffered,
            pb::RunStatus::Skipped
        ]
    );
    let last = wait_for_run(&client, &runs[2].id, "the last buffered run", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    let middle = get_run(&mut client, &runs[1].id).await;
    assert!(
        time_of(&last.start_time) >= time_of(&middle.finish_time),
        "oldest first, one at a time"
    );
    assert_eq!(schedule(&mut client, "ball").await.buffer_overruns, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_other_lets_the_call_in_flight_finish_and_terminate_other_cuts_it() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/graceful", 200, Duration::from_millis(1_500));
    sink.respond("/cut", 200, Duration::from_secs(30));
    let mut client = stack.scheduler_client().await;

    idle(&mut client, "cancel", &sink.url("/graceful"), |s| {
        s.overlap_policy = pb::OverlapPolicy::CancelOther as i32
    })
    .await;
    let old = trigger_now(&mut client, "cancel").await;
    wait_for_run(&client, &old.id, "the first run to start", |r| {
        status_of(r) == pb::RunStatus::Running
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the target to get the first call",
        || {
            let sink = sink.clone();
            async move { (sink.hits_on("/graceful").len() == 1).then_some(()) }
        },
    )
    .await;
    let new = trigger_now(&mut client, "cancel").await;
    assert_eq!(status_of(&new), pb::RunStatus::Buffered);
    let new = wait_for_run(&client, &new.id, "the new run to succeed", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    let old = get_run(&mut client, &old.id).await;
    assert_eq!(status_of(&old), pb::RunStatus::Cancelled, "{}", old.error);
    assert_eq!(
        sink.completed("/graceful"),
        2,
        "the call in flight was allowed to finish"
    );
    assert!(time_of(&new.start_time) >= time_of(&old.finish_time));

    idle(&mut client, "terminate", &sink.url("/cut"), |s| {
        s.overlap_policy = pb::OverlapPolicy::TerminateOther as i32
    })
    .await;
    let old = trigger_now(&mut client, "terminate").await;
    eventually(
        Duration::from_secs(10),
        "the target to get the first call",
        || {
            let sink = sink.clone();
            async move { (sink.hits_on("/cut").len() == 1).then_some(()) }
        },
    )
    .await;
    let started = std::time::Instant::now();
    let new = trigger_now(&mut client, "terminate").await;
    assert_eq!(
        status_of(&new),
        pb::RunStatus::Pending,
        "the new run starts at once"
    );
    let old = wait_for_run(&client, &old.id, "the old run to be cut", |r| {
        status_of(r) == pb::RunStatus::Cancelled
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "terminated, not waited for"
    );
    assert!(old.error.contains("cancel"), "{}", old.error);
    assert_eq!(sink.completed("/cut"), 0, "the call in flight was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_retry_makes_new_attempts_until_success_or_the_last_error() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.script("/flaky", &[503, 503]);
    sink.respond("/down", 503, Duration::ZERO);
    let mut client = stack.scheduler_client().await;
    let retry = |s: &mut pb::Schedule| {
        s.retry = Some(ex::RetryPolicy {
            max_attempts: 3,
            initial_backoff: Some(ms_to_duration(100)),
            max_backoff: Some(ms_to_duration(200)),
            multiplier: 2.0,
        })
    };
    let mut req = create("flaky", cron(YEARLY, "UTC"), call_once(&sink.url("/flaky")));
    retry(req.schedule.as_mut().unwrap());
    client.create_schedule(req).await.expect("create");
    let run = trigger_now(&mut client, "flaky").await;
    let run = wait_for_run(&client, &run.id, "success on attempt 3", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    assert_eq!(run.attempt, 3);
    let keys: Vec<&str> = run
        .attempts
        .iter()
        .map(|a| a.execution_key.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            format!("{}/1", run.id),
            format!("{}/2", run.id),
            format!("{}/3", run.id)
        ]
    );
    let delivered: Vec<String> = sink
        .hits_on("/flaky")
        .iter()
        .map(|h| h.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(
        delivered, keys,
        "one execution per attempt, each under its own key"
    );

    let mut req = create("down", cron(YEARLY, "UTC"), call_once(&sink.url("/down")));
    retry(req.schedule.as_mut().unwrap());
    client.create_schedule(req).await.expect("create");
    let run = trigger_now(&mut client, "down").await;
    let run = wait_for_run(&client, &run.id, "the retries to run out", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;
    assert_eq!(run.attempts.len(), 3);
    assert!(
        run.error.contains("503"),
        "the run keeps the last error: {}",
        run.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_its_timeout_ends_timed_out_and_the_request_is_cut() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/forever", 200, Duration::from_secs(60));
    let mut client = stack.scheduler_client().await;
    idle(&mut client, "slow", &sink.url("/forever"), |s| {
        s.timeout = Some(ms_to_duration(700))
    })
    .await;
    let started = std::time::Instant::now();
    let run = trigger_now(&mut client, "slow").await;
    let run = wait_for_run(&client, &run.id, "the run to time out", |r| {
        status_of(r) == pb::RunStatus::TimedOut
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(run.attempts[0].deadline.is_some());
    assert_eq!(sink.hits_on("/forever").len(), 1);
    assert_eq!(
        sink.completed("/forever"),
        0,
        "the target's request was cut, not waited for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_in_a_row_pause_the_schedule_and_notify_and_a_success_notifies_recovery() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/broken", 404, Duration::ZERO);
    let mut client = stack.scheduler_client().await;
    let notify = |title: &str| ex::SendNotificationAction {
        channel: Some(ex::send_notification_action::Channel::Slack(
            ex::ChatWebhookChannel {
                target: Some(ex::chat_webhook_channel::Target::Url(sink.url("/notify"))),
            },
        )),
        message: Some(ex::NotificationMessage {
            title: title.into(),
            text: "schedule {{ schedule.id }}".into(),
            fields: vec![],
        }),
        retry: None,
    };
    idle(&mut client, "fragile", &sink.url("/broken"), |s| {
        s.pause_on_failure = 2;
        s.on_failure = Some(notify("run failed"));
        s.on_recovery = Some(notify("recovered"));
    })
    .await;
    let first = trigger_now(&mut client, "fragile").await;
    wait_for_run(&client, &first.id, "the first failure", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the on_failure notification",
        || {
            let sink = sink.clone();
            async move { (sink.hits_on("/notify").len() == 1).then_some(()) }
        },
    )
    .await;
    let body = String::from_utf8(sink.hits_on("/notify")[0].body.clone()).unwrap();
    assert!(
        body.contains("run failed") && body.contains(&first.id) && body.contains("404"),
        "{body}"
    );
    assert_eq!(
        schedule(&mut client, "fragile").await.state,
        pb::ScheduleState::Active as i32
    );

    let second = trigger_now(&mut client, "fragile").await;
    wait_for_run(&client, &second.id, "the second failure", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;
    let paused = eventually(Duration::from_secs(10), "the schedule to pause", || {
        let mut client = client.clone();
        async move {
            let s = schedule(&mut client, "fragile").await;
            (s.state == pb::ScheduleState::Paused as i32).then_some(s)
        }
    })
    .await;
    assert!(
        paused
            .pause
            .unwrap()
            .note
            .contains("2 failed runs in a row")
    );
    assert_eq!(paused.consecutive_failures, 2);

    sink.respond("/broken", 200, Duration::ZERO);
    client
        .resume_schedule(pb::ResumeScheduleRequest {
            schedule_id: "fragile".into(),
        })
        .await
        .expect("resume");
    // Resuming clears the count: a success after it is no recovery, so fail once more first.
    sink.script("/broken", &[404]);
    let third = trigger_now(&mut client, "fragile").await;
    wait_for_run(&client, &third.id, "a failure after the resume", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;
    let fourth = trigger_now(&mut client, "fragile").await;
    wait_for_run(&client, &fourth.id, "a success", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the on_recovery notification",
        || {
            let sink = sink.clone();
            async move {
                let hits = sink.hits_on("/notify");
                hits.iter()
                    .any(|h| String::from_utf8_lossy(&h.body).contains("recovered"))
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_run_stops_a_waiting_or_running_run_and_rerun_gives_a_failed_run_another_attempt() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/slow", 200, Duration::from_secs(30));
    sink.respond("/fixable", 500, Duration::ZERO);
    let mut client = stack.scheduler_client().await;

    idle(&mut client, "long", &sink.url("/slow"), |_| {}).await;
    let run = trigger_now(&mut client, "long").await;
    wait_for_run(&client, &run.id, "the run to start", |r| {
        status_of(r) == pb::RunStatus::Running
    })
    .await;
    client
        .cancel_run(pb::CancelRunRequest {
            run_id: run.id.clone(),
            mode: ex::CancelMode::Terminate as i32,
            reason: "operator".into(),
        })
        .await
        .expect("cancel");
    let cancelled = wait_for_run(&client, &run.id, "the running run to end cancelled", |r| {
        status_of(r) == pb::RunStatus::Cancelled
    })
    .await;
    assert!(
        cancelled.error.contains("operator"),
        "the reason is recorded on the run: {}",
        cancelled.error
    );
    let again = client
        .cancel_run(pb::CancelRunRequest {
            run_id: run.id.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        again.unwrap_err().code(),
        tonic::Code::FailedPrecondition,
        "a final run cannot be cancelled"
    );

    idle(&mut client, "fixable", &sink.url("/fixable"), |_| {}).await;
    let failed = trigger_now(&mut client, "fixable").await;
    wait_for_run(&client, &failed.id, "the failure", |r| {
        status_of(r) == pb::RunStatus::Failed
    })
    .await;
    sink.respond("/fixable", 200, Duration::ZERO);
    let rerun = client
        .rerun_run(pb::RerunRunRequest {
            run_id: failed.id.clone(),
        })
        .await
        .expect("rerun")
        .into_inner()
        .run
        .unwrap();
    assert_eq!(rerun.attempt, 2);
    let done = wait_for_run(&client, &failed.id, "the rerun to succeed", |r| {
        status_of(r) == pb::RunStatus::Succeeded
    })
    .await;
    assert_eq!(done.attempts.len(), 2);
    assert_eq!(
        done.attempts[0].status,
        pb::RunStatus::Failed as i32,
        "the first attempt's record is kept"
    );
}
