//! Conformance: how runs end and move on — cancellations, reruns, backfills, BUFFERED
//! runs, pause_on_failure, notifications, and retention.

use almanac_proto::executor::v1::SendNotificationAction;

use super::ledger::finish;
use super::{MINUTE, Store, T0, conformance, create, one_run, schedule};
use crate::model::{CancelMode, Notification, Retention, RunStatus, ScheduleState};
use crate::store::{Effect, StoreError};

conformance!(
    cancelling_a_pending_run_ends_it_now,
    cancelling_a_running_run_asks_the_executor,
    a_rerun_adds_an_attempt_to_a_final_run,
    a_backfill_leaves_existing_fires_alone,
    a_buffered_backfill_starts_one_and_the_next_when_it_ends,
    pause_on_failure_pauses_and_skips_buffered_runs,
    a_failed_run_owes_its_notification_until_it_is_sent,
    pruning_keeps_the_newest_and_never_runs_in_flight,
);

async fn cancelling_a_pending_run_ends_it_now(store: Store) {
    let run_id = one_run(&store, "cancel-pending", T0).await;
    let (run, effects) = store
        .cancel_run(&run_id, CancelMode::Graceful, "", T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        (run.status, run.finished_ms),
        (RunStatus::Cancelled, Some(T0 + 1))
    );
    assert_eq!(run.attempts[0].status, RunStatus::Cancelled);
    assert!(matches!(
        &effects[..],
        [Effect::CancelExecution {
            mode: CancelMode::Terminate,
            ..
        }]
    ));
    let again = store
        .cancel_run(&run_id, CancelMode::Graceful, "", T0 + 2)
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let missing = store.cancel_run("nope", CancelMode::Graceful, "", T0).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

async fn cancelling_a_running_run_asks_the_executor(store: Store) {
    let run_id = one_run(&store, "cancel-running", T0).await;
    store
        .apply_updates(
            &[crate::store::LedgerUpdate::Started {
                run_id: run_id.clone(),
                fence: None,
                attempt: 1,
                execution_id: "e".into(),
                started_ms: T0,
                last_seq: 1,
            }],
            T0,
        )
        .await
        .unwrap();
    let (run, effects) = store
        .cancel_run(&run_id, CancelMode::Graceful, "stop it", T0 + 1)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.cancel_requested, Some(CancelMode::Graceful));
    assert!(
        matches!(&effects[..], [Effect::CancelExecution { mode: CancelMode::Graceful, reason, .. }] if reason == "stop it")
    );
    // A terminate request is never weakened by a later graceful one.
    store
        .cancel_run(&run_id, CancelMode::Terminate, "", T0 + 2)
        .await
        .unwrap();
    let (run, _) = store
        .cancel_run(&run_id, CancelMode::Graceful, "", T0 + 3)
        .await
        .unwrap();
    assert_eq!(run.cancel_requested, Some(CancelMode::Terminate));
}

