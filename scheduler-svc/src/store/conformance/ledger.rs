//! Conformance: the ledger — claims, the one-row-per-fire constraint, manual runs,
//! pagination of runs, the executor's updates, and claims racing each other.

use std::sync::Arc;

use super::{
    MINUTE, Store, T0, claim, claim_lease, conformance, create, fire_next, one_run, pending,
};
use crate::engine::overlap::InFlight;
use crate::model::{AttemptOutcome, RunStatus, Schedule, ScheduleState, Trigger, execution_key};
use crate::store::{AttemptStart, Effect, LedgerUpdate, RunCursor, StoreError};

conformance!(
    a_claim_writes_the_run_its_attempt_and_the_next_fire,
    a_claim_leaves_schedules_not_due_paused_or_missing,
    a_fire_that_has_a_row_is_not_written_again,
    a_planner_error_pauses_the_schedule,
    concurrent_claims_write_each_fire_once,
    a_manual_run_with_a_seen_request_id_is_returned_again,
    concurrent_manual_runs_with_one_request_id_make_one_run,
    runs_page_newest_first_with_a_cursor_and_a_status_filter,
    updates_move_a_run_to_running_and_to_its_end,
    a_finish_that_carries_its_start_writes_both,
    a_retryable_failure_adds_an_attempt,
    in_flight_runs_and_an_unreadable_run_ending_failed,
);

async fn a_claim_writes_the_run_its_attempt_and_the_next_fire(store: Store) {
    create(&store, "claimed", Some(T0)).await;
    let claimed = store
        .claim_due(
            &["claimed".to_owned()],
            T0 + 5,
            Some(claim_lease(T0 + 5)),
            &fire_next,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].next_fire_ms, Some(T0 + MINUTE));
    let run_id = claimed[0].dispatch[0].run_id.clone();
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.nominal_ms, run.trigger, run.status, run.attempt),
        (T0, Trigger::Scheduled, RunStatus::Pending, 1)
    );
    assert_eq!(run.dispatch_after_ms, Some(T0));
    assert_eq!(run.attempts.len(), 1);
    assert_eq!(run.attempts[0].execution_key, execution_key(&run_id, 1));
    let job = store.dispatch_job(&run_id).await.unwrap().unwrap();
    assert_eq!((job.attempt, job.nominal_ms), (1, T0));
    assert_eq!(job.execution_key, execution_key(&run_id, 1));
    let s = store.get_schedule("claimed").await.unwrap().unwrap();
    assert_eq!((s.next_fire_ms, s.run_count), (Some(T0 + MINUTE), 1));
}

