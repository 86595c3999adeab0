//! Support for the replica tests: several executors on one PostgreSQL database, either
//! in this process (`replica`) or as real `executor-svc` processes (`Process`) that a
//! test can SIGKILL, freeze with SIGSTOP and wake with SIGCONT. The tests need
//! PostgreSQL: `shared_database` prints SKIPPED and returns `None` otherwise.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use almanac_executor::Config;
use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::{ExecutionEvent, WatchExecutionRequest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::common::{Executor, WAIT, collect, eventually};

/// A fresh database for the replicas of one test, when the tests run on PostgreSQL
/// (`ALMANAC_TEST_BACKEND=postgres`); `None`, after printing SKIPPED, otherwise.
pub async fn shared_database(test: &str) -> Option<String> {
    if !almanac_testkit::on_postgres() {
        println!("SKIPPED: {test} needs PostgreSQL (ALMANAC_TEST_BACKEND=postgres)");
        return None;
    }
    let url = almanac_testkit::fresh_postgres_database().await;
    assert!(
        url.is_some(),
        "ALMANAC_TEST_BACKEND=postgres needs ALMANAC_TEST_POSTGRES_URL"
    );
    url
}

/// An in-process executor on the shared database `url`, as replica `id` with `ttl`.
pub async fn replica(dir: &Path, url: &str, id: &str, ttl: Duration) -> Executor {
    let mut config = Config::new(dir.join(format!("{id}.db")));
    config.database_url = Some(url.to_owned());
    config.replica_id = id.to_owned();
    config.lease_ttl = ttl;
    Executor::start_with(config).await
}

/// A real `executor-svc` process; killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _stdout: ChildStdout,
}

impl Process {
    /// Starts `executor-svc` on 127.0.0.1:0 over `url` as replica `id` with lease TTL
    /// `ttl` (e.g. `2s`), loopback allowed through the egress guard, logs in `dir`.
    pub fn start(dir: &Path, url: &str, id: &str, ttl: &str) -> Self {
        let config = dir.join("executor.toml");
        std::fs::write(&config, "[egress]\nallow = [\"127.0.0.0/8\"]\n").unwrap();
        let log = dir.join(format!("{id}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_executor-svc"))
            .current_dir(dir)
            .args(["--listen", "127.0.0.1:0", "--database-url", url])
            .args(["--replica-id", id, "--lease-ttl", ttl])
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start executor-svc");
        let stdout = child.stdout.take().unwrap();
        // The first line names the address; read it on a thread so the wait is bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send((line, reader.into_inner()));
        });
        let Ok((line, stdout)) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            panic!("executor-svc {id} did not print its address within the wait");
        };
        let addr = line
            .trim()
            .strip_prefix("executor listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line of {id}: {line:?}"))
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            log,
            _stdout: stdout,
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// SIGKILL, then reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A client (connecting until the process serves, within the wait).
    pub async fn client(&self) -> ExecutorServiceClient<Channel> {
        let url = format!("http://{}", self.addr);
        let channel = eventually(&format!("a connection to {url}"), || {
            let url = url.clone();
            async move { Channel::from_shared(url).unwrap().connect().await.ok() }
        })
        .await;
        ExecutorServiceClient::new(channel)
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        eventually(&format!("{needle:?} in {}", self.log.display()), || {
            let found = self.log_text().contains(needle);
            async move { found.then_some(()) }
        })
        .await;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every event of execution `id`, as `client`'s executor streams it to the end.
pub async fn watch_all(
    client: &mut ExecutorServiceClient<Channel>,
    id: &str,
) -> Vec<ExecutionEvent> {
    let stream = client
        .watch_execution(WatchExecutionRequest {
            execution_id: id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    collect(stream).await
}

/// Asserts that `events` are the whole log, each seq once and in order: 1, 2, …, n, with
/// exactly one `ExecutionFinished`, last.
pub fn assert_whole_log(events: &[ExecutionEvent]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "each seq once, in order");
    let finishes = crate::common::kinds(events)
        .iter()
        .filter(|k| **k == "ExecutionFinished")
        .count();
    assert_eq!(finishes, 1, "one terminal event");
    crate::common::finished(events);
}
