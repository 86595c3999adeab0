//! The rest of the API surface: late watchers get the full replay, listing pages newest
//! first, bad requests are refused with the field they concern (and the server keeps
//! serving), and health and reflection answer.

mod common;

use almanac_proto::executor::v1::{
    Action, CancelExecutionRequest, ExecutePipelineAction, ExecuteRequest, ExecutionStatus,
    GetExecutionRequest, ListExecutionsRequest, Origin, RunTaskAction, SendNotificationAction,
    WatchExecutionRequest, action::Kind,
};
use almanac_proto::status::field_violations;
use common::*;
use tonic::{Code, Status};

#[tokio::test]
async fn a_watcher_that_connects_after_the_finish_gets_the_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let events = execute_all(
        &mut client,
        execute_request("watched", call(&target.url("/ok"))),
    )
    .await;
    let id = execution_id(&events);

    let watch = |after_seq| {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let stream = client
                .watch_execution(WatchExecutionRequest {
                    execution_id: id,
                    after_seq,
                })
                .await
                .unwrap()
                .into_inner();
            collect(stream).await
        }
    };
    assert_eq!(watch(0).await, events);
    assert_eq!(seqs(&watch(3).await), [4]);
    assert!(
        watch(4).await.is_empty(),
        "past the end: the stream just ends"
    );

    let unknown = client
        .watch_execution(WatchExecutionRequest {
            execution_id: "0190aaaa-0000-7000-8000-000000000000".into(),
            after_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    executor.stop().await;
}

#[tokio::test]
async fn listing_pages_newest_first_filters_and_clamps_the_page_size() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut request = execute_request(&format!("list-{i}"), call(&target.url("/ok")));
        if i != 1 {
            request.origin = Some(Origin {
                schedule_id: "hourly".into(),
                run_id: format!("run-{i}"),
                ..Default::default()
            });
        }
        ids.push(execution_id(&execute_all(&mut client, request).await));
    }
    ids.reverse();

    let page = |page_size, page_token: String| {
        let mut client = client.clone();
        async move {
            client
                .list_executions(ListExecutionsRequest {
                    page_size,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = page(2, String::new()).await;
    let got: Vec<_> = first.executions.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, ids[..2]);
    assert!(first.executions.iter().all(|e| e.nodes.is_empty()));
    let second = page(2, first.next_page_token.clone()).await;
    let got: Vec<_> = second.executions.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, ids[2..]);
    assert!(second.next_page_token.is_empty());
    assert_eq!(
        page(100_000, String::new()).await.executions.len(),
        3,
        "clamped, not refused"
    );

    let scheduled = client
        .list_executions(ListExecutionsRequest {
            schedule_id: "hourly".into(),
            status: ExecutionStatus::Succeeded as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<_> = scheduled.executions.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, [ids[0].clone(), ids[2].clone()]);
    executor.stop().await;
}

fn action(kind: Kind) -> Option<Action> {
    Some(Action { kind: Some(kind) })
}

/// Checks that a refused call has `code` and, for INVALID_ARGUMENT, a violation of `field`.
fn check(name: &str, result: Result<(), Status>, code: Code, field: Option<&str>) {
    let status = match result {
        Ok(()) if code == Code::Ok => return,
        Ok(()) => panic!("{name}: accepted, expected {code:?}"),
        Err(status) => status,
    };
    assert_eq!(status.code(), code, "{name}: {}", status.message());
    if let Some(field) = field {
        let fields: Vec<_> = field_violations(&status)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert!(
            fields.iter().any(|f| f == field),
            "{name}: {fields:?} lacks {field}"
        );
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_their_field_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let client = executor.client().await;
    let ok_action = || Some(call(&target.url("/ok")));
    let unknown_id = "0190aaaa-0000-7000-8000-000000000000".to_owned();

    let execute_rows: Vec<(&str, ExecuteRequest, Code, Option<&str>)> = vec![
        (
            "missing key",
            ExecuteRequest {
                action: ok_action(),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("idempotency_key"),
        ),
        (
            "key too long",
            ExecuteRequest {
                idempotency_key: "k".repeat(257),
                action: ok_action(),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("idempotency_key"),
        ),
        (
            "missing action",
            ExecuteRequest {
                idempotency_key: "k".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("action"),
        ),
        (
            "run_task",
            ExecuteRequest {
                idempotency_key: "k".into(),
                action: action(Kind::RunTask(RunTaskAction::default())),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("action.run_task"),
        ),
        (
            "execute_pipeline",
            ExecuteRequest {
                idempotency_key: "k".into(),
                action: action(Kind::ExecutePipeline(ExecutePipelineAction::default())),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("action.execute_pipeline.pipeline_id"),
        ),
        (
            "send_notification",
            ExecuteRequest {
                idempotency_key: "k".into(),
                action: action(Kind::SendNotification(SendNotificationAction::default())),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("action.send_notification"),
        ),
        (
            "ftp url",
            ExecuteRequest {
                idempotency_key: "k".into(),
                action: Some(call("ftp://127.0.0.1/x")),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("action.call_api.url"),
        ),
        (
            "bad deadline",
            ExecuteRequest {
                idempotency_key: "k".into(),
                action: ok_action(),
                deadline: Some(pbjson_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            Some("deadline"),
        ),
    ];
    for (name, request, code, field) in execute_rows {
        let result = client.clone().execute(request).await.map(|_| ());
        check(name, result, code, field);
    }

    let mut c = client.clone();
    check(
        "watch without id",
        c.watch_execution(WatchExecutionRequest::default())
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        Some("execution_id"),
    );
    check(
        "watch unknown id",
        c.watch_execution(WatchExecutionRequest {
            execution_id: unknown_id.clone(),
            after_seq: 0,
        })
        .await
        .map(|_| ()),
        Code::NotFound,
        None,
    );
    check(
        "get without id or key",
        c.get_execution(GetExecutionRequest::default())
            .await
            .map(|_| ()),
        Code::InvalidArgument,
        Some("execution_id"),
    );
    check(
        "get unknown id",
        c.get_execution(GetExecutionRequest {
            execution_id: unknown_id.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::NotFound,
        None,
    );
    check(
        "get unknown key",
        c.get_execution(GetExecutionRequest {
            idempotency_key: "nobody".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::NotFound,
        None,
    );
    check(
        "cancel unknown id",
        c.cancel_execution(CancelExecutionRequest {
            execution_id: unknown_id.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::NotFound,
        None,
    );
    check(
        "cancel unknown mode",
        c.cancel_execution(CancelExecutionRequest {
            execution_id: unknown_id,
            mode: 99,
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        Some("mode"),
    );
    check(
        "list with a foreign token",
        c.list_executions(ListExecutionsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::InvalidArgument,
        Some("page_token"),
    );
    check(
        "list with a huge page",
        c.list_executions(ListExecutionsRequest {
            page_size: 100_000,
            ..Default::default()
        })
        .await
        .map(|_| ()),
        Code::Ok,
        None,
    );

    // Every violation of one request is reported at once.
    let all_bad = c
        .execute(ExecuteRequest {
            action: Some(call("ftp://x")),
            deadline: Some(pbjson_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<_> = field_violations(&all_bad)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        ["idempotency_key", "action.call_api.url", "deadline"]
    );

    // The server keeps serving.
    let events = execute_all(
        &mut c,
        execute_request("still-fine", call(&target.url("/ok"))),
    )
    .await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    executor.stop().await;
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_executor_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::{v1, v1alpha};

    let dir = tempfile::tempdir().unwrap();
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let channel = executor.channel().await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "almanac.executor.v1.ExecutorService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("a service list expected");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names
            .iter()
            .any(|n| n == "almanac.executor.v1.ExecutorService"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("a service list expected");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "almanac.executor.v1.ExecutorService")
    );
    executor.stop().await;
}