async fn a_claim_leaves_schedules_not_due_paused_or_missing(store: Store) {
    create(&store, "later", Some(T0 + MINUTE)).await;
    let mut paused = super::schedule("paused", Some(T0));
    paused.state = ScheduleState::Paused;
    store.insert_schedule(&paused).await.unwrap();
    let ids = ["later", "paused", "missing"].map(String::from);
    let claimed = store
        .claim_due(&ids, T0, Some(claim_lease(T0)), &fire_next)
        .await
        .unwrap();
    let next: Vec<_> = claimed.iter().map(|c| c.next_fire_ms).collect();
    assert_eq!(next, [Some(T0 + MINUTE), None, None]);
    assert!(claimed.iter().all(|c| c.dispatch.is_empty()));
    assert!(
        store
            .list_runs("later", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_fire_that_has_a_row_is_not_written_again(store: Store) {
    let first = one_run(&store, "dedup", T0).await;
    // Move the schedule back so the planner plans the same nominal time again.
    store
        .modify_schedule("dedup", &|s| {
            s.next_fire_ms = Some(T0);
            Ok(())
        })
        .await
        .unwrap();
    assert!(claim(&store, "dedup", T0 + MINUTE).await.is_empty());
    let runs = store.list_runs("dedup", None, None, 10).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        [first]
    );
    // A manual run at the same instant is not a fire: it has its own row.
    let (manual, _) = store
        .trigger("dedup", None, T0, &|_: &Schedule, _: &InFlight| {
            (pending(T0, Trigger::Manual), Vec::new(), false)
        })
        .await
        .unwrap();
    assert_eq!((manual.nominal_ms, manual.trigger), (T0, Trigger::Manual));
}

async fn a_planner_error_pauses_the_schedule(store: Store) {
    create(&store, "broken", Some(T0)).await;
    let claimed = store
        .claim_due(
            &["broken".to_owned()],
            T0,
            Some(claim_lease(T0)),
            &|_, _| Err("bad spec".to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(claimed[0].next_fire_ms, None);
    let s = store.get_schedule("broken").await.unwrap().unwrap();
    assert_eq!(s.state, ScheduleState::Paused);
    assert!(s.pause.unwrap().note.contains("bad spec"));
}

async fn concurrent_claims_write_each_fire_once(store: Store) {
    let ids: Vec<String> = (0..8).map(|i| format!("race-{i}")).collect();
    for id in &ids {
        create(&store, id, Some(T0)).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (store, ids) = (Arc::clone(&store), ids.clone());
        tasks.spawn(async move {
            // Each racer keeps claiming until no schedule it asks about is due any more
            // (a schedule another transaction holds is left for the next round).
            let mut dispatched = 0;
            for _ in 0..200 {
                let claimed = store
                    .claim_due(&ids, T0, Some(claim_lease(T0)), &fire_next)
                    .await
                    .unwrap();
                dispatched += claimed.iter().map(|c| c.dispatch.len()).sum::<usize>();
                if claimed
                    .iter()
                    .all(|c| c.next_fire_ms.is_none_or(|n| n > T0))
                {
                    return dispatched;
                }
                tokio::task::yield_now().await;
            }
            panic!("claims never settled");
        });
    }
    let mut dispatched = 0;
    while let Some(n) = tasks.join_next().await {
        dispatched += n.unwrap();
    }
    assert_eq!(dispatched, ids.len(), "every fire dispatched once in all");
    for id in &ids {
        let runs = store.list_runs(id, None, None, 10).await.unwrap();
        assert_eq!(runs.len(), 1, "{id} has one row");
        let s = store.get_schedule(id).await.unwrap().unwrap();
        assert_eq!((s.next_fire_ms, s.run_count), (Some(T0 + MINUTE), 1));
    }
}

fn manual(
    request_id: &'static str,
) -> impl Fn(
    &Schedule,
    &InFlight,
) -> (
    crate::engine::policy::NewRun,
    Vec<(String, crate::model::CancelMode)>,
    bool,
) + Send
+ Sync {
    move |_, _| {
        let mut run = pending(T0, Trigger::Manual);
        run.request_id = Some(request_id.to_owned());
        (run, Vec::new(), false)
    }
}

async fn a_manual_run_with_a_seen_request_id_is_returned_again(store: Store) {
    create(&store, "manual", None).await;
    let (first, effects) = store
        .trigger("manual", Some("r1"), T0, &manual("r1"))
        .await
        .unwrap();
    assert_eq!(effects, vec![Effect::Dispatch(first.id.clone())]);
    let (again, effects) = store
        .trigger("manual", Some("r1"), T0 + 1, &manual("r1"))
        .await
        .unwrap();
    assert_eq!((again.id, effects), (first.id, Vec::new()));
    let missing = store.trigger("nope", None, T0, &manual("r2")).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

async fn concurrent_manual_runs_with_one_request_id_make_one_run(store: Store) {
    create(&store, "manual-race", None).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            store
                .trigger("manual-race", Some("same"), T0, &manual("same"))
                .await
                .map(|(run, _)| run.id)
        });
    }
    let mut ids = Vec::new();
    while let Some(result) = tasks.join_next().await {
        ids.push(result.unwrap().unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller got the one run");
    assert_eq!(
        store
            .list_runs("manual-race", None, None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn runs_page_newest_first_with_a_cursor_and_a_status_filter(store: Store) {
    create(&store, "paged", Some(T0)).await;
    for i in 0..5 {
        claim(&store, "paged", T0 + i * MINUTE).await;
    }
    // Two manual runs share one nominal time: the id breaks the tie.
    for _ in 0..2 {
        store
            .trigger(
                "paged",
                None,
                T0 + 2 * MINUTE,
                &|_: &Schedule, _: &InFlight| {
                    (pending(T0 + 2 * MINUTE, Trigger::Manual), Vec::new(), false)
                },
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut before: Option<RunCursor> = None;
    for _ in 0..10 {
        let page = store
            .list_runs("paged", None, before.clone(), 3)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some((last.nominal_ms, last.id.clone()));
        seen.extend(page.into_iter().map(|r| (r.nominal_ms, r.id)));
    }
    assert_eq!(seen.len(), 7);
    let mut expected = seen.clone();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected, "newest first, then by id descending");
    let run = seen[0].1.clone();
    finish(&store, &run, 1, RunStatus::Succeeded).await;
    let succeeded = store
        .list_runs("paged", Some(RunStatus::Succeeded), None, 10)
        .await
        .unwrap();
    assert_eq!(
        succeeded.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [run]
    );
}

/// Reports attempt `attempt` of `run` started and then ended with `status`.
pub async fn finish(store: &Store, run: &str, attempt: u32, status: RunStatus) -> Vec<Effect> {
    store
        .apply_updates(
            &[
                LedgerUpdate::Started {
                    run_id: run.to_owned(),
                    fence: None,
                    attempt,
                    execution_id: format!("exec-{attempt}"),
                    started_ms: T0 + 10,
                    last_seq: 1,
                },
                LedgerUpdate::Finished {
                    run_id: run.to_owned(),
                    fence: None,
                    attempt,
                    outcome: AttemptOutcome {
                        status,
                        error: (status != RunStatus::Succeeded).then(|| "boom".to_owned()),
                        result: None,
                        retryable: true,
                        finished_ms: T0 + 20,
                        last_seq: 4,
                    },
                    started: None,
                },
            ],
            T0 + 20,
        )
        .await
        .unwrap()
}

async fn updates_move_a_run_to_running_and_to_its_end(store: Store) {
    let run_id = one_run(&store, "updated", T0).await;
    let started = LedgerUpdate::Started {
        run_id: run_id.clone(),
        fence: None,
        attempt: 1,
        execution_id: "exec-1".into(),
        started_ms: T0 + 11,
        last_seq: 3,
    };
    store
        .apply_updates(std::slice::from_ref(&started), T0 + 11)
        .await
        .unwrap();
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.started_ms),
        (RunStatus::Running, Some(T0 + 11))
    );
    assert_eq!(run.attempts[0].execution_id.as_deref(), Some("exec-1"));
    assert_eq!(run.attempts[0].last_seq, 3);
    let outcome = AttemptOutcome {
        status: RunStatus::Succeeded,
        error: None,
        result: Some(serde_json::json!({"answer": 42, "text": "ok"})),
        retryable: false,
        finished_ms: T0 + 99,
        last_seq: 2,
    };
    let finished = LedgerUpdate::Finished {
        run_id: run_id.clone(),
        fence: None,
        attempt: 1,
        outcome: outcome.clone(),
        started: None,
    };
    let effects = store
        .apply_updates(std::slice::from_ref(&finished), T0 + 99)
        .await
        .unwrap();
    assert!(effects.is_empty(), "{effects:?}");
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.finished_ms),
        (RunStatus::Succeeded, Some(T0 + 99))
    );
    assert_eq!(run.result, outcome.result);
    assert_eq!(run.attempts[0].last_seq, 3, "last_seq never goes back");
    // Stale and unknown updates change nothing.
    let ghost = LedgerUpdate::Started {
        run_id: "ghost".into(),
        fence: None,
        attempt: 1,
        execution_id: "x".into(),
        started_ms: T0,
        last_seq: 1,
    };
    let effects = store
        .apply_updates(&[started, finished, ghost], T0 + 100)
        .await
        .unwrap();
    assert!(effects.is_empty());
    assert_eq!(store.get_run(&run_id).await.unwrap().unwrap(), run);
}

async fn a_finish_that_carries_its_start_writes_both(store: Store) {
    let finished = |run_id: &str, status, started_ms| LedgerUpdate::Finished {
        run_id: run_id.to_owned(),
        fence: None,
        attempt: 1,
        outcome: AttemptOutcome {
            status,
            error: (status != RunStatus::Succeeded).then(|| "boom".to_owned()),
            result: None,
            retryable: true,
            finished_ms: T0 + 50,
            last_seq: 4,
        },
        started: Some(AttemptStart {
            execution_id: "exec-1".into(),
            started_ms,
        }),
    };
    // A run whose start was never written ends with it.
    let run_id = one_run(&store, "carried", T0).await;
    store
        .apply_updates(&[finished(&run_id, RunStatus::Succeeded, T0 + 10)], T0 + 50)
        .await
        .unwrap();
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.started_ms, run.finished_ms),
        (RunStatus::Succeeded, Some(T0 + 10), Some(T0 + 50))
    );
    assert_eq!(run.attempts[0].execution_id.as_deref(), Some("exec-1"));
    assert_eq!(run.attempts[0].started_ms, Some(T0 + 10));

    // A retried attempt keeps its start too.
    store
        .insert_schedule(&retried_twice("carried-retry"))
        .await
        .unwrap();
    let retried = claim(&store, "carried-retry", T0).await.remove(0);
    let effects = store
        .apply_updates(&[finished(&retried, RunStatus::Failed, T0 + 12)], T0 + 50)
        .await
        .unwrap();
    assert_eq!(effects, vec![Effect::Dispatch(retried.clone())]);
    let run = store.get_run(&retried).await.unwrap().unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::Pending, 2));
    assert_eq!(run.started_ms, Some(T0 + 12));
    assert_eq!(run.attempts[0].execution_id.as_deref(), Some("exec-1"));
    assert_eq!(run.attempts[0].started_ms, Some(T0 + 12));

    // A start written before keeps its time: the carried one fills only what is empty.
    let written = one_run(&store, "written-first", T0).await;
    let started = LedgerUpdate::Started {
        run_id: written.clone(),
        fence: None,
        attempt: 1,
        execution_id: "exec-1".into(),
        started_ms: T0 + 5,
        last_seq: 1,
    };
    store
        .apply_updates(
            &[started, finished(&written, RunStatus::Succeeded, T0 + 30)],
            T0 + 50,
        )
        .await
        .unwrap();
    let run = store.get_run(&written).await.unwrap().unwrap();
    assert_eq!(run.started_ms, Some(T0 + 5));
    assert_eq!(run.attempts[0].started_ms, Some(T0 + 5));
}

