//! Shared pieces of the end-to-end tests: both services in process on 127.0.0.1:0 with
//! real SQLite files, a loopback HTTP target that records what it receives, gRPC clients,
//! and polling with a deadline.

#![allow(dead_code)]

pub mod procs;
pub mod sink;

/// The flags naming a service's database for a process under test: `--database
/// <dir>/<service>.db` on SQLite, `--database-url …` on PostgreSQL
/// (`ALMANAC_TEST_BACKEND=postgres`; a restarted service gets the same database).
pub fn database_flags(dir: &std::path::Path, service: &str) -> Vec<String> {
    match almanac_testkit::postgres_database_for(dir, service) {
        Some(url) => vec!["--database-url".into(), url],
        None => vec![
            "--database".into(),
            dir.join(format!("{service}.db")).display().to_string(),
        ],
    }
}

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use almanac_proto::executor::v1::{
    Action, CallApiAction, action::Kind, executor_service_client::ExecutorServiceClient,
};
use almanac_proto::scheduler::v1::{self as pb, scheduler_service_client::SchedulerServiceClient};
use almanac_scheduler::engine::clock::Clock;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A server running in this process; dropping it shuts it down.
pub struct Service {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("server stops within 30 s")
                .expect("server task");
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn bind(addr: &str) -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Starts an executor whose database is `<dir>/executor.db`.
pub async fn start_executor(dir: &Path) -> Service {
    start_executor_at(dir, "127.0.0.1:0").await
}

/// Starts an executor on a given address (to restart one where it was).
pub async fn start_executor_at(dir: &Path, addr: &str) -> Service {
    let (listener, addr) = bind(addr).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let mut config = almanac_executor::config::Config::new(dir.join("executor.db"));
    config.database_url = almanac_testkit::postgres_database_for(dir, "executor");
    // The tests' targets live on loopback, which the egress guard refuses by default.
    config.actions.egress.allow = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let task = tokio::spawn(async move {
        almanac_executor::server::run(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("executor runs");
    });
    Service {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Starts a scheduler whose ledger is `<dir>/scheduler.db`, with the system clock.
pub async fn start_scheduler(dir: &Path, executor: &str) -> Service {
    start_scheduler_with(dir, executor, None).await
}

/// Starts a scheduler with an injected clock.
pub async fn start_scheduler_with(
    dir: &Path,
    executor: &str,
    clock: Option<Arc<dyn Clock>>,
) -> Service {
    start_scheduler_tuned(dir, executor, clock, |_| {}).await
}

/// Starts a scheduler whose configuration `tune` adjusts first.
pub async fn start_scheduler_tuned(
    dir: &Path,
    executor: &str,
    clock: Option<Arc<dyn Clock>>,
    tune: impl FnOnce(&mut almanac_scheduler::config::Config),
) -> Service {
    let (listener, addr) = bind("127.0.0.1:0").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let mut config = almanac_scheduler::config::Config::new(dir.join("scheduler.db"), executor);
    config.database_url = almanac_testkit::postgres_database_for(dir, "scheduler");
    // One scheduler per test, restarted under its name: it resumes its runs at once.
    config.engine.replica_id = "test-scheduler".into();
    tune(&mut config);
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let result = match clock {
            Some(clock) => {
                almanac_scheduler::server::run_with_clock(config, clock, listener, shutdown).await
            }
            None => almanac_scheduler::server::run(config, listener, shutdown).await,
        };
        result.expect("scheduler runs");
    });
    Service {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Both services, the scheduler pointed at the executor.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub executor: Service,
    pub scheduler: Service,
}

impl Stack {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let executor = start_executor(dir.path()).await;
        let scheduler = start_scheduler(dir.path(), &executor.url()).await;
        Self {
            dir,
            executor,
            scheduler,
        }
    }

    pub async fn scheduler_client(&self) -> SchedulerServiceClient<Channel> {
        scheduler_client(&self.scheduler.url()).await
    }

    pub async fn executor_client(&self) -> ExecutorServiceClient<Channel> {
        executor_client(&self.executor.url()).await
    }
}

/// A client of the scheduler at `url` (retries the connection for a few seconds).
pub async fn scheduler_client(url: &str) -> SchedulerServiceClient<Channel> {
    SchedulerServiceClient::new(channel(url).await)
}

/// A client of the executor at `url`.
pub async fn executor_client(url: &str) -> ExecutorServiceClient<Channel> {
    ExecutorServiceClient::new(channel(url).await)
}

pub async fn channel(url: &str) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).expect("endpoint");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `call_api` action.
pub fn call_api(method: &str, url: &str) -> Action {
    Action {
        kind: Some(Kind::CallApi(CallApiAction {
            method: method.into(),
            url: url.into(),
            ..Default::default()
        })),
    }
}

pub fn cron(expression: &str, timezone: &str) -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::Cron(pb::CronSpec {
            expression: expression.into(),
            timezone: timezone.into(),
        })),
    }
}

