//! Owner leases on runs in flight (DESIGN §4.5): who may take a run, renewal, the runs a
//! replica may drive, fencing of a driver that lost its run, and the database clock. On
//! SQLite (one scheduler per file) every lease is the caller's; on PostgreSQL another
//! replica's live lease is respected.

use super::{CLAIM_TTL_MS, CLAIMER, Store, T0, claim_lease, create, fire_next, manual_run};
use crate::model::{AttemptOutcome, RunStatus};
use crate::store::LedgerUpdate;

super::conformance!(
    a_claim_leases_the_runs_it_writes_to_the_claimer,
    a_lease_is_taken_renewed_and_adopted_after_it_expires,
    a_batch_of_leases_takes_those_it_may_with_their_jobs,
    a_driver_that_lost_its_run_writes_nothing,
    drivable_runs_are_own_unowned_or_expired,
    the_database_clock_is_close_to_the_system_clock,
    due_before_lists_active_schedules_due_by_then,
);

const TTL: i64 = 10_000;

/// Whether the store serves several schedulers on one database (PostgreSQL).
fn shared(store: &Store) -> bool {
    store.claim_parallelism() > 1
}

async fn a_claim_leases_the_runs_it_writes_to_the_claimer(store: Store) {
    create(&store, "claimed", Some(T0)).await;
    let claimed = store
        .claim_due(
            &["claimed".to_owned()],
            T0,
            Some(claim_lease(T0)),
            &fire_next,
        )
        .await
        .unwrap();
    let job = claimed[0].dispatch[0].clone();
    assert_eq!(job.lease_epoch, 1, "the claim's lease is the run's first");
    assert_eq!(
        store.dispatch_job(&job.run_id).await.unwrap(),
        Some(job.clone()),
        "the claim hands over the run as the ledger holds it"
    );
    let until = T0 + CLAIM_TTL_MS;
    let own = store
        .drivable_runs(CLAIMER, T0 + 1, T0 - TTL, 10)
        .await
        .unwrap();
    assert_eq!(
        own,
        std::slice::from_ref(&job.run_id),
        "the claimer's sweep finds it (should its dispatcher be full)"
    );
    let others = store
        .drivable_runs("b", T0 + 1, T0 - TTL, 10)
        .await
        .unwrap();
    let taken = store.take_lease(&job.run_id, "b", T0 + 1, T0 + TTL).await;
    if shared(&store) {
        assert!(others.is_empty(), "another replica leaves it alone");
        assert_eq!(taken.unwrap(), None, "another replica cannot take it");
        let adopted = store
            .take_lease(&job.run_id, "b", until + 1, until + TTL)
            .await;
        assert_eq!(adopted.unwrap(), Some(2), "adopted once the lease expired");
    } else {
        assert_eq!(others, own);
        assert_eq!(taken.unwrap(), Some(2), "one scheduler per SQLite file");
    }
    create(&store, "unleased", Some(T0)).await;
    let claimed = store
        .claim_due(&["unleased".to_owned()], T0, None, &fire_next)
        .await
        .unwrap();
    let job = &claimed[0].dispatch[0];
    assert_eq!(
        job.lease_epoch, 0,
        "without a lease the claim leaves it unowned"
    );
    let taken = store.take_lease(&job.run_id, "b", T0 + 1, T0 + TTL).await;
    assert_eq!(taken.unwrap(), Some(1), "an unowned run is free to take");
}

