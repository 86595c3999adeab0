//! The walk a new user takes, end to end with real processes: `almanac dev` (both services,
//! real gRPC between them, SQLite in a tempdir), a real HTTP target on loopback, and every
//! other command run as its own `almanac` process against the endpoints `dev` printed.
//! Finally SIGTERM stops `dev` gracefully.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_almanac");

/// A child process killed (and reaped) when dropped, whatever path the test takes.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls `child` until it exits or `deadline` passes.
fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `almanac dev` running on 127.0.0.1:0, with the endpoints it printed.
struct Dev {
    process: Guard,
    scheduler: String,
    executor: String,
    log: PathBuf,
}

impl Dev {
    fn start(data_dir: &Path, log: PathBuf) -> Dev {
        let child = Command::new(BIN)
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args([
                "--scheduler-listen",
                "127.0.0.1:0",
                "--executor-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("create log file"))
            .spawn()
            .expect("spawn almanac dev");
        let mut process = Guard(child);
        let stdout = process.0.stdout.take().expect("stdout is piped");
        let (lines_tx, lines) = mpsc::channel();
        // Ends at EOF, i.e. when `dev` exits.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            process,
            scheduler: String::new(),
            executor: String::new(),
            log,
        };
        let until = Instant::now() + Duration::from_secs(60);
        while dev.scheduler.is_empty() || dev.executor.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "almanac dev printed no endpoints ({e}); log:\n{}",
                    dev.log_text()
                )
            });
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("scheduler"), Some(url)) => dev.scheduler = url.to_owned(),
                (Some("executor"), Some(url)) => dev.executor = url.to_owned(),
                _ => {}
            }
        }
        dev
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `almanac --scheduler S --executor E <args>` to its end (bounded).
    fn almanac(&self, args: &[&str]) -> Run {
        let mut all = vec!["--scheduler", &self.scheduler, "--executor", &self.executor];
        all.extend_from_slice(args);
        run_almanac(&all, self.log.parent().expect("log has a folder"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- almanac dev log ---\n{}", self.log_text());
        }
    }
}

/// One finished `almanac` process.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert!(
            self.status.success(),
            "exit {}: {}{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the CLI with its output in files (no pipe can fill up), killed after 30 s.
fn run_almanac(args: &[&str], scratch: &Path) -> Run {
    let out_path = scratch.join("cli.stdout");
    let err_path = scratch.join("cli.stderr");
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn almanac");
    let mut child = Guard(child);
    let status = wait_exit(&mut child.0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("almanac {args:?} did not finish within 30s"));
    Run {
        status,
        stdout: std::fs::read_to_string(out_path).expect("read stdout"),
        stderr: std::fs::read_to_string(err_path).expect("read stderr"),
    }
}

/// The requests the HTTP target received: headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn hook(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    received.lock().expect("lock").push((headers, body));
    StatusCode::OK
}

/// Starts the recording HTTP target on 127.0.0.1:0; it lives as long as the runtime.
fn start_target(runtime: &tokio::runtime::Runtime, received: Received) -> std::net::SocketAddr {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind HTTP target");
    let addr = listener.local_addr().expect("target address");
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(received);
    runtime.spawn(async move { axum::serve(listener, app).await });
    addr
}

