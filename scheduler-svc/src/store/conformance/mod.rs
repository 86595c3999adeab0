//! The store's conformance suite: one set of tests, each run against SQLite (a file in a
//! tempdir) and PostgreSQL (a fresh database on the cluster named by
//! `ALMANAC_TEST_POSTGRES_URL`; skipped when it is unset). `conformance!(a, b)` expands
//! test functions `a(store)`, `b(store)` into `on_sqlite::a`, `on_postgres::a`, ….

mod leases;
mod ledger;
mod outcomes;
mod schedules;

use std::sync::Arc;

use almanac_proto::executor::v1::Action;

use super::{ClaimLease, PostgresStore, SchedulerStore, SqliteStore};
use crate::engine::overlap::InFlight;
use crate::engine::policy::{FirePlan, NewRun};
use crate::model::{Policy, RunStatus, Schedule, ScheduleState, Trigger};
use crate::spec::Spec;

/// The store under test.
pub type Store = Arc<dyn SchedulerStore>;

/// A time with milliseconds, so a backend that rounds to seconds would show.
pub const T0: i64 = 1_700_000_000_123;
/// A minute, the fixture schedules' interval.
pub const MINUTE: i64 = 60_000;

/// A store on a fresh SQLite file; the tempdir lives as long as the test.
pub async fn sqlite_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("scheduler.db"), false)
        .await
        .expect("open sqlite store");
    (dir, Arc::new(store))
}

/// A store on a fresh PostgreSQL database, or `None` when no cluster is configured.
pub async fn postgres_store() -> Option<Store> {
    let url = almanac_testkit::fresh_postgres_database().await?;
    let store = PostgresStore::connect(&url)
        .await
        .expect("connect postgres store");
    Some(Arc::new(store))
}

/// Expands each listed `async fn name(store: Store)` into a test per backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, store) = $crate::store::conformance::sqlite_store().await;
                    super::$name(store).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = $crate::store::conformance::postgres_store().await else {
                        return;
                    };
                    super::$name(store).await;
                }
            )*
        }
    };
}
pub(crate) use conformance;

/// An ACTIVE schedule firing every minute, next at `next_fire_ms`.
pub fn schedule(id: &str, next_fire_ms: Option<i64>) -> Schedule {
    Schedule {
        id: id.to_owned(),
        display_name: format!("schedule {id}"),
        description: String::new(),
        spec: Spec::Interval {
            every_ms: MINUTE,
            offset_ms: 0,
        },
        action: Action::default(),
        policy: Policy::default(),
        state: ScheduleState::Active,
        pause: None,
        next_fire_ms,
        run_count: 0,
        version: 1,
        request_id: None,
        completion_reason: None,
        created_ms: T0,
        updated_ms: T0,
        consecutive_failures: 0,
        buffer_overruns: 0,
    }
}

/// Inserts `schedule(id, next)` and returns it.
pub async fn create(store: &Store, id: &str, next_fire_ms: Option<i64>) -> Schedule {
    let s = schedule(id, next_fire_ms);
    store.insert_schedule(&s).await.expect("insert schedule");
    s
}

/// A PENDING run of `trigger` at `nominal_ms`, due then.
pub fn pending(nominal_ms: i64, trigger: Trigger) -> NewRun {
    let mut run = NewRun::new(nominal_ms, trigger, RunStatus::Pending);
    run.dispatch_after_ms = Some(nominal_ms);
    run
}

/// The planner of the tests' claims: one PENDING SCHEDULED run at the schedule's next
/// fire, and the next fire a minute later.
pub fn fire_next(s: &Schedule, _in_flight: &InFlight) -> Result<FirePlan, String> {
    let next = s.next_fire_ms.ok_or("no next fire")?;
    Ok(FirePlan {
        runs: vec![pending(next, Trigger::Scheduled)],
        next_fire_ms: Some(next + MINUTE),
        counted: 1,
        ..FirePlan::default()
    })
}

/// Claims `id` at `now_ms` with `fire_next`; the runs written PENDING.
pub async fn claim(store: &Store, id: &str, now_ms: i64) -> Vec<String> {
    let claimed = store
        .claim_due(
            &[id.to_owned()],
            now_ms,
            Some(claim_lease(now_ms)),
            &fire_next,
        )
        .await
        .expect("claim");
    claimed
        .into_iter()
        .flat_map(|c| c.dispatch)
        .map(|job| job.run_id)
        .collect()
}

/// The replica whose claims the suites make.
pub const CLAIMER: &str = "claimer";

/// How long a claim's lease lasts in the suites.
pub const CLAIM_TTL_MS: i64 = 30_000;

/// The lease a claim of the suites made at `now_ms` takes.
pub fn claim_lease(now_ms: i64) -> ClaimLease<'static> {
    ClaimLease {
        owner: CLAIMER,
        until_ms: now_ms + CLAIM_TTL_MS,
    }
}

/// A manual run, due at `now_ms`, of a new schedule `id` with no next fire: unowned, as
/// every run not written by a claim.
pub async fn manual_run(store: &Store, id: &str, now_ms: i64) -> String {
    create(store, id, None).await;
    let (run, _) = store
        .trigger(id, None, now_ms, &|_: &Schedule, _: &InFlight| {
            (pending(now_ms, Trigger::Manual), Vec::new(), false)
        })
        .await
        .expect("trigger");
    run.id
}

/// Claims one fire of a new schedule `id` at `nominal_ms`; its run id.
pub async fn one_run(store: &Store, id: &str, nominal_ms: i64) -> String {
    create(store, id, Some(nominal_ms)).await;
    let mut runs = claim(store, id, nominal_ms).await;
    assert_eq!(runs.len(), 1, "one run claimed");
    runs.remove(0)
}
