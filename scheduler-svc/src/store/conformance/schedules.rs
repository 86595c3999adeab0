//! Conformance: schedules — reading back what was written (millisecond times included),
//! unique keys, pagination in byte order, versions, deletes, concurrent writers.

use std::sync::Arc;

use super::{MINUTE, Store, T0, conformance, create, one_run, schedule};
use crate::error::SchedulerError;
use crate::model::{PauseInfo, ScheduleState};
use crate::store::StoreError;

conformance!(
    a_schedule_reads_back_as_written,
    a_taken_id_or_request_id_is_already_exists,
    schedules_page_in_byte_order_and_filter_by_state,
    a_change_bumps_the_version_and_a_failed_change_writes_nothing,
    delete_checks_the_version_and_removes_the_ledger,
    concurrent_creates_of_one_id_let_exactly_one_win,
    concurrent_changes_of_one_schedule_lose_no_update,
    the_due_index_lists_active_schedules_with_a_next_fire,
);

async fn a_schedule_reads_back_as_written(store: Store) {
    let mut s = schedule("reads-back", Some(T0 + 7));
    s.request_id = Some("req-1".into());
    s.state = ScheduleState::Paused;
    s.pause = Some(PauseInfo {
        note: "maintenance".into(),
        identity: "ops".into(),
        at_ms: T0 + 1,
    });
    s.description = "ünïcode ✓".into();
    s.policy.timeout_ms = Some(1_234);
    s.run_count = 3;
    s.version = 4;
    s.consecutive_failures = 2;
    s.buffer_overruns = 5;
    store.insert_schedule(&s).await.unwrap();
    assert_eq!(
        store.get_schedule("reads-back").await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(
        store.schedule_by_request_id("req-1").await.unwrap(),
        Some(s)
    );
    assert_eq!(store.get_schedule("missing").await.unwrap(), None);
    assert_eq!(store.schedule_by_request_id("nope").await.unwrap(), None);
}

async fn a_taken_id_or_request_id_is_already_exists(store: Store) {
    let mut s = schedule("taken", None);
    s.request_id = Some("req-taken".into());
    store.insert_schedule(&s).await.unwrap();
    let again = store.insert_schedule(&schedule("taken", None)).await;
    assert!(
        matches!(&again, Err(StoreError::AlreadyExists(m)) if m.contains("\"taken\"")),
        "{again:?}"
    );
    let mut other = schedule("other", None);
    other.request_id = Some("req-taken".into());
    let same_request = store.insert_schedule(&other).await;
    assert!(
        matches!(&same_request, Err(StoreError::AlreadyExists(m)) if m.contains("request_id")),
        "{same_request:?}"
    );
    assert_eq!(store.get_schedule("other").await.unwrap(), None);
}

async fn schedules_page_in_byte_order_and_filter_by_state(store: Store) {
    // Upper case sorts before lower case, '-' before '_', byte by byte on both backends.
    let ids = ["b", "B", "a_1", "a-1", "a", "Z9"];
    for id in ids {
        let mut s = schedule(id, None);
        if id.starts_with('a') {
            s.state = ScheduleState::Completed;
        }
        store.insert_schedule(&s).await.unwrap();
    }
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_unstable();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let page = store
            .list_schedules(None, after.as_deref(), 4)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|s| s.id.clone());
        seen.extend(page.into_iter().map(|s| s.id));
    }
    assert_eq!(seen, sorted);
    let completed: Vec<String> = store
        .list_schedules(Some(ScheduleState::Completed), None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(completed, ["a", "a-1", "a_1"]);
    let active_after_b = store
        .list_schedules(Some(ScheduleState::Active), Some("B"), 10)
        .await
        .unwrap();
    let ids: Vec<&str> = active_after_b.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["Z9", "b"]);
}

async fn a_change_bumps_the_version_and_a_failed_change_writes_nothing(store: Store) {
    create(&store, "changed", Some(T0)).await;
    let changed = store
        .modify_schedule("changed", &|s| {
            s.display_name = "renamed".into();
            s.next_fire_ms = Some(T0 + MINUTE + 1);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(changed.version, 2);
    assert_eq!(store.get_schedule("changed").await.unwrap(), Some(changed));
    let refused = store
        .modify_schedule("changed", &|s| {
            s.display_name = "not stored".into();
            Err(SchedulerError::FailedPrecondition("no".into()))
        })
        .await;
    assert!(matches!(
        refused,
        Err(SchedulerError::FailedPrecondition(_))
    ));
    let stored = store.get_schedule("changed").await.unwrap().unwrap();
    assert_eq!(
        (stored.display_name.as_str(), stored.version),
        ("renamed", 2)
    );
    let missing = store.modify_schedule("missing", &|_| Ok(())).await;
    assert!(
        matches!(missing, Err(SchedulerError::NotFound(_))),
        "{missing:?}"
    );
}

async fn delete_checks_the_version_and_removes_the_ledger(store: Store) {
    let run = one_run(&store, "deleted", T0).await;
    let stale = store.delete_schedule("deleted", Some(7)).await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionMismatch {
                expected: 7,
                actual: 1
            })
        ),
        "{stale:?}"
    );
    store.delete_schedule("deleted", Some(1)).await.unwrap();
    assert_eq!(store.get_schedule("deleted").await.unwrap(), None);
    assert_eq!(store.get_run(&run).await.unwrap(), None);
    assert_eq!(store.dispatch_job(&run).await.unwrap(), None);
    let again = store.delete_schedule("deleted", None).await;
    assert!(matches!(again, Err(StoreError::NotFound(_))), "{again:?}");
}

async fn concurrent_creates_of_one_id_let_exactly_one_win(store: Store) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut s = schedule("contended", None);
            s.display_name = format!("writer {i}");
            store.insert_schedule(&s).await
        });
    }
    let (mut won, mut lost) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::AlreadyExists(_)) => lost += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!((won, lost), (1, 11));
}

async fn concurrent_changes_of_one_schedule_lose_no_update(store: Store) {
    create(&store, "counted", None).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            store
                .modify_schedule("counted", &|s| {
                    s.run_count += 1;
                    Ok(())
                })
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let s = store.get_schedule("counted").await.unwrap().unwrap();
    assert_eq!((s.run_count, s.version), (16, 17));
}

async fn the_due_index_lists_active_schedules_with_a_next_fire(store: Store) {
    create(&store, "due", Some(T0)).await;
    create(&store, "never", None).await;
    let mut paused = schedule("paused", Some(T0));
    paused.state = ScheduleState::Paused;
    store.insert_schedule(&paused).await.unwrap();
    assert_eq!(
        store.due_index().await.unwrap(),
        vec![("due".to_owned(), T0)]
    );
}