/// A schedule due at T0 whose runs make two attempts, 500 ms apart.
fn retried_twice(id: &str) -> Schedule {
    let mut s = super::schedule(id, Some(T0));
    s.policy.retry = Some(crate::model::RetryPolicy {
        max_attempts: 2,
        initial_backoff_ms: 500,
        max_backoff_ms: 500,
        multiplier: 2.0,
    });
    s
}

async fn a_retryable_failure_adds_an_attempt(store: Store) {
    let mut s = retried_twice("retried");
    s.policy.timeout_ms = Some(1_000);
    store.insert_schedule(&s).await.unwrap();
    let run_id = claim(&store, "retried", T0).await.remove(0);
    let effects = finish(&store, &run_id, 1, RunStatus::Failed).await;
    assert_eq!(effects, vec![Effect::Dispatch(run_id.clone())]);
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::Pending, 2));
    assert_eq!(run.dispatch_after_ms, Some(T0 + 20 + 500));
    assert_eq!(run.attempts[1].deadline_ms, Some(T0 + 520 + 1_000));
    assert_eq!(run.attempts[0].status, RunStatus::Failed);
    assert!(run.attempts[0].retryable);
    let job = store.dispatch_job(&run_id).await.unwrap().unwrap();
    assert_eq!(job.execution_key, execution_key(&run_id, 2));
    // The second failure is final.
    assert!(
        finish(&store, &run_id, 2, RunStatus::Failed)
            .await
            .is_empty()
    );
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.error.as_deref()),
        (RunStatus::Failed, Some("boom"))
    );
    let s = store.get_schedule("retried").await.unwrap().unwrap();
    assert_eq!(s.consecutive_failures, 1);
}

async fn in_flight_runs_and_an_unreadable_run_ending_failed(store: Store) {
    let a = one_run(&store, "flight-a", T0).await;
    let b = one_run(&store, "flight-b", T0 + 1).await;
    assert_eq!(
        store.in_flight_runs().await.unwrap(),
        [a.clone(), b.clone()]
    );
    store
        .fail_unreadable_run(&a, "bad json", T0 + 5)
        .await
        .unwrap();
    let run = store.get_run(&a).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("bad json"));
    assert_eq!(run.attempts[0].status, RunStatus::Failed);
    assert_eq!(store.in_flight_runs().await.unwrap(), [b]);
}