pub fn every(ms: i64) -> pb::ScheduleSpec {
    pb::ScheduleSpec {
        kind: Some(pb::schedule_spec::Kind::Interval(pb::IntervalSpec {
            every: Some(almanac_proto::time::ms_to_duration(ms)),
            offset: None,
        })),
    }
}

/// A create request for a schedule with this id, spec and action.
pub fn create(id: &str, spec: pb::ScheduleSpec, action: Action) -> pb::CreateScheduleRequest {
    pb::CreateScheduleRequest {
        schedule_id: id.into(),
        schedule: Some(pb::Schedule {
            spec: Some(spec),
            action: Some(action),
            ..Default::default()
        }),
        request_id: String::new(),
    }
}

/// Every run of a schedule (all pages), newest first.
pub async fn all_runs(
    client: &mut SchedulerServiceClient<Channel>,
    schedule_id: &str,
) -> Vec<pb::Run> {
    let mut runs = Vec::new();
    let mut token = String::new();
    for _ in 0..10_000 {
        let page = client
            .list_runs(pb::ListRunsRequest {
                schedule_id: schedule_id.into(),
                page_size: 1_000,
                page_token: token.clone(),
                status: 0,
            })
            .await
            .expect("list runs")
            .into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        token = page.next_page_token;
    }
    panic!("more than 10 000 pages of runs");
}

pub fn status_of(run: &pb::Run) -> pb::RunStatus {
    pb::RunStatus::try_from(run.status).expect("known status")
}

pub fn nominal_ms(run: &pb::Run) -> i64 {
    almanac_proto::time::timestamp_to_ms(run.nominal_time.as_ref().expect("nominal time"))
}

/// Whether an external tool a test needs is present. When it is missing the test is
/// skipped with a message saying why — unless `ALMANAC_REQUIRE_TOOLS=1` (set by
/// `scripts/test.sh`), in which case a missing tool fails the test.
pub fn tool_available(name: &str, present: bool, install_hint: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("ALMANAC_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{name} is required (ALMANAC_REQUIRE_TOOLS=1) but missing: {install_hint}");
    }
    eprintln!("SKIPPED: {name} is not installed ({install_hint}); scripts/test.sh installs it");
    false
}

/// Runs a command to completion with a deadline; returns (success, stdout, stderr).
pub fn run_command(cmd: &mut std::process::Command, timeout: Duration) -> (bool, String, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

/// Fires once a year: a schedule that stays idle for the whole of a test.
pub const YEARLY: &str = "0 0 1 1 *";

/// Creates an idle schedule running `action` and triggers one manual run of it.
pub async fn trigger_idle_schedule(
    client: &mut SchedulerServiceClient<Channel>,
    id: &str,
    action: Action,
) -> pb::Run {
    client
        .create_schedule(create(id, cron(YEARLY, "UTC"), action))
        .await
        .expect("create");
    client
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .run
        .expect("run")
}

/// Creates an idle schedule (fires yearly) calling `url`, adjusted by `tune`.
pub async fn idle(
    client: &mut SchedulerServiceClient<Channel>,
    id: &str,
    url: &str,
    tune: impl FnOnce(&mut pb::Schedule),
) {
    let mut req = create(id, cron(YEARLY, "UTC"), call_api("GET", url));
    tune(req.schedule.as_mut().unwrap());
    client.create_schedule(req).await.expect("create");
}

/// Runs a schedule now (`TriggerSchedule`); returns the run.
pub async fn trigger_now(client: &mut SchedulerServiceClient<Channel>, id: &str) -> pb::Run {
    client
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("trigger")
        .into_inner()
        .run
        .unwrap()
}

/// Whether nothing will change a run's status again.
pub fn is_terminal(run: &pb::Run) -> bool {
    !matches!(
        status_of(run),
        pb::RunStatus::Pending | pb::RunStatus::Running
    )
}

/// Polls a run until `done` holds for it (at most 60 s); on timeout the message shows
/// the run as last seen.
pub async fn wait_for_run(
    client: &SchedulerServiceClient<Channel>,
    run_id: &str,
    what: &str,
    done: impl Fn(&pb::Run) -> bool,
) -> pb::Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        let mut client = client.clone();
        if let Ok(answer) = client
            .get_run(pb::GetRunRequest {
                run_id: run_id.to_string(),
            })
            .await
            && let Some(run) = answer.into_inner().run
        {
            if done(&run) {
                return run;
            }
            last = Some(run);
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 60s waiting for {what}; the run was {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
