//! Pipelines from the command line, end to end with real processes: `almanac dev`, a real
//! HTTP target on loopback standing in for the README's `python3 -m http.server`, and each
//! `almanac pipeline ...` command run as its own process — validate a broken file (exit 2,
//! every problem), create the shipped example, get, list, run it (lines per event when
//! stdout is not a terminal), then look at the execution it made.

mod cli_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::routing::get;
use cli_support::{Dev, Run, run_almanac};

const HEALTH_CHECK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/pipelines/health-check.yaml"
);
const NIGHTLY_REPORT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/pipelines/nightly-report.yaml"
);
const HEALTH_CHECK_NODES: &[&str] = &[
    "start",
    "fan_out",
    "probe_api",
    "probe_web",
    "healthy",
    "report",
    "alert",
    "api_down",
];

/// The path and query of each GET request the target received.
type Received = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

/// Answers 200 with a little JSON on every path but `/missing` (404), like a static file
/// server in a folder without that file.
async fn answer(
    State(received): State<Received>,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let path = uri.path().to_owned();
    let status = if path == "/missing" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    received.lock().expect("lock").push((path, query));
    (
        status,
        axum::Json(serde_json::json!({"ok": status.is_success()})),
    )
}

/// Starts the recording HTTP target on 127.0.0.1:0; it lives as long as the runtime.
fn start_target(runtime: &tokio::runtime::Runtime, received: Received) -> std::net::SocketAddr {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind HTTP target");
    let addr = listener.local_addr().expect("target address");
    let app = Router::new().fallback(get(answer)).with_state(received);
    runtime.spawn(async move { axum::serve(listener, app).await });
    addr
}

/// How many requests carried `key=value` in their query.
fn count(received: &Received, key: &str, value: &str) -> usize {
    let received = received.lock().expect("lock");
    received
        .iter()
        .filter(|(_, q)| q.get(key).is_some_and(|v| v == value))
        .count()
}

/// The lines of a run's output that are events of `node` of this kind.
fn node_events<'a>(run: &'a Run, kind: &str, node: &str) -> Vec<&'a str> {
    run.stdout
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace().skip(2);
            words.next() == Some(kind) && words.next() == Some(node)
        })
        .collect()
}

/// A pipeline with several problems at once, as a user might write it.
const BROKEN: &str = r#"
id: broken
nodes:
  - id: start
    trigger: {}
  - id: check
    condition:
      expression: "input.n >"
  - id: lonely
    parallel: {}
edges:
  - {from: start, to: check}
  - {from: check, to: ghost}
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

