//! The steps both chaos tests (one scheduler and one executor; three schedulers and two
//! executors) share: their knobs, creating the schedules, pausing and draining at the
//! end, and the verdict with its printed figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use almanac_proto::scheduler::v1 as pb;

use super::checks::{World, judge};
use super::figures::{Setting, render};
use super::{ChaosSchedule, Client, fetch_ledger, in_flight};

/// A number from the environment, if set; a set value that is not a number is a test error.
pub fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
    )
}

/// `count` chaos schedules POSTing to the sink at `sink_base`, created through `client`.
pub async fn create_schedules(
    client: &mut Client,
    count: usize,
    sink_base: &str,
) -> Vec<ChaosSchedule> {
    let started = Instant::now();
    let schedules: Vec<ChaosSchedule> = (0..count).map(ChaosSchedule::new).collect();
    for (i, s) in schedules.iter().enumerate() {
        client
            .create_schedule(s.request(i, sink_base))
            .await
            .unwrap_or_else(|e| panic!("create {}: {e}", s.id));
    }
    println!(
        "{count} schedules created in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    schedules
}

/// Pauses every schedule, then reads the ledger until nothing is in flight (at most
/// `drain`); the ledger as last read.
pub async fn pause_and_drain(
    client: &mut Client,
    schedules: &[ChaosSchedule],
    drain: Duration,
) -> HashMap<String, Vec<pb::Run>> {
    for s in schedules {
        client
            .pause_schedule(pb::PauseScheduleRequest {
                schedule_id: s.id.clone(),
                note: "chaos over".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pause {}: {e}", s.id));
    }
    let drain_from = Instant::now();
    let ledger = loop {
        let ledger = fetch_ledger(client, schedules).await;
        let left = ledger.values().flatten().filter(|r| in_flight(r)).count();
        if left == 0 || drain_from.elapsed() > drain {
            break ledger;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "paused; in-flight runs drained in {:.1} s",
        drain_from.elapsed().as_secs_f64()
    );
    ledger
}

/// Judges `world`, adds a violation for every process that did not exit 0 on SIGTERM,
/// prints the figures, and fails with the seed and where the evidence is kept (`dir`,
/// removed when the test passes).
pub fn verdict(
    world: &World<'_>,
    setting: &Setting<'_>,
    exits: &[(String, Option<i32>)],
    dir: &mut tempfile::TempDir,
) {
    let (mut violations, mut tally) = judge(world);
    for (name, exit) in exits {
        if *exit != Some(0) {
            violations.push(format!(
                "the {name} did not exit 0 within 30 s of SIGTERM: exit {exit:?}"
            ));
        }
    }
    println!("{}", render(setting, &mut tally));
    if !violations.is_empty() {
        for v in violations.iter().take(80) {
            println!("VIOLATION {v}");
        }
        panic!(
            "{} violation(s) with seed {} (first: {}); logs, databases and the sink record kept in {}",
            violations.len(),
            setting.seed,
            violations[0],
            dir.path().display()
        );
    }
    dir.disable_cleanup(false);
}
