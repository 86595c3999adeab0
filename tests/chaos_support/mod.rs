//! The chaos test's world: its schedules (a mix of overlap and catch-up policies), the
//! outages it causes, the sink process that records every delivery, and reading the
//! ledger back. The services run as `tests/common/procs.rs` processes; the checks that
//! judge the outcome are in `checks.rs`, the figures in `figures.rs`.

#![allow(dead_code)]

pub mod checks;
pub mod figures;
pub mod harness;
pub mod runs;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::ms_to_duration;
use serde::Deserialize;

use crate::common::{all_runs, call_api, create, cron, every, status_of};

pub type Client = pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel>;

/// Wall-clock milliseconds since the Unix epoch, as the services record times.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The policy mix of the chaos schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mix {
    /// Overlap SKIP, misfire RUN_ONCE: the defaults, most schedules.
    SkipRunOnce,
    /// Overlap ALLOW_ALL, misfire RUN_ALL: every fire of the window runs.
    AllowAllRunAll,
    /// Overlap SKIP, misfire SKIP: missed fires are recorded, never run.
    SkipMisfireSkip,
}

impl Mix {
    /// 60 % RUN_ONCE, 20 % RUN_ALL, 20 % misfire SKIP.
    pub fn of(index: usize) -> Mix {
        match index % 10 {
            0..=5 => Mix::SkipRunOnce,
            6 | 7 => Mix::AllowAllRunAll,
            _ => Mix::SkipMisfireSkip,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mix::SkipRunOnce => "skip+run_once",
            Mix::AllowAllRunAll => "allow_all+run_all",
            Mix::SkipMisfireSkip => "skip+misfire_skip",
        }
    }
}

/// One schedule of the test.
#[derive(Debug, Clone)]
pub struct ChaosSchedule {
    pub id: String,
    pub mix: Mix,
}

/// RUN_ALL keeps at most this many missed fires: far more than a 0–3 s outage misses.
pub const MAX_CATCHUP: u32 = 600;

impl ChaosSchedule {
    pub fn new(index: usize) -> Self {
        let mix = Mix::of(index);
        let id = format!("chaos-{index:03}-{}", mix.label().replace('+', "-"));
        Self { id, mix }
    }

    /// The create request: every second (interval or six-field cron, alternately),
    /// POSTing to the sink at `/s/{id}`, with the default 1 min catch-up window.
    pub fn request(&self, index: usize, sink_base: &str) -> pb::CreateScheduleRequest {
        let spec = if index.is_multiple_of(2) {
            every(1_000)
        } else {
            cron("* * * * * *", "UTC")
        };
        let mut req = create(
            &self.id,
            spec,
            call_api("POST", &format!("{sink_base}/s/{}", self.id)),
        );
        let s = req.schedule.as_mut().expect("schedule");
        let (overlap, misfire) = match self.mix {
            Mix::SkipRunOnce => (pb::OverlapPolicy::Skip, pb::Misfire::RunOnce),
            Mix::AllowAllRunAll => (pb::OverlapPolicy::AllowAll, pb::Misfire::RunAll),
            Mix::SkipMisfireSkip => (pb::OverlapPolicy::Skip, pb::Misfire::Skip),
        };
        s.overlap_policy = overlap as i32;
        s.catchup = Some(pb::CatchupPolicy {
            window: Some(ms_to_duration(60_000)),
            misfire: misfire as i32,
            max_catchup: MAX_CATCHUP,
        });
        req
    }
}

/// Which process an outage killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Scheduler,
    Executor,
}

/// One SIGKILL and restart, in wall-clock milliseconds.
#[derive(Debug, Clone)]
pub struct Outage {
    pub service: Service,
    /// Just before SIGKILL was sent.
    pub kill_ms: i64,
    /// After the killed process was reaped: nothing of it runs any more.
    pub dead_ms: i64,
    /// Just before the new process was spawned.
    pub spawn_ms: i64,
    /// When the new process had printed its address.
    pub ready_ms: i64,
}

/// One request the sink recorded.
#[derive(Debug, Clone, Deserialize)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    pub schedule_id: Option<String>,
    pub run_id: Option<String>,
    pub nominal_time: Option<String>,
    pub key: Option<String>,
    pub received_ms: i64,
}

impl Delivery {
    /// The nominal time header in milliseconds, when present and well formed.
    pub fn nominal_ms(&self) -> Option<i64> {
        let text = self.nominal_time.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis())
    }
}

/// Reads the sink's record file; a line that is not a delivery is an error of the test.
pub fn read_deliveries(path: &Path) -> Vec<Delivery> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("sink line {l:?}: {e}")))
        .collect()
}

/// The Python interpreter the sink runs on, or `None` when there is none (the caller
/// skips, unless ALMANAC_REQUIRE_TOOLS=1).
pub fn python() -> Option<String> {
    let python = std::env::var("ALMANAC_PYTHON").unwrap_or_else(|_| "python3".into());
    let present = Command::new(&python)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    present.then_some(python)
}

/// `tests/clients/sink.py` as a process of its own; killed when dropped.
pub struct SinkProc {
    child: Child,
    pub port: u16,
}

impl SinkProc {
    /// Starts the sink recording into `record`; waits (at most 20 s) for its port.
    pub fn start(python: &str, record: &Path) -> SinkProc {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/sink.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(record)
            // The sink exits when its stdin closes: it cannot outlive the test.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {script}: {e}"));
        let stdout = child.stdout.take().expect("sink stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let mut sink = SinkProc { child, port: 0 };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the sink prints its port within 20 s");
        sink.port = line
            .trim()
            .parse()
            .expect("the sink's first line is its port");
        sink
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SinkProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every run of every schedule (all pages).
pub async fn fetch_ledger(
    client: &mut Client,
    schedules: &[ChaosSchedule],
) -> HashMap<String, Vec<pb::Run>> {
    let mut ledger = HashMap::new();
    for s in schedules {
        ledger.insert(s.id.clone(), all_runs(client, &s.id).await);
    }
    ledger
}

/// Whether a run may still change: PENDING, BUFFERED or RUNNING.
pub fn in_flight(run: &pb::Run) -> bool {
    matches!(
        status_of(run),
        pb::RunStatus::Pending | pb::RunStatus::Buffered | pb::RunStatus::Running
    )
}

/// Percentile (0–100) of sorted values, nearest rank.
pub fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