async fn a_lease_is_taken_renewed_and_adopted_after_it_expires(store: Store) {
    let run = manual_run(&store, "leased", T0).await;
    let first = store.take_lease(&run, "a", T0, T0 + TTL).await.unwrap();
    assert_eq!(first, Some(1), "an unowned run is free to take");
    let again = store.take_lease(&run, "a", T0 + 1, T0 + 1 + TTL).await;
    assert_eq!(
        again.unwrap(),
        Some(2),
        "the owner takes it again, a new epoch"
    );
    // The lease ran out at T0 + 1 + TTL; its owner's heartbeat holds it past that.
    store.renew_leases("a", T0 + 3 * TTL).await.unwrap();
    // A renewal also records the replica alive; SQLite serves one scheduler.
    let peers_of_b = store.live_peers("b", T0 + 2 * TTL).await.unwrap();
    assert_eq!(peers_of_b, u64::from(shared(&store)));
    assert_eq!(store.live_peers("a", T0 + 2 * TTL).await.unwrap(), 0);
    assert_eq!(store.live_peers("b", T0 + 3 * TTL + 1).await.unwrap(), 0);
    // Past the first lease but inside the renewed one.
    let stolen = store
        .take_lease(&run, "b", T0 + 2 * TTL, T0 + 3 * TTL)
        .await
        .unwrap();
    if shared(&store) {
        assert_eq!(stolen, None, "a live lease of another replica is respected");
        let adopted = store
            .take_lease(&run, "b", T0 + 3 * TTL + 1, T0 + 4 * TTL)
            .await
            .unwrap();
        assert_eq!(adopted, Some(3), "an expired lease is adopted");
        // The old owner's heartbeat comes back: the run stays its adopter's.
        store.renew_leases("a", T0 + 9 * TTL).await.unwrap();
        let taken = store
            .take_lease(&run, "a", T0 + 3 * TTL + 2, T0 + 4 * TTL)
            .await;
        assert_eq!(taken.unwrap(), None, "not the old owner's any more");
    } else {
        assert_eq!(
            stolen,
            Some(3),
            "one scheduler per SQLite file: every lease is its own"
        );
    }
    let job = store.dispatch_job(&run).await.unwrap().unwrap();
    assert_eq!(job.lease_epoch, 3);
    // A graceful stop releases the lease: another replica takes the run at once.
    assert_eq!(store.release_leases("b").await.unwrap(), 1);
    let taken = store
        .take_lease(&run, "c", T0 + 3 * TTL + 2, T0 + 4 * TTL)
        .await;
    assert_eq!(taken.unwrap(), Some(4));
    let job = store.dispatch_job(&run).await.unwrap().unwrap();
    assert_eq!(job.lease_epoch, 4);
    // A final run has no lease to take.
    let done = LedgerUpdate::Finished {
        run_id: run.clone(),
        fence: Some(4),
        attempt: 1,
        outcome: outcome(RunStatus::Succeeded, T0 + 5 * TTL),
        started: None,
    };
    store.apply_updates(&[done], T0 + 5 * TTL).await.unwrap();
    assert_eq!(
        store
            .take_lease(&run, "b", T0 + 9 * TTL, T0 + 10 * TTL)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.take_lease("ghost", "b", T0, T0 + TTL).await.unwrap(),
        None
    );
}

