//! `execute_pipeline` driven by real schedules, both services in process: a run of a
//! pipeline that succeeds ends SUCCEEDED (its nodes called with the run's headers and
//! node keys), a run of a pipeline whose node fails unhandled ends FAILED naming the node,
//! a run whose pipeline was deleted since ends FAILED as refused by the executor,
//! and CreateSchedule naming a pipeline the executor lacks is FAILED_PRECONDITION on
//! `schedule.action.execute_pipeline.pipeline_id`.

mod common;
mod pipeline_support;

use std::time::Duration;

use almanac_proto::executor::v1::DeletePipelineRequest;
use almanac_proto::executor::v1::pipeline_service_client::PipelineServiceClient;
use almanac_proto::scheduler::v1 as pb;
use common::sink::Sink;
use common::*;
use pipeline_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_pipeline_run_ends_with_the_pipelines_outcome() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    sink.respond("/broken", 500, Duration::ZERO);
    let url = stack.executor.url();
    let mut hello = api(
        "hello",
        &format!("{}/hello/{{{{ input.name }}}}", sink.url("")),
    );
    hello.retry = None;
    store_pipeline(
        &url,
        pipeline(
            "greets",
            vec![trigger("start"), hello],
            chain(&["start", "hello"]),
        ),
    )
    .await;
    store_pipeline(
        &url,
        pipeline(
            "breaks",
            vec![
                trigger("start"),
                api("broken", &sink.url("/broken")),
                api("never", &sink.url("/never")),
            ],
            chain(&["start", "broken", "never"]),
        ),
    )
    .await;
    let mut client = stack.scheduler_client().await;

    let run = trigger_idle_schedule(
        &mut client,
        "greeting",
        execute_pipeline("greets", json!({"name": "ada"})),
    )
    .await;
    let done = wait_for_run(&client, &run.id, "the greeting run ends", is_terminal).await;
    assert_eq!(status_of(&done), pb::RunStatus::Succeeded, "{}", done.error);
    let hits = sink.hits_on("/hello/ada");
    assert_eq!(hits.len(), 1, "{:?}", sink.hits());
    assert_eq!(hits[0].header("x-almanac-run-id"), Some(run.id.as_str()));
    assert_eq!(hits[0].header("x-almanac-schedule-id"), Some("greeting"));
    assert_eq!(
        hits[0].header("idempotency-key"),
        Some(format!("{}/1/hello", run.id).as_str()),
        "the node key is the execution key plus the node id"
    );

    let run = trigger_idle_schedule(
        &mut client,
        "breaking",
        execute_pipeline("breaks", json!({})),
    )
    .await;
    let done = wait_for_run(&client, &run.id, "the breaking run ends", is_terminal).await;
    assert_eq!(status_of(&done), pb::RunStatus::Failed);
    assert!(
        done.error.contains("node broken failed") && done.error.contains("500"),
        "{}",
        done.error
    );
    assert_eq!(sink.hits_on("/broken").len(), 1);
    assert!(sink.hits_on("/never").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_pipeline_was_deleted_fails_as_refused_by_the_executor() {
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    let url = stack.executor.url();
    store_pipeline(
        &url,
        pipeline(
            "fleeting",
            vec![trigger("start"), api("hello", &sink.url("/hello"))],
            chain(&["start", "hello"]),
        ),
    )
    .await;
    let mut client = stack.scheduler_client().await;
    client
        .create_schedule(create_schedule(
            "fleeting",
            execute_pipeline("fleeting", json!({})),
        ))
        .await
        .expect("create");
    PipelineServiceClient::new(channel(&url).await)
        .delete_pipeline(DeletePipelineRequest {
            pipeline_id: "fleeting".into(),
        })
        .await
        .expect("delete");
    let run = trigger_now(&mut client, "fleeting").await;
    // The executor's refusal is the attempt's end (not a broken stream sent again and
    // again), whether the scheduler sent it alone or in a batch.
    let done = wait_for_run(&client, &run.id, "the refused run ends", is_terminal).await;
    assert_eq!(status_of(&done), pb::RunStatus::Failed, "{}", done.error);
    assert!(
        done.error.contains("executor refused the attempt")
            && done.error.contains("FailedPrecondition")
            && done.error.contains("fleeting"),
        "{}",
        done.error
    );
    assert!(sink.hits().is_empty(), "{:?}", sink.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_schedule_refuses_a_pipeline_the_executor_lacks() {
    let stack = Stack::start().await;
    let mut client = stack.scheduler_client().await;
    let status = client
        .create_schedule(create_schedule(
            "orphan",
            execute_pipeline("nowhere", json!({})),
        ))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let violations = almanac_proto::status::precondition_violations(&status);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(
        violations[0].field,
        "schedule.action.execute_pipeline.pipeline_id"
    );
    assert!(
        violations[0].description.contains("nowhere"),
        "{violations:?}"
    );
    let listed = client
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.schedules.is_empty(), "nothing was created");
}

fn create_schedule(
    id: &str,
    action: almanac_proto::executor::v1::Action,
) -> pb::CreateScheduleRequest {
    create(id, cron(YEARLY, "UTC"), action)
}
