//! What `call_api` keeps of an answer: a body streamed past the action's limit is cut and
//! marked truncated (no length is trusted), a JSON body is parsed only when whole, and
//! the result keeps the response headers the action asks for.

mod call_api_target;
mod common;

use almanac_proto::executor::v1::CallApiAction;
use call_api_target::{Api, result_of, run};
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_response_beyond_the_size_limit_is_cut_and_marked_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    // 8 MiB streamed without a length; the action keeps 1000 bytes.
    let call = CallApiAction {
        url: api.url("/bytes/8388608"),
        max_response_bytes: 1000,
        ..Default::default()
    };
    let result = result_of(&run(&mut client, "cut", call).await);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["body"], "a".repeat(1000));

    // The default limit is 1 MiB; a text body is kept up to 64 KiB.
    let call = CallApiAction {
        url: api.url("/bytes/3145728"),
        ..Default::default()
    };
    let result = result_of(&run(&mut client, "default-cut", call).await);
    assert_eq!(result["truncated"], true);
    assert_eq!(result["body"].as_str().unwrap().len(), 64 * 1024);

    // A JSON body cut short is kept as text, not parsed.
    let call = CallApiAction {
        url: api.url("/json-bytes/5000"),
        max_response_bytes: 100,
        ..Default::default()
    };
    let result = result_of(&run(&mut client, "json-cut", call).await);
    assert_eq!(result["truncated"], true);
    assert!(
        result["body"]
            .as_str()
            .unwrap()
            .starts_with("{\"pad\":\"aaa")
    );

    // Within the limit, nothing is cut.
    let call = CallApiAction {
        url: api.url("/bytes/1000"),
        max_response_bytes: 1000,
        ..Default::default()
    };
    let result = result_of(&run(&mut client, "exact", call).await);
    assert_eq!(result["truncated"], false);
    assert_eq!(result["body"].as_str().unwrap().len(), 1000);
    executor.stop().await;
}

#[tokio::test]
async fn the_result_keeps_the_asked_response_headers() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    let result = result_of(
        &run(
            &mut client,
            "default",
            CallApiAction {
                url: api.url("/headers"),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(
        result["headers"],
        json!({"content-type": "text/plain; charset=utf-8"})
    );
    assert_eq!(result["body"], "with headers");
    assert_eq!(result["truncated"], false);
    assert!(result["duration_ms"].is_u64());

    let result = result_of(
        &run(
            &mut client,
            "chosen",
            CallApiAction {
                url: api.url("/headers"),
                response_headers: vec!["x-request-id".into(), "X-Multi".into(), "x-absent".into()],
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(
        result["headers"],
        json!({"x-request-id": "req-42", "x-multi": "one, two"})
    );
    executor.stop().await;
}