async fn a_batch_of_leases_takes_those_it_may_with_their_jobs(store: Store) {
    let free = manual_run(&store, "free", T0).await;
    let mine = manual_run(&store, "mine", T0).await;
    let held = manual_run(&store, "held", T0).await;
    let done = manual_run(&store, "done", T0).await;
    for (run, owner) in [(&mine, "a"), (&held, "b"), (&done, "a")] {
        let taken = store.take_lease(run, owner, T0, T0 + TTL).await.unwrap();
        assert_eq!(taken, Some(1));
    }
    let finished = LedgerUpdate::Finished {
        run_id: done.clone(),
        fence: Some(1),
        attempt: 1,
        outcome: outcome(RunStatus::Succeeded, T0 + 1),
        started: None,
    };
    store.apply_updates(&[finished], T0 + 1).await.unwrap();
    let asked = [
        free.clone(),
        mine.clone(),
        held.clone(),
        done.clone(),
        "ghost".to_owned(),
    ];
    let leased = store
        .lease_jobs(&asked, "a", T0 + 2, T0 + 2 + TTL)
        .await
        .unwrap();
    let ids: Vec<&str> = leased.iter().map(|(id, _)| id.as_str()).collect();
    if shared(&store) {
        assert_eq!(
            ids,
            [free.as_str(), mine.as_str()],
            "unowned and own runs, in the order asked; another's live lease, a final run \
             and a missing one are left out"
        );
    } else {
        assert_eq!(
            ids,
            [free.as_str(), mine.as_str(), held.as_str()],
            "one scheduler per SQLite file: every run in flight is its own"
        );
    }
    for (run_id, job) in &leased {
        let job = job.clone().expect("a readable row comes with its job");
        assert_eq!(
            Some(job.clone()),
            store.dispatch_job(run_id).await.unwrap(),
            "the job is the run as the ledger holds it after the lease"
        );
        let expected = if run_id == &free { 1 } else { 2 };
        assert_eq!(job.lease_epoch, expected, "{run_id}: a new epoch");
    }
    // Each lease is the caller's: a fence with its epoch applies.
    let (run_id, job) = &leased[1];
    let job = job.clone().unwrap();
    let started = LedgerUpdate::Started {
        run_id: run_id.clone(),
        fence: Some(job.lease_epoch),
        attempt: job.attempt,
        execution_id: "e".into(),
        started_ms: T0 + 3,
        last_seq: 1,
    };
    store.apply_updates(&[started], T0 + 3).await.unwrap();
    let stored = store.get_run(run_id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Running);
    // Nothing asked, nothing taken.
    assert!(
        store
            .lease_jobs(&[], "a", T0 + 4, T0 + TTL)
            .await
            .unwrap()
            .is_empty()
    );
}

fn outcome(status: RunStatus, at_ms: i64) -> AttemptOutcome {
    AttemptOutcome {
        status,
        error: None,
        result: None,
        retryable: false,
        finished_ms: at_ms,
        last_seq: 2,
    }
}

async fn a_driver_that_lost_its_run_writes_nothing(store: Store) {
    let run = manual_run(&store, "fenced", T0).await;
    let old = store
        .take_lease(&run, "a", T0, T0 + TTL)
        .await
        .unwrap()
        .unwrap();
    let new = store
        .take_lease(&run, "b", T0 + TTL + 1, T0 + 2 * TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(new > old);
    let started = |fence, execution_id: &str| LedgerUpdate::Started {
        run_id: run.clone(),
        fence: Some(fence),
        attempt: 1,
        execution_id: execution_id.into(),
        started_ms: T0 + TTL + 5,
        last_seq: 1,
    };
    store
        .apply_updates(&[started(old, "zombie")], T0 + TTL + 5)
        .await
        .unwrap();
    let stored = store.get_run(&run).await.unwrap().unwrap();
    assert_eq!(
        stored.status,
        RunStatus::Pending,
        "the old driver's start is fenced off"
    );
    assert_eq!(stored.attempts[0].execution_id, None);
    store
        .apply_updates(&[started(new, "adopter")], T0 + TTL + 6)
        .await
        .unwrap();
    let finished = |fence, status| LedgerUpdate::Finished {
        run_id: run.clone(),
        fence: Some(fence),
        attempt: 1,
        outcome: outcome(status, T0 + TTL + 9),
        started: None,
    };
    // The zombie's failure arrives first and is dropped; the adopter's success lands.
    store
        .apply_updates(
            &[
                finished(old, RunStatus::Failed),
                finished(new, RunStatus::Succeeded),
            ],
            T0 + TTL + 9,
        )
        .await
        .unwrap();
    let stored = store.get_run(&run).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Succeeded);
    assert_eq!(stored.attempts[0].execution_id.as_deref(), Some("adopter"));
    assert_eq!(
        stored.attempts.len(),
        1,
        "no retry came of the fenced failure"
    );
}

