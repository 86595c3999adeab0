//! Shared test harness: a real executor on 127.0.0.1:0 with a SQLite file in a tempdir
//! (or, under `ALMANAC_TEST_BACKEND=postgres`, a PostgreSQL database of its own on the
//! cluster named by `ALMANAC_TEST_POSTGRES_URL`, kept for restarts on the same path),
//! a real gRPC client, and a small axum HTTP target on loopback that records every
//! request it receives (method, path, headers, body).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use almanac_executor::store::{Backend, ExecutorStore};
use almanac_executor::{Config, ServerError, server};
use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::{
    Action, CallApiAction, ExecuteRequest, ExecuteResponse, ExecutionEvent, ExecutionFinished,
    action::Kind,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Streaming;
use tonic::transport::Channel;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running executor.
pub struct Executor {
    pub addr: SocketAddr,
    pub db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl Executor {
    /// Starts an executor on a fresh port with its database at `db`.
    pub async fn start(db: &Path) -> Self {
        Self::start_with(Config::new(db)).await
    }

    /// Starts an executor on a fresh port with `config`, loopback let through the egress
    /// guard: the tests' targets live there.
    pub async fn start_with(mut config: Config) -> Self {
        config.actions.allow_loopback();
        Self::start_exact(config).await
    }

    /// Starts an executor on a fresh port with exactly `config` (the egress guard lets
    /// through only what `config.actions.egress.allow` lists: by default, no loopback).
    pub async fn start_exact(mut config: Config) -> Self {
        let db = config.database_path.clone();
        if config.database_url.is_none() {
            config.database_url = postgres_url_for(&db).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(config, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            db,
            stop: Some(tx),
            handle,
        }
    }

    /// A client of this executor.
    pub async fn client(&self) -> ExecutorServiceClient<Channel> {
        ExecutorServiceClient::new(self.channel().await)
    }

    /// A channel to this executor.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Asks for a graceful shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .expect("the executor stops within the wait")
            .expect("the server task does not panic");
        result.expect("run returns Ok after shutdown");
    }
}

/// Whether the tests run on PostgreSQL (`ALMANAC_TEST_BACKEND=postgres`) instead of SQLite.
pub fn on_postgres() -> bool {
    std::env::var("ALMANAC_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// Under `ALMANAC_TEST_BACKEND=postgres`, the database standing for the SQLite file `db`:
/// a fresh one the first time, whose URL is kept in a file next to `db`, so a restart of
/// "the same" executor (same `db` path) finds the same data. `None` on SQLite.
pub async fn postgres_url_for(db: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let keep = db.with_extension("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&keep) {
        return Some(url);
    }
    let url = almanac_testkit::fresh_postgres_database()
        .await
        .expect("ALMANAC_TEST_BACKEND=postgres needs ALMANAC_TEST_POSTGRES_URL");
    if let Some(dir) = keep.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&keep, &url).unwrap();
    Some(url)
}

/// The store an executor started on `db` uses (SQLite there, or its PostgreSQL database),
/// opened directly: tests use it to set up or inspect what a process left.
pub async fn open_store(db: &Path) -> Arc<dyn ExecutorStore> {
    let mut config = Config::new(db);
    config.database_url = postgres_url_for(db).await;
    Backend::from_config(&config).unwrap().open().await.unwrap()
}

/// One request the target received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

#[derive(Default)]
struct TargetState {
    requests: Mutex<Vec<Recorded>>,
    first_slow_seen: AtomicUsize,
}

/// An HTTP server on loopback. Paths: `/ok` (200 JSON), `/status/{code}` (that status,
/// a text body), `/slow/{ms}` (200 after `ms`), `/first-slow/{ms}` (the first request
/// waits `ms`, later ones answer at once).
#[derive(Clone)]
pub struct Target {
    pub base: String,
    state: Arc<TargetState>,
}

impl Target {
    pub async fn start() -> Self {
        let state = Arc::new(TargetState::default());
        let app = axum::Router::new()
            .fallback(serve_target)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until the target has received at least `n` requests.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        eventually(&format!("{n} requests at the target"), || {
            let got = self.requests();
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

async fn serve_target(
    State(state): State<Arc<TargetState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    state.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (route, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let ms = || Duration::from_millis(arg.parse().unwrap_or(0));
    match route {
        "ok" => axum::Json(serde_json::json!({"hello": "world"})).into_response(),
        "status" => {
            let code = StatusCode::from_u16(arg.parse().unwrap_or(500)).unwrap();
            (code, format!("boom {}", code.as_u16())).into_response()
        }
        "slow" => {
            tokio::time::sleep(ms()).await;
            axum::Json(serde_json::json!({"slept_ms": arg})).into_response()
        }
        "first-slow" => {
            if state.first_slow_seen.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(ms()).await;
            }
            axum::Json(serde_json::json!({"done": true})).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Polls `check` every 50 ms until it yields a value; fails the test after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `call_api` action.
pub fn call(url: &str) -> Action {
    Action {
        kind: Some(Kind::CallApi(CallApiAction {
            url: url.into(),
            ..Default::default()
        })),
    }
}

/// A `call_api` GET of `url` tried once: no retry inside the execution.
pub fn call_once(url: &str) -> Action {
    Action {
        kind: Some(Kind::CallApi(CallApiAction {
            url: url.into(),
            retry: Some(almanac_proto::executor::v1::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            }),
            ..Default::default()
        })),
    }
}

/// An `ExecuteRequest` with `key` and `action`.
pub fn execute_request(key: &str, action: Action) -> ExecuteRequest {
    ExecuteRequest {
        idempotency_key: key.into(),
        action: Some(action),
        ..Default::default()
    }
}

/// The next event of a stream (`None` at its end); fails the test after `WAIT`.
pub async fn next_event<T: StreamEvent>(stream: &mut Streaming<T>) -> Option<ExecutionEvent> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("an event within the wait")
        .expect("the stream does not fail")
        .map(|m| m.event().expect("a response carries an event"))
}

/// Every event of a stream until it ends.
pub async fn collect<T: StreamEvent>(mut stream: Streaming<T>) -> Vec<ExecutionEvent> {
    let mut events = Vec::new();
    for _ in 0..10_000 {
        match next_event(&mut stream).await {
            Some(event) => events.push(event),
            None => return events,
        }
    }
    panic!("a stream of more than 10000 events");
}

/// Executes `request` and collects every event.
pub async fn execute_all(
    client: &mut ExecutorServiceClient<Channel>,
    request: ExecuteRequest,
) -> Vec<ExecutionEvent> {
    collect(client.execute(request).await.unwrap().into_inner()).await
}

/// A response that carries one event.
pub trait StreamEvent {
    fn event(self) -> Option<ExecutionEvent>;
}

impl StreamEvent for ExecuteResponse {
    fn event(self) -> Option<ExecutionEvent> {
        self.event
    }
}

impl StreamEvent for almanac_proto::executor::v1::WatchExecutionResponse {
    fn event(self) -> Option<ExecutionEvent> {
        self.event
    }
}

/// The kind names of events, e.g. `["ExecutionStarted", "NodeStarted", ...]`.
pub fn kinds(events: &[ExecutionEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e.kind.as_ref().expect("an event has a kind") {
            EventKind::ExecutionStarted(_) => "ExecutionStarted",
            EventKind::NodeStarted(_) => "NodeStarted",
            EventKind::NodeSucceeded(_) => "NodeSucceeded",
            EventKind::NodeFailed(_) => "NodeFailed",
            EventKind::NodeRetrying(_) => "NodeRetrying",
            EventKind::NodeSkipped(_) => "NodeSkipped",
            EventKind::Progress(_) => "Progress",
            EventKind::ExecutionFinished(_) => "ExecutionFinished",
        })
        .collect()
}

/// The seqs of events.
pub fn seqs(events: &[ExecutionEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// The `ExecutionFinished` that ends `events`.
pub fn finished(events: &[ExecutionEvent]) -> ExecutionFinished {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(EventKind::ExecutionFinished(f)) => f,
        other => panic!("the last event is not ExecutionFinished: {other:?}"),
    }
}

/// The execution id carried by `ExecutionStarted`.
pub fn execution_id(events: &[ExecutionEvent]) -> String {
    match events.first().and_then(|e| e.kind.clone()) {
        Some(EventKind::ExecutionStarted(s)) => s.execution_id,
        other => panic!("the first event is not ExecutionStarted: {other:?}"),
    }
}

/// A JSON view of a `google.protobuf.Value`.
pub fn json(value: &pbjson_types::Value) -> serde_json::Value {
    almanac_executor::json::pb_to_json(value)
}
