//! `call_api` end to end: the request the target receives (methods, headers, query,
//! JSON and raw bodies, the executor's headers), the events of a successful call, the
//! node table, redirects, templates, timeouts and how failing statuses end an execution.

mod call_api_target;
mod common;

use almanac_proto::executor::v1::RawBody;
use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{
    Action, CallApiAction, ExecutionStatus, GetExecutionRequest, NodeStatus, Origin, action::Kind,
    call_api_action::Body,
};
use almanac_proto::time::{ms_to_duration, ms_to_timestamp};
use call_api_target::{Api, result_of, run};
use common::*;
use serde_json::json;

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

#[tokio::test]
async fn methods_headers_query_and_bodies_reach_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    // Every method, with the action's query appended to the URL's own.
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let mut call = CallApiAction {
            method: method.into(),
            url: api.url(&format!("/echo/{method}?keep=1")),
            ..Default::default()
        };
        call.query.insert("page".into(), "2".into());
        call.query.insert("q".into(), "a b&c".into());
        call.headers.insert("X-Trace".into(), format!("t-{method}"));
        let result = result_of(&run(&mut client, &format!("m-{method}"), call).await);
        assert_eq!(result["body"]["method"], method);
    }
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let seen = api.seen_on(&format!("/echo/{method}"));
        assert_eq!(seen.len(), 1, "{method}");
        assert_eq!(seen[0].method, method);
        assert_eq!(seen[0].query.as_deref(), Some("keep=1&page=2&q=a+b%26c"));
        assert_eq!(seen[0].headers["x-trace"], format!("t-{method}"));
        assert_eq!(seen[0].headers["idempotency-key"], format!("m-{method}"));
    }

    // A JSON body.
    let call = CallApiAction {
        method: "POST".into(),
        url: api.url("/echo/json"),
        body: Some(Body::JsonBody(almanac_executor::json::json_to_pb(
            &json!({"n": 1, "list": [true, null, "x"]}),
        ))),
        ..Default::default()
    };
    result_of(&run(&mut client, "json", call).await);
    let seen = &api.seen_on("/echo/json")[0];
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&seen.body).unwrap(),
        json!({"n": 1, "list": [true, null, "x"]})
    );

    // Raw bytes, with their content type, the action's Content-Type header, or the
    // default one.
    let bytes = vec![0u8, 1, 2, 0xff, b'\n'];
    for (path, content_type, header, expected) in [
        ("/echo/csv", "text/csv", Some("text/plain"), "text/csv"),
        ("/echo/header", "", Some("text/plain"), "text/plain"),
        ("/echo/raw", "", None, "application/octet-stream"),
    ] {
        let mut call = CallApiAction {
            method: "PUT".into(),
            url: api.url(path),
            body: Some(Body::RawBody(RawBody {
                data: bytes.clone(),
                content_type: content_type.into(),
            })),
            ..Default::default()
        };
        if let Some(header) = header {
            call.headers.insert("Content-Type".into(), header.into());
        }
        result_of(&run(&mut client, path, call).await);
        let seen = &api.seen_on(path)[0];
        assert_eq!(seen.headers["content-type"], expected);
        assert_eq!(seen.body, bytes);
    }
    executor.stop().await;
}

#[tokio::test]
async fn redirects_within_the_limit_are_followed_and_beyond_it_fail() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    // Three hops, within the default limit of 5.
    let call = CallApiAction {
        url: api.url("/redirect/3"),
        ..Default::default()
    };
    let result = result_of(&run(&mut client, "three", call).await);
    assert_eq!(result["body"], "landed");
    assert_eq!(api.seen_on("/redirect/0").len(), 1);

    // Six hops: one more than the default limit.
    let call = CallApiAction {
        url: api.url("/redirect/6"),
        ..Default::default()
    };
    let events = run(&mut client, "six", call).await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(!done.retryable, "too many redirects is final");
    assert!(
        done.error.contains("too many redirects: at most 5"),
        "{}",
        done.error
    );

    // The action's own limit.
    for (hops, limit, ok) in [(2, 2, true), (3, 2, false), (1, 0, false)] {
        let call = CallApiAction {
            url: api.url(&format!("/redirect/{hops}")),
            max_redirects: Some(limit),
            ..Default::default()
        };
        let events = run(&mut client, &format!("hops-{hops}-{limit}"), call).await;
        let done = finished(&events);
        let succeeded = done.status == ExecutionStatus::Succeeded as i32;
        assert_eq!(succeeded, ok, "{hops} hops, limit {limit}: {}", done.error);
        if !ok {
            assert!(
                done.error.contains(&format!("at most {limit}")),
                "{}",
                done.error
            );
        }
    }
    executor.stop().await;
}

#[tokio::test]
async fn templates_put_the_nominal_time_into_the_url_and_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    let mut call = CallApiAction {
        method: "POST".into(),
        url: format!("{}/echo/{{{{ run.nominal_time }}}}", api.base),
        body: Some(Body::JsonBody(almanac_executor::json::json_to_pb(
            &json!({"for": "{{ run.nominal_time }}", "run": "{{ run.id }}"}),
        ))),
        ..Default::default()
    };
    call.query
        .insert("schedule".into(), "{{ schedule.id }}".into());
    let mut request = execute_request(
        "templated",
        Action {
            kind: Some(Kind::CallApi(call)),
        },
    );
    request.origin = Some(Origin {
        schedule_id: "daily-report".into(),
        run_id: "run-7".into(),
        nominal_time: Some(ms_to_timestamp(1_793_000_000_123)),
        attempt: 1,
    });
    let events = execute_all(&mut client, request).await;
    result_of(&events);
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/echo/2026-10-26T07:33:20.123Z");
    assert_eq!(seen[0].query.as_deref(), Some("schedule=daily-report"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&seen[0].body).unwrap(),
        json!({"for": "2026-10-26T07:33:20.123Z", "run": "run-7"})
    );
    executor.stop().await;
}

#[tokio::test]
async fn a_call_slower_than_its_timeout_fails_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    let call = CallApiAction {
        url: target.url("/slow/5000"),
        timeout: Some(ms_to_duration(300)),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let events = run(&mut client, "slow", call).await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(done.retryable);
    assert!(
        done.error.contains("timed out after 300ms"),
        "{}",
        done.error
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    executor.stop().await;
}