async fn a_rerun_adds_an_attempt_to_a_final_run(store: Store) {
    let run_id = one_run(&store, "rerun", T0).await;
    let not_final = store.rerun_run(&run_id, T0).await;
    assert!(
        matches!(not_final, Err(StoreError::Conflict(_))),
        "{not_final:?}"
    );
    finish(&store, &run_id, 1, RunStatus::Failed).await;
    let (run, effects) = store.rerun_run(&run_id, T0 + MINUTE).await.unwrap();
    assert_eq!(effects, vec![Effect::Dispatch(run_id.clone())]);
    assert_eq!(
        (run.status, run.attempt, run.error),
        (RunStatus::Pending, 2, None)
    );
    assert_eq!(run.dispatch_after_ms, Some(T0 + MINUTE));
    assert_eq!(run.attempts.len(), 2);
    let missing = store.rerun_run("nope", T0).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

async fn a_backfill_leaves_existing_fires_alone(store: Store) {
    let existing = one_run(&store, "backfilled", T0 + 2 * MINUTE).await;
    let fires: Vec<i64> = (0..4).map(|i| T0 + i * MINUTE).collect();
    let (written, existed, effects) = store
        .backfill("backfilled", &fires, false, 1_000, T0 + 10 * MINUTE)
        .await
        .unwrap();
    assert_eq!((written.len(), existed), (3, 1));
    assert_eq!(effects.len(), 3);
    let runs = store.list_runs("backfilled", None, None, 10).await.unwrap();
    assert_eq!(runs.len(), 4);
    let kept = runs.iter().find(|r| r.id == existing).unwrap();
    assert_eq!(kept.trigger, crate::model::Trigger::Scheduled);
    let spaced: Vec<Option<i64>> = written
        .iter()
        .map(|id| runs.iter().find(|r| &r.id == id).unwrap().dispatch_after_ms)
        .collect();
    let now = T0 + 10 * MINUTE;
    assert_eq!(spaced, [Some(now), Some(now + 1_000), Some(now + 3_000)]);
    let missing = store.backfill("nope", &fires, false, 0, T0).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

async fn a_buffered_backfill_starts_one_and_the_next_when_it_ends(store: Store) {
    create(&store, "buffered", None).await;
    let fires = [T0, T0 + MINUTE, T0 + 2 * MINUTE];
    let (written, _, effects) = store
        .backfill("buffered", &fires, true, 0, T0 + 5 * MINUTE)
        .await
        .unwrap();
    assert_eq!(effects, vec![Effect::Dispatch(written[0].clone())]);
    let second = store.get_run(&written[1]).await.unwrap().unwrap();
    assert_eq!(second.status, RunStatus::Buffered);
    let effects = finish(&store, &written[0], 1, RunStatus::Succeeded).await;
    assert_eq!(effects, vec![Effect::Dispatch(written[1].clone())]);
    let (_, effects) = store
        .cancel_run(&written[1], CancelMode::Graceful, "", T0 + 6 * MINUTE)
        .await
        .unwrap();
    assert!(
        effects.contains(&Effect::Dispatch(written[2].clone())),
        "{effects:?}"
    );
}

async fn pause_on_failure_pauses_and_skips_buffered_runs(store: Store) {
    let mut s = schedule("fragile", None);
    s.policy.pause_on_failure = 1;
    store.insert_schedule(&s).await.unwrap();
    let (written, _, _) = store
        .backfill("fragile", &[T0, T0 + MINUTE], true, 0, T0)
        .await
        .unwrap();
    let effects = finish(&store, &written[0], 1, RunStatus::Failed).await;
    assert!(
        effects.contains(&Effect::Paused("fragile".into())),
        "{effects:?}"
    );
    let s = store.get_schedule("fragile").await.unwrap().unwrap();
    assert_eq!(
        (s.state, s.consecutive_failures),
        (ScheduleState::Paused, 1)
    );
    let skipped = store.get_run(&written[1]).await.unwrap().unwrap();
    assert_eq!(skipped.status, RunStatus::Skipped);
    assert_eq!(
        store.skip_buffered("fragile", "paused", T0).await.unwrap(),
        0
    );
}

async fn a_failed_run_owes_its_notification_until_it_is_sent(store: Store) {
    let mut s = schedule("noisy", Some(T0));
    s.policy.on_failure = Some(SendNotificationAction::default());
    store.insert_schedule(&s).await.unwrap();
    let run_id = super::claim(&store, "noisy", T0).await.remove(0);
    let effects = finish(&store, &run_id, 1, RunStatus::Failed).await;
    assert_eq!(effects, vec![Effect::Notify(run_id.clone())]);
    assert_eq!(
        store.pending_notifications().await.unwrap(),
        vec![run_id.clone()]
    );
    let (schedule, run, kind) = store.notification_job(&run_id).await.unwrap().unwrap();
    assert_eq!(
        (schedule.id.as_str(), run.id.as_str()),
        ("noisy", run_id.as_str())
    );
    assert_eq!(kind, Notification::OnFailure);
    store
        .notification_done(&run_id, Some("smtp down"))
        .await
        .unwrap();
    assert!(store.pending_notifications().await.unwrap().is_empty());
    assert_eq!(store.notification_job(&run_id).await.unwrap(), None);
}

async fn pruning_keeps_the_newest_and_never_runs_in_flight(store: Store) {
    let mut s = schedule("pruned", Some(T0));
    s.policy.retention = Retention {
        keep_last: 2,
        max_age_ms: None,
    };
    store.insert_schedule(&s).await.unwrap();
    create(&store, "unbounded", None).await;
    assert_eq!(
        store.retained_schedules().await.unwrap(),
        vec![],
        "a schedule without runs has nothing to prune"
    );
    let mut runs = Vec::new();
    for i in 0..5 {
        let run = super::claim(&store, "pruned", T0 + i * MINUTE)
            .await
            .remove(0);
        if i < 4 {
            finish(&store, &run, 1, RunStatus::Succeeded).await;
        }
        runs.push(run);
    }
    // Two more schedules with runs: one bounded, one not (found, then left out).
    let mut also = schedule("also-pruned", Some(T0));
    also.policy.retention = Retention {
        keep_last: 0,
        max_age_ms: Some(MINUTE),
    };
    store.insert_schedule(&also).await.unwrap();
    super::claim(&store, "also-pruned", T0).await;
    super::manual_run(&store, "unbounded-fired", T0).await;
    assert_eq!(
        store.retained_schedules().await.unwrap(),
        vec![
            ("also-pruned".to_owned(), also.policy.retention),
            ("pruned".to_owned(), s.policy.retention)
        ]
    );
    // Finished: runs 0..4 (4 of them); run 4 is in flight and never pruned.
    assert_eq!(store.prune_runs("pruned", 2, None, 1).await.unwrap(), 1);
    assert_eq!(store.prune_runs("pruned", 2, None, 10).await.unwrap(), 1);
    assert_eq!(store.prune_runs("pruned", 2, None, 10).await.unwrap(), 0);
    let left: Vec<String> = store
        .list_runs("pruned", None, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, [runs[4].clone(), runs[3].clone(), runs[2].clone()]);
    // By age: everything finished before the cut goes, the run in flight stays.
    let n = store
        .prune_runs("pruned", 0, Some(T0 + 10 * MINUTE), 10)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let left = store.list_runs("pruned", None, None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, runs[4]);
}