fn succeeded_runs(runs: &Value) -> Vec<Value> {
    runs["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter(|r| r["status"] == "RUN_STATUS_SUCCEEDED")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_user_creates_a_cron_schedule_watches_it_call_a_url_and_stops_dev_with_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start(&tmp.path().join("data"), tmp.path().join("dev.log"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let received = Received::default();
    let target = start_target(&runtime, received.clone());

    // Create: a six-field cron firing every second, calling the target with a JSON body.
    let url = format!("http://{target}/hook");
    let created = dev
        .almanac(&[
            "schedule",
            "create",
            "walk",
            "--cron",
            "* * * * * *",
            "--url",
            &url,
            "--method",
            "POST",
            "--json-body",
            r#"{"hello":"world"}"#,
        ])
        .ok();
    assert!(created.stdout.contains("walk"), "{}", created.stdout);
    assert!(created.stdout.contains("active"), "{}", created.stdout);

    // Two fires succeed within the deadline.
    let until = Instant::now() + Duration::from_secs(20);
    let runs = loop {
        let runs = dev
            .almanac(&["--output", "json", "schedule", "runs", "walk"])
            .ok()
            .json();
        if succeeded_runs(&runs).len() >= 2 {
            break runs;
        }
        assert!(
            Instant::now() < until,
            "fewer than 2 succeeded runs in 20s: {runs:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // The target saw the scheduler's headers and the body.
    {
        let received = received.lock().expect("lock");
        let from_walk: Vec<_> = received
            .iter()
            .filter(|(h, _)| h.get("x-almanac-schedule-id").is_some_and(|v| v == "walk"))
            .collect();
        assert!(
            from_walk.len() >= 2,
            "requests from walk: {}",
            from_walk.len()
        );
        for (headers, body) in from_walk {
            let key = headers
                .get("idempotency-key")
                .expect("Idempotency-Key header");
            assert!(!key.is_empty());
            let body: Value = serde_json::from_slice(body).expect("JSON body");
            assert_eq!(body, serde_json::json!({"hello": "world"}));
        }
    }

    // The runs table reads well for people too.
    let table = dev.almanac(&["schedule", "runs", "walk"]).ok();
    assert!(table.stdout.starts_with("NOMINAL TIME"), "{}", table.stdout);
    assert!(table.stdout.contains("succeeded"), "{}", table.stdout);

    // Get, as text and as JSON.
    let got = dev.almanac(&["schedule", "get", "walk"]).ok();
    assert!(
        got.stdout.contains(r#"cron "* * * * * *" UTC"#),
        "{}",
        got.stdout
    );
    assert!(
        got.stdout.contains(&format!("call_api POST {url}")),
        "{}",
        got.stdout
    );
    let got = dev
        .almanac(&["--output", "json", "schedule", "get", "walk"])
        .ok()
        .json();
    assert_eq!(got["schedule"]["id"], "walk");
    assert_eq!(got["schedule"]["state"], "SCHEDULE_STATE_ACTIVE");

    // Pause, and the schedule says who paused it and why.
    dev.almanac(&[
        "schedule",
        "pause",
        "walk",
        "--note",
        "walkthrough",
        "--identity",
        "tester",
    ])
    .ok();
    let got = dev
        .almanac(&["--output", "json", "schedule", "get", "walk"])
        .ok()
        .json();
    assert_eq!(got["schedule"]["state"], "SCHEDULE_STATE_PAUSED");
    assert_eq!(got["schedule"]["pause"]["identity"], "tester");
    assert_eq!(got["schedule"]["pause"]["note"], "walkthrough");
    let listed = dev.almanac(&["schedule", "list", "--state", "paused"]).ok();
    assert!(
        listed.stdout.lines().any(|l| l.starts_with("walk ")),
        "{}",
        listed.stdout
    );

    // Preview across the spring-forward gap: 02:30 does not exist on 2026-03-08 in New York.
    let preview = dev
        .almanac(&[
            "schedule",
            "preview",
            "--cron",
            "30 2 * * *",
            "--tz",
            "America/New_York",
            "--from",
            "2026-03-07T00:00:00Z",
            "--count",
            "3",
        ])
        .ok();
    let lines: Vec<&str> = preview.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and 3 fires: {}", preview.stdout);
    assert!(lines[0].contains("America/New_York"), "{}", preview.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("2026-03-08T07:00:00.000Z")),
        "{}",
        preview.stdout
    );

    // The execution behind a succeeded run, from the executor.
    let run = &succeeded_runs(&runs)[0];
    let execution_id = run["attempts"][0]["executionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no execution id in {run:#}"))
        .to_owned();
    let execution = dev.almanac(&["execution", "get", &execution_id]).ok();
    assert!(
        execution.stdout.contains("succeeded"),
        "{}",
        execution.stdout
    );
    assert!(
        execution.stdout.contains("call_api"),
        "{}",
        execution.stdout
    );
    let execution = dev
        .almanac(&["--output", "json", "execution", "get", &execution_id])
        .ok()
        .json();
    assert_eq!(
        execution["execution"]["status"],
        "EXECUTION_STATUS_SUCCEEDED"
    );
    let watched = dev.almanac(&["execution", "watch", &execution_id]).ok();
    assert!(
        watched.stdout.contains("execution_finished"),
        "{}",
        watched.stdout
    );

    // A bad cron expression: the server names the field, the CLI exits 2.
    let invalid = dev.almanac(&[
        "schedule", "create", "bad", "--cron", "not cron", "--url", &url,
    ]);
    assert_eq!(invalid.status.code(), Some(2), "{}", invalid.stderr);
    assert!(
        invalid.stderr.contains("error: INVALID_ARGUMENT"),
        "{}",
        invalid.stderr
    );
    assert!(
        invalid
            .stderr
            .contains("  - schedule.spec.cron.expression: "),
        "{}",
        invalid.stderr
    );
    let missing = dev.almanac(&["schedule", "get", "no-such-schedule"]);
    assert_eq!(missing.status.code(), Some(2), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("error: NOT_FOUND"),
        "{}",
        missing.stderr
    );

    // Nothing listens on port 1: the CLI says which endpoint and suggests `almanac dev`.
    let unreachable = run_almanac(
        &["--scheduler", "http://127.0.0.1:1", "schedule", "list"],
        tmp.path(),
    );
    assert_eq!(unreachable.status.code(), Some(1), "{}", unreachable.stderr);
    assert!(
        unreachable.stderr.contains("http://127.0.0.1:1"),
        "{}",
        unreachable.stderr
    );
    assert!(
        unreachable.stderr.contains("almanac dev"),
        "{}",
        unreachable.stderr
    );

    // SIGTERM stops both services gracefully.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(dev.process.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    let status = wait_exit(&mut dev.process.0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("almanac dev did not stop within 30s after SIGTERM"));
    assert!(
        status.success(),
        "almanac dev exited with {status}; log:\n{}",
        dev.log_text()
    );
}