async fn drivable_runs_are_own_unowned_or_expired(store: Store) {
    let own = manual_run(&store, "d-own", T0).await;
    let others = manual_run(&store, "d-other", T0 + 1).await;
    let expired = manual_run(&store, "d-expired", T0 + 2).await;
    let fresh = manual_run(&store, "d-fresh", T0 + 50_000).await;
    let old_unowned = manual_run(&store, "d-unowned", T0 + 3).await;
    let now = T0 + 60_000;
    store.take_lease(&own, "me", now, now + TTL).await.unwrap();
    store
        .take_lease(&others, "b", now, now + TTL)
        .await
        .unwrap();
    store.take_lease(&expired, "b", T0, T0 + TTL).await.unwrap();
    // `fresh` was written 10 s ago, within its writer's time to take it — if a writer
    // other than "me" is alive.
    let alone = store
        .drivable_runs("me", now, now - 30_000, 100)
        .await
        .unwrap();
    // Another replica alive (one that holds no lease here).
    store.renew_leases("c", now + TTL).await.unwrap();
    let drivable = store
        .drivable_runs("me", now, now - 30_000, 100)
        .await
        .unwrap();
    if shared(&store) {
        assert_eq!(
            alone,
            [
                own.clone(),
                expired.clone(),
                old_unowned.clone(),
                fresh.clone()
            ]
        );
        assert_eq!(drivable, [own, expired, old_unowned]);
    } else {
        assert_eq!(drivable, [own, others, expired, old_unowned, fresh]);
    }
}

async fn the_database_clock_is_close_to_the_system_clock(store: Store) {
    let database = store.database_time_ms().await.unwrap();
    if shared(&store) {
        let system = chrono::Utc::now().timestamp_millis();
        let database = database.expect("PostgreSQL has a clock");
        assert!((database - system).abs() < 60_000, "{database} vs {system}");
    } else {
        assert_eq!(
            database, None,
            "SQLite's one process keeps the system clock"
        );
    }
}

async fn due_before_lists_active_schedules_due_by_then(store: Store) {
    create(&store, "soon", Some(T0 + 500)).await;
    create(&store, "later", Some(T0 + 5_000)).await;
    create(&store, "idle", None).await;
    store
        .modify_schedule("later", &|s| {
            s.next_fire_ms = Some(T0 + 900);
            Ok(())
        })
        .await
        .unwrap();
    let mut paused = super::schedule("paused", Some(T0));
    paused.state = crate::model::ScheduleState::Paused;
    store.insert_schedule(&paused).await.unwrap();
    assert_eq!(
        store.due_before(T0 + 1_000).await.unwrap(),
        [
            ("soon".to_owned(), T0 + 500),
            ("later".to_owned(), T0 + 900)
        ]
    );
}

/// PostgreSQL only (SQLite's claims queue behind its one writer instead): a due schedule
/// whose row another session holds is left for a moment, not claimed at once again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_a_schedule_locked_elsewhere_looks_again_shortly() {
    use sqlx::Connection;
    let Some(url) = almanac_testkit::fresh_postgres_database().await else {
        return;
    };
    let store: Store = std::sync::Arc::new(
        crate::store::PostgresStore::connect(&url)
            .await
            .expect("connect"),
    );
    create(&store, "held", Some(T0)).await;
    let mut other = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut holder = other.begin().await.expect("begin");
    sqlx::query("SELECT id FROM scheduler.schedules WHERE id = 'held' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock the schedule");
    let claimed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.claim_due(
            &["held".to_owned()],
            T0 + 10,
            Some(claim_lease(T0 + 10)),
            &fire_next,
        ),
    )
    .await
    .expect("a claim never waits on a locked schedule")
    .unwrap();
    assert!(
        claimed[0].dispatch.is_empty(),
        "nothing claimed under another's lock"
    );
    assert_eq!(
        claimed[0].next_fire_ms,
        Some(T0 + 10 + crate::store::sql::ledger::BUSY_RETRY_MS),
        "claimed again shortly, not at once"
    );
    holder.rollback().await.expect("release");
    assert_eq!(claimed.len(), 1);
    let claimed = store
        .claim_due(
            &["held".to_owned()],
            T0 + 50,
            Some(claim_lease(T0 + 50)),
            &fire_next,
        )
        .await
        .unwrap();
    assert_eq!(
        claimed[0].dispatch.len(),
        1,
        "claimed once the lock is gone"
    );
}
