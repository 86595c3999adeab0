//! `call_api` driven by real schedules through the scheduler's gRPC API: a templated call
//! authenticated with a secret of the executor ends SUCCEEDED, a call answered 404 ends
//! FAILED with the status in the run's error, and `CreateSchedule` refuses what the
//! executor would refuse (a private literal URL, a secret it lacks) with
//! FAILED_PRECONDITION naming the field.

mod common;

use std::path::Path;
use std::time::Duration;

use almanac_executor::secrets::Secret;
use almanac_proto::executor::v1::{
    Action, BearerAuth, CallApiAction, HttpAuth, action::Kind, call_api_action::Body, http_auth,
};
use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::ms_to_rfc3339;
use common::sink::Sink;
use common::*;
use tokio::sync::oneshot;

const TOKEN: &str = "sched-tok-4b1d9e";

/// An executor with one secret (`report_token`) and loopback allowed, stopped on drop.
struct SecretExecutor {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl SecretExecutor {
    async fn start(dir: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut config = almanac_executor::config::Config::new(dir.join("executor.db"));
        config.database_url = almanac_testkit::postgres_database_for(dir, "executor");
        config
            .actions
            .secrets
            .insert("report_token", Secret::new(TOKEN));
        // The sink lives on loopback, which the egress guard refuses by default.
        config.actions.allow_loopback();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            almanac_executor::server::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("executor runs");
        });
        Self {
            url,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("executor stops within 30 s")
            .expect("executor task");
    }
}

impl Drop for SecretExecutor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn call(url: String, auth_secret: Option<&str>) -> CallApiAction {
    CallApiAction {
        method: "POST".into(),
        url,
        auth: auth_secret.map(|s| HttpAuth {
            kind: Some(http_auth::Kind::Bearer(BearerAuth {
                token_secret: s.into(),
            })),
        }),
        ..Default::default()
    }
}

fn action(call: CallApiAction) -> Action {
    Action {
        kind: Some(Kind::CallApi(call)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_call_with_a_secret_from_a_schedule_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let executor = SecretExecutor::start(dir.path()).await;
    let scheduler = start_scheduler(dir.path(), &executor.url).await;
    let mut client = scheduler_client(&scheduler.url()).await;

    let mut call = call(
        format!("{}/report/{{{{ run.nominal_time }}}}", sink.url("")),
        Some("report_token"),
    );
    call.body = Some(Body::JsonBody(almanac_executor::json::json_to_pb(
        &serde_json::json!({"schedule": "{{ schedule.id }}", "for": "{{ run.nominal_time }}"}),
    )));
    client
        .create_schedule(create("nightly-report", every(2_000), action(call)))
        .await
        .expect("create");

    let run = eventually(Duration::from_secs(30), "a succeeded run", || {
        let mut client = client.clone();
        async move {
            all_runs(&mut client, "nightly-report")
                .await
                .into_iter()
                .find(|r| status_of(r) == pb::RunStatus::Succeeded)
        }
    })
    .await;
    let nominal = ms_to_rfc3339(nominal_ms(&run));
    let hit = sink
        .hits()
        .into_iter()
        .find(|h| h.header("x-almanac-run-id") == Some(run.id.as_str()))
        .expect("the run's request reached the sink");
    assert_eq!(hit.path, format!("/report/{nominal}"));
    assert_eq!(
        hit.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(hit.header("x-almanac-schedule-id"), Some("nightly-report"));
    assert_eq!(hit.header("x-almanac-nominal-time"), Some(nominal.as_str()));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&hit.body).unwrap(),
        serde_json::json!({"schedule": "nightly-report", "for": nominal})
    );

    // The scheduler never sees the secret's value: only its name.
    let schedule = client
        .get_schedule(pb::GetScheduleRequest {
            schedule_id: "nightly-report".into(),
        })
        .await
        .expect("get")
        .into_inner();
    let shown = format!("{schedule:?} {run:?}");
    assert!(shown.contains("report_token") && !shown.contains(TOKEN));
    scheduler.stop().await;
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_call_answered_404_fails_with_the_status_in_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.respond("/gone", 404, Duration::ZERO);
    let executor = SecretExecutor::start(dir.path()).await;
    let scheduler = start_scheduler(dir.path(), &executor.url).await;
    let mut client = scheduler_client(&scheduler.url()).await;

    let run = trigger_idle_schedule(
        &mut client,
        "gone",
        action(call(sink.url("/gone"), Some("report_token"))),
    )
    .await;
    let run = wait_for_run(&client, &run.id, "the run ends", is_terminal).await;
    assert_eq!(status_of(&run), pb::RunStatus::Failed);
    assert!(run.error.contains("HTTP 404 Not Found"), "{}", run.error);
    assert_eq!(sink.hits_on("/gone").len(), 1, "a 404 is not retried");
    scheduler.stop().await;
    executor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_schedule_refuses_a_private_literal_url_and_a_missing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let executor = SecretExecutor::start(dir.path()).await;
    let scheduler = start_scheduler(dir.path(), &executor.url).await;
    let mut client = scheduler_client(&scheduler.url()).await;

    for (id, call, field, says) in [
        (
            "private",
            call("http://10.0.0.1/".into(), None),
            "schedule.action.call_api.url",
            "egress to 10.0.0.1 refused: private (10.0.0.0/8)",
        ),
        (
            "metadata",
            call("http://169.254.169.254/latest/".into(), None),
            "schedule.action.call_api.url",
            "a cloud metadata address",
        ),
        (
            "no-secret",
            call(sink.url("/x"), Some("absent_token")),
            "schedule.action.call_api.auth.bearer.token_secret",
            "this executor has no secret named \"absent_token\"",
        ),
    ] {
        let status = client
            .create_schedule(create(id, cron(YEARLY, "UTC"), action(call)))
            .await
            .expect_err(id);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{id}");
        let violations = almanac_proto::status::precondition_violations(&status);
        assert_eq!(violations.len(), 1, "{id}: {violations:?}");
        assert_eq!(violations[0].field, field, "{id}");
        assert!(
            violations[0].description.contains(says),
            "{id}: {violations:?}"
        );
    }
    let listed = client
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.schedules.is_empty(), "nothing was created");
    assert!(sink.hits().is_empty());
    scheduler.stop().await;
    executor.stop().await;
}
