//! `call_api` end to end: the request the target receives (method, body, the executor's
//! headers), the events of a successful call, the node table, and how failing statuses
//! end an execution.

mod common;

use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    Action, CallApiAction, ExecutionStatus, GetExecutionRequest, NodeStatus, Origin, action::Kind,
    call_api_action::Body,
};
use almanac_proto::time::ms_to_timestamp;
use common::*;

#[tokio::test]
async fn call_api_success_sends_the_almanac_headers_and_records_the_node_table() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    let mut call = CallApiAction {
        method: "POST".into(),
        url: target.url("/ok"),
        body: Some(Body::JsonBody(almanac_executor::json::json_to_pb(
            &serde_json::json!({"x": 1}),
        ))),
        ..Default::default()
    };
    call.headers.insert("X-Custom".into(), "yes".into());
    let mut request = execute_request(
        "run-1/1",
        Action {
            kind: Some(Kind::CallApi(call)),
        },
    );
    request.origin = Some(Origin {
        schedule_id: "nightly".into(),
        run_id: "run-1".into(),
        nominal_time: Some(ms_to_timestamp(1_793_000_000_123)),
        attempt: 1,
    });
    let events = execute_all(&mut client, request).await;

    assert_eq!(
        kinds(&events),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeSucceeded",
            "ExecutionFinished"
        ]
    );
    assert_eq!(seqs(&events), [1, 2, 3, 4]);
    let id = execution_id(&events);
    assert!(
        events
            .iter()
            .all(|e| e.execution_id == id && e.time.is_some())
    );
    match &events[1].kind {
        Some(EventKind::NodeStarted(n)) => {
            assert_eq!((n.node_id.as_str(), n.attempt), ("action", 1))
        }
        other => panic!("NodeStarted expected, got {other:?}"),
    }
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Succeeded as i32);
    let result = json(done.result.as_ref().expect("a result"));
    assert_eq!(result["status"], 200);
    assert_eq!(result["body"], serde_json::json!({"hello": "world"}));
    assert!(
        result["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(result["duration_ms"].is_u64());

    let seen = target.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/ok"));
    assert_eq!(r.headers["idempotency-key"], "run-1/1");
    assert_eq!(r.headers["x-almanac-schedule-id"], "nightly");
    assert_eq!(r.headers["x-almanac-run-id"], "run-1");
    assert_eq!(
        r.headers["x-almanac-nominal-time"],
        "2026-10-26T07:33:20.123Z"
    );
    assert_eq!(r.headers["x-custom"], "yes");
    assert!(r.headers["content-type"].starts_with("application/json"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap(),
        serde_json::json!({"x": 1})
    );

    let execution = client
        .get_execution(GetExecutionRequest {
            execution_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::Succeeded as i32);
    assert_eq!(execution.last_seq, 4);
    assert_eq!(execution.idempotency_key, "run-1/1");
    assert!(execution.finish_time.is_some());
    assert_eq!(execution.nodes.len(), 1);
    let node = &execution.nodes[0];
    assert_eq!(
        (node.node_id.as_str(), node.kind.as_str(), node.attempt),
        ("action", "call_api", 1)
    );
    assert_eq!(node.status, NodeStatus::Succeeded as i32);
    assert_eq!(json(node.output.as_ref().unwrap())["status"], 200);
    assert!(node.duration.is_some() && node.start_time.is_some() && node.finish_time.is_some());

    let by_key = client
        .get_execution(GetExecutionRequest {
            idempotency_key: "run-1/1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap();
    assert_eq!(by_key.id, id);
    executor.stop().await;
}

#[tokio::test]
async fn a_500_fails_retryable_and_a_404_fails_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    for (code, retryable) in [
        (500, true),
        (503, true),
        (429, true),
        (404, false),
        (400, false),
    ] {
        let key = format!("failing-{code}");
        let events = execute_all(
            &mut client,
            execute_request(&key, call_once(&target.url(&format!("/status/{code}")))),
        )
        .await;
        assert_eq!(
            kinds(&events),
            [
                "ExecutionStarted",
                "NodeStarted",
                "NodeFailed",
                "ExecutionFinished"
            ],
            "{code}"
        );
        let done = finished(&events);
        assert_eq!(done.status, ExecutionStatus::Failed as i32, "{code}");
        assert!(
            done.error.contains(&code.to_string()),
            "{code}: {}",
            done.error
        );
        assert!(
            done.error.contains(&format!("boom {code}")),
            "the error quotes the body: {}",
            done.error
        );
        assert_eq!(done.retryable, retryable, "{code}");
        match &events[2].kind {
            Some(EventKind::NodeFailed(f)) => assert_eq!(f.retryable, retryable),
            other => panic!("NodeFailed expected, got {other:?}"),
        }
        let execution = client
            .get_execution(GetExecutionRequest {
                idempotency_key: key,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .execution
            .unwrap();
        assert_eq!(execution.nodes[0].status, NodeStatus::Failed as i32);
        assert_eq!(execution.retryable, retryable);
    }

    // Work that does not come from a schedule carries only the idempotency key.
    for r in target.requests() {
        assert!(r.headers.contains_key("idempotency-key"));
        assert!(
            !r.headers.keys().any(|h| h.starts_with("x-almanac-")),
            "{:?}",
            r.headers
        );
    }
    executor.stop().await;
}

#[tokio::test]
async fn an_unreachable_target_fails_retryable() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let events = execute_all(
        &mut client,
        execute_request("unreachable", call(&format!("http://127.0.0.1:{port}/x"))),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(done.retryable);
    assert!(done.error.contains("connect"), "{}", done.error);
    executor.stop().await;
}
