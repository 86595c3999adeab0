//! The chaos test (issue 5): the executor, the scheduler and an HTTP sink run as separate
//! processes; a few hundred schedules fire every second under mixed overlap and catch-up
//! policies while the test SIGKILLs the scheduler or the executor at random moments. The
//! final ledger and the sink's record then prove that no fire was lost, none ran twice,
//! and every fire hit by an outage was handled by its schedule's policy.
//!
//! Knobs: `ALMANAC_CHAOS_ITERATIONS` (kills, default 3; CI runs 20), `ALMANAC_CHAOS_SEED`
//! (replays a run; printed first), `ALMANAC_CHAOS_SCHEDULES` (default 200).

mod chaos_support;
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos_support::checks::{Grace, World};
use chaos_support::figures::Setting;
use chaos_support::harness::{create_schedules, env_number, pause_and_drain, verdict};
use chaos_support::{Outage, Service, SinkProc, now_ms, python, read_deliveries};
use common::procs::{Proc, snapshot_binary};
use common::{scheduler_client, tool_available};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const DEFAULT_ITERATIONS: usize = 3;
const DEFAULT_SCHEDULES: usize = 200;

/// How far an outage's effects may reach; every fire outside `[kill - before, up + after]`
/// of every outage must be a SCHEDULED run that SUCCEEDED.
const GRACE: Grace = Grace {
    // A fire due up to one period before the kill may still be unclaimed (the timer
    // claims a batch of 200 schedules at a time) or in flight: a SKIP schedule's catch-up
    // run may then be skipped behind it. Observed lateness is printed: its p99 must stay
    // well below this.
    before_kill_ms: 1_000,
    // A restarted scheduler claims every missed fire of every schedule in its first
    // batch, and re-dispatches everything the killed one left in flight (one recovery
    // sweep); SKIP schedules skip on-time fires while their catch-up run is in flight.
    after_scheduler_ms: 3_000,
    // A send that failed while the executor was down is retried with a backoff capped at
    // 5 s (scheduler-svc dispatch.rs MAX_BACKOFF), then the queued attempts drain; SKIP
    // schedules skip fires while their attempt waits.
    after_executor_ms: 7_000,
    // The finish of an execution is in the ledger within this of its finish time
    // (ledger_writer group commit), unless the scheduler was killed meanwhile.
    ledger_lag_ms: 1_000,
};

/// Calm before the first kill and after the last restart: longer than any grace, so every
/// schedule has fires outside every interval at both ends.
const WARM_UP: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(9);
/// The bound on the wait for in-flight runs to end after every schedule is paused.
const DRAIN: Duration = Duration::from_secs(120);

/// The two services as processes; each killed when dropped.
struct Services {
    bin: PathBuf,
    executor: Option<Proc>,
    scheduler: Option<Proc>,
    executor_port: u16,
    executor_url: String,
}

impl Services {
    fn start(bin: PathBuf, dir: &Path) -> Services {
        let executor = Proc::executor_of(&bin, dir, "127.0.0.1:0");
        let executor_url = executor.url.clone();
        let executor_port = executor.port();
        let scheduler = Proc::scheduler_of(&bin, dir, &executor_url);
        Services {
            bin,
            executor: Some(executor),
            scheduler: Some(scheduler),
            executor_port,
            executor_url,
        }
    }

    fn scheduler_url(&self) -> String {
        self.scheduler.as_ref().expect("scheduler up").url.clone()
    }

    /// SIGKILL `service`, keep it down `down`, restart it (the executor on its port,
    /// since the scheduler points there; the scheduler on any port).
    async fn kill_and_restart(&mut self, dir: &Path, service: Service, down: Duration) -> Outage {
        let slot = match service {
            Service::Scheduler => &mut self.scheduler,
            Service::Executor => &mut self.executor,
        };
        let victim = slot.take().expect("the service is up");
        let kill_ms = now_ms();
        victim.kill9();
        let dead_ms = now_ms();
        tokio::time::sleep(down).await;
        let spawn_ms = now_ms();
        *slot = Some(match service {
            Service::Scheduler => Proc::scheduler_of(&self.bin, dir, &self.executor_url),
            Service::Executor => {
                Proc::executor_of(&self.bin, dir, &format!("127.0.0.1:{}", self.executor_port))
            }
        });
        Outage {
            service,
            kill_ms,
            dead_ms,
            spawn_ms,
            ready_ms: now_ms(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_of_scheduler_and_executor_lose_no_fire_and_run_none_twice() {
    let seed = env_number("ALMANAC_CHAOS_SEED").unwrap_or_else(rand::random::<u64>);
    println!("chaos seed {seed} (replay with ALMANAC_CHAOS_SEED={seed})");
    let Some(python) = python() else {
        tool_available(
            "python3 (the chaos test's HTTP sink)",
            false,
            "install python3",
        );
        return;
    };
    let iterations: usize = env_number("ALMANAC_CHAOS_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS);
    let count: usize = env_number("ALMANAC_CHAOS_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    let started = Instant::now();
    // Logs, databases and the sink's record stay for a post-mortem unless the test passes.
    let mut dir = tempfile::tempdir().expect("tempdir");
    dir.disable_cleanup(true);
    println!(
        "chaos dir {} (kept if the test fails)",
        dir.path().display()
    );
    let bin_dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("deliveries.jsonl");
    let sink = SinkProc::start(&python, &record);
    let mut services = Services::start(snapshot_binary(bin_dir.path()), dir.path());
    let mut client = scheduler_client(&services.scheduler_url()).await;

    let schedules = create_schedules(&mut client, count, &sink.base_url()).await;
    tokio::time::sleep(WARM_UP).await;

    let mut rng = StdRng::seed_from_u64(seed);
    let mut outages = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let run = Duration::from_millis(rng.random_range(1_000..=4_000));
        let service = if rng.random::<bool>() {
            Service::Scheduler
        } else {
            Service::Executor
        };
        let down = Duration::from_millis(rng.random_range(0..=3_000));
        tokio::time::sleep(run).await;
        let outage = services.kill_and_restart(dir.path(), service, down).await;
        println!(
            "iteration {}: ran {} ms, killed the {service:?}, down {} ms, up again after {} ms",
            i + 1,
            run.as_millis(),
            down.as_millis(),
            outage.ready_ms - outage.kill_ms
        );
        outages.push(outage);
    }
    tokio::time::sleep(SETTLE).await;

    client = scheduler_client(&services.scheduler_url()).await;
    let ledger = pause_and_drain(&mut client, &schedules, DRAIN).await;
    let scheduler_exit = services.scheduler.take().expect("up").terminate();
    let executor_exit = services.executor.take().expect("up").terminate();
    // Nothing sends once the executor has stopped: the record is complete.
    drop(sink);
    let deliveries = read_deliveries(&record);

    let world = World {
        schedules: &schedules,
        ledger: &ledger,
        deliveries: &deliveries,
        outages: &outages,
        grace: GRACE,
        replicated: false,
    };
    let setting = Setting {
        seed,
        iterations,
        schedules: &schedules,
        outages: &outages,
        grace: GRACE,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let exits = [
        ("scheduler".to_owned(), scheduler_exit),
        ("executor".to_owned(), executor_exit),
    ];
    verdict(&world, &setting, &exits, &mut dir);
}