#[test]
fn a_user_validates_creates_inspects_and_runs_the_health_check_pipeline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(&tmp.path().join("data"), tmp.path().join("dev.log"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let received = Received::default();
    let target = start_target(&runtime, received.clone());

    // A file that is not even YAML never reaches the executor: exit 2 with the line.
    let garbage = write(
        tmp.path(),
        "garbage.yaml",
        "id: x\nnodes:\n  - id: a\n   trigger: {}\n",
    );
    let refused = dev.almanac(&["pipeline", "create", "-f", &garbage]).code(2);
    assert!(refused.stderr.contains("line 4"), "{refused}");

    // The executor finds every problem of a broken definition at once: exit 2.
    let broken = write(tmp.path(), "broken.yaml", BROKEN);
    let invalid = dev
        .almanac(&["pipeline", "validate", "-f", &broken])
        .code(2);
    // One problem per line (a long description continues on indented lines).
    let problems: Vec<&str> = invalid
        .stdout
        .lines()
        .filter(|l| !l.starts_with(' '))
        .collect();
    assert!(problems.len() >= 3, "one line per problem: {invalid}");
    assert!(
        problems
            .iter()
            .all(|l| l.starts_with("pipeline.") && l.contains(": ")),
        "`field: description` lines: {invalid}"
    );
    for concern in ["ghost", "check", "lonely"] {
        assert!(
            problems.iter().any(|l| l.contains(concern)),
            "a problem names {concern}: {invalid}"
        );
    }
    assert!(invalid.stderr.contains("not a valid pipeline"), "{invalid}");
    // Invalid pipelines are never stored.
    dev.almanac(&["pipeline", "get", "broken"]).code(2);

    // Both shipped examples are valid.
    for example in [HEALTH_CHECK, NIGHTLY_REPORT] {
        let valid = dev.almanac(&["pipeline", "validate", "-f", example]).ok();
        assert_eq!(valid.stdout.trim(), "valid", "{valid}");
    }

    // Create, get (text and JSON), list.
    let created = dev
        .almanac(&["pipeline", "create", "-f", HEALTH_CHECK])
        .ok();
    assert_eq!(
        created.stdout.trim(),
        "pipeline health-check version 1: 8 nodes, 8 edges",
        "{created}"
    );
    let got = dev.almanac(&["pipeline", "get", "health-check"]).ok();
    for node in HEALTH_CHECK_NODES {
        assert!(
            got.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{node} "))),
            "a row for {node}: {got}"
        );
    }
    for words in [
        ["healthy", "report", "true"],
        ["healthy", "alert", "false"],
        ["probe_api", "api_down", "on_failure"],
    ] {
        assert!(
            got.stdout.lines().any(|l| l.split_whitespace().eq(words)),
            "an edge {words:?}: {got}"
        );
    }
    let json = dev
        .almanac(&[
            "--output",
            "json",
            "pipeline",
            "get",
            "health-check",
            "--version",
            "1",
        ])
        .ok()
        .json();
    assert_eq!(json["pipeline"]["id"], "health-check");
    assert_eq!(json["pipeline"]["version"], "1");
    let listed = dev.almanac(&["pipeline", "list"]).ok();
    assert!(
        listed
            .stdout
            .lines()
            .any(|l| l.starts_with("health-check ")),
        "{listed}"
    );

    // Run it against the local target: not a terminal, so one line per event.
    let input = format!(r#"{{"base_url": "http://{target}", "health_path": "/health"}}"#);
    let run = dev
        .almanac(&["pipeline", "run", "health-check", "--input", &input])
        .ok();
    let first = run.stdout.lines().next().unwrap_or_default();
    let execution_id = first
        .strip_prefix("execution ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the first line names the execution: {run}"))
        .to_owned();
    let finished = run
        .stdout
        .lines()
        .find(|l| l.contains("execution_finished"))
        .unwrap_or_else(|| panic!("an execution_finished line: {run}"));
    assert!(finished.contains("succeeded"), "{run}");
    for node in HEALTH_CHECK_NODES {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains("node_") && l.split_whitespace().any(|w| w == *node)),
            "an event line for node {node}: {run}"
        );
    }
    for ran in [
        "start",
        "fan_out",
        "probe_api",
        "probe_web",
        "healthy",
        "report",
    ] {
        assert_eq!(
            node_events(&run, "node_succeeded", ran).len(),
            1,
            "{ran}: {run}"
        );
    }
    for skipped in ["alert", "api_down"] {
        assert_eq!(
            node_events(&run, "node_skipped", skipped).len(),
            1,
            "{skipped}: {run}"
        );
    }
    assert_eq!(count(&received, "probe", "api"), 1);
    assert_eq!(count(&received, "probe", "web"), 1);
    assert_eq!(count(&received, "report", "healthy"), 1);
    assert_eq!(count(&received, "alert", "degraded"), 0);
    {
        let received = received.lock().expect("lock");
        let (path, probe) = received
            .iter()
            .find(|(_, q)| q.get("probe").is_some_and(|v| v == "api"))
            .expect("the API probe");
        assert_eq!(path, "/health", "templates see input");
        assert_eq!(
            probe["execution"], execution_id,
            "templates see execution.id"
        );
    }

    // The API's health document is missing (404, not retried): `api_down` handles the
    // failure, the nodes after the join are skipped, and the run still succeeds.
    let input = format!(r#"{{"base_url": "http://{target}", "health_path": "/missing"}}"#);
    let handled = dev
        .almanac(&["pipeline", "run", "health-check", "--input", &input])
        .ok();
    assert_eq!(
        node_events(&handled, "node_failed", "probe_api").len(),
        1,
        "{handled}"
    );
    assert_eq!(
        node_events(&handled, "node_succeeded", "api_down").len(),
        1,
        "{handled}"
    );
    for skipped in ["healthy", "report", "alert"] {
        assert_eq!(
            node_events(&handled, "node_skipped", skipped).len(),
            1,
            "{skipped}: {handled}"
        );
    }
    assert_eq!(count(&received, "alert", "api-down"), 1);
    assert!(
        handled
            .stdout
            .lines()
            .any(|l| l.contains("execution_finished") && l.contains("succeeded")),
        "{handled}"
    );

    // The execution it made: its node table, and its events replayed.
    let execution = dev.almanac(&["execution", "get", &execution_id]).ok();
    assert!(execution.stdout.contains("succeeded"), "{execution}");
    assert!(execution.stdout.contains("probe_web"), "{execution}");
    let watched = dev.almanac(&["execution", "watch", &execution_id]).ok();
    assert!(watched.stdout.contains("execution_finished"), "{watched}");

    // A run that cannot succeed exits 1: nothing listens where the probes go.
    let nowhere = r#"{"base_url": "http://127.0.0.1:1", "health_path": "/health"}"#;
    let key = "cli-test-nowhere";
    let failed = dev.almanac(&[
        "pipeline",
        "run",
        "health-check",
        "--input",
        nowhere,
        "--key",
        key,
    ]);
    assert_eq!(failed.status.code(), Some(1), "{failed}");
    assert!(failed.stderr.contains("did not succeed"), "{failed}");

    // Delete: gone for good.
    dev.almanac(&["pipeline", "delete", "health-check"]).ok();
    dev.almanac(&["pipeline", "get", "health-check"]).code(2);

    // Unreachable executor: named, with the usual hint.
    let unreachable = run_almanac(
        &["--executor", "http://127.0.0.1:1", "pipeline", "list"],
        tmp.path(),
    );
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable}");
    assert!(unreachable.stderr.contains("almanac dev"), "{unreachable}");
}
