//! Pipelines and breakers on every backend: versions (create, update, optimistic
//! concurrency, concurrent updates taking distinct numbers), reads by version, pages of
//! latest versions, deletes, and breakers (opening at the threshold, closing on a
//! success, counting every one of concurrent failures).

use almanac_proto::executor::v1::Pipeline;
use almanac_proto::time::ms_to_timestamp;

use crate::error::ExecutorError;
use crate::store::pipelines::Breaker;

fn pipeline(id: &str, name: &str) -> Pipeline {
    Pipeline {
        id: id.into(),
        display_name: name.into(),
        ..Default::default()
    }
}

conformance! {
async fn versions_grow_by_one_and_updates_check_the_expected_latest(h) {
    let store = h.open().await;
    let v1 = store
        .put_pipeline(&pipeline("p", "first"), true, None, 1_700_000_000_001)
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.create_time, Some(ms_to_timestamp(1_700_000_000_001)));
    let again = store
        .put_pipeline(&pipeline("p", "again"), true, None, 2)
        .await
        .unwrap_err();
    assert!(matches!(again, ExecutorError::AlreadyExists(_)), "{again:?}");
    let v2 = store
        .put_pipeline(&pipeline("p", "second"), false, Some(1), 3)
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let stale = store
        .put_pipeline(&pipeline("p", "stale"), false, Some(1), 4)
        .await
        .unwrap_err();
    assert!(matches!(stale, ExecutorError::Aborted(_)), "{stale:?}");
    let missing = store
        .put_pipeline(&pipeline("q", "none"), false, None, 5)
        .await
        .unwrap_err();
    assert!(matches!(missing, ExecutorError::NotFound(_)), "{missing:?}");

    let latest = store.get_pipeline("p", None).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.display_name.as_str()), (2, "second"));
    let first = store.get_pipeline("p", Some(1)).await.unwrap().unwrap();
    assert_eq!(first, v1);
    assert!(store.get_pipeline("p", Some(3)).await.unwrap().is_none());
    assert!(store.get_pipeline("q", None).await.unwrap().is_none());
}

async fn concurrent_updates_of_one_pipeline_take_distinct_versions(h) {
    let store = h.open().await;
    store
        .put_pipeline(&pipeline("p", "v1"), true, None, 1)
        .await
        .unwrap();
    let updates = (0..10).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_pipeline(&pipeline("p", &format!("u{i}")), false, None, 10 + i)
                .await
                .unwrap()
                .version
        })
    });
    let mut versions: Vec<i64> = futures::future::join_all(updates)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=11).collect::<Vec<i64>>());
}

async fn concurrent_creates_of_one_pipeline_have_one_winner(h) {
    let store = h.open().await;
    let creates = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_pipeline(&pipeline("p", &format!("c{i}")), true, None, i)
                .await
        })
    });
    let results: Vec<_> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    for result in &results {
        if let Err(err) = result {
            assert!(matches!(err, ExecutorError::AlreadyExists(_)), "{err:?}");
        }
    }
}

async fn pages_list_the_latest_version_of_each_pipeline_by_id(h) {
    let store = h.open().await;
    for id in ["b", "a", "c", "B"] {
        store
            .put_pipeline(&pipeline(id, "one"), true, None, 1)
            .await
            .unwrap();
    }
    store
        .put_pipeline(&pipeline("a", "two"), false, None, 2)
        .await
        .unwrap();
    let ids = |page: Vec<Pipeline>| {
        page.into_iter()
            .map(|p| (p.id, p.version))
            .collect::<Vec<_>>()
    };
    // Ids sort bytewise on both backends: upper case first.
    assert_eq!(
        ids(store.list_pipelines(None, 3).await.unwrap()),
        [("B".to_string(), 1), ("a".to_string(), 2), ("b".to_string(), 1)]
    );
    assert_eq!(
        ids(store.list_pipelines(Some("b"), 3).await.unwrap()),
        [("c".to_string(), 1)]
    );
    assert!(store.list_pipelines(Some("c"), 3).await.unwrap().is_empty());
}

async fn deleting_a_pipeline_removes_every_version_and_its_breakers(h) {
    let store = h.open().await;
    store
        .put_pipeline(&pipeline("p", "v1"), true, None, 1)
        .await
        .unwrap();
    store
        .put_pipeline(&pipeline("p", "v2"), false, None, 2)
        .await
        .unwrap();
    store.record_breaker("p", "n", true, 1, 5).await.unwrap();
    assert!(store.delete_pipeline("p").await.unwrap());
    assert!(!store.delete_pipeline("p").await.unwrap());
    assert!(store.get_pipeline("p", Some(1)).await.unwrap().is_none());
    assert_eq!(store.breaker("p", "n").await.unwrap(), Breaker::default());
    let v1 = store
        .put_pipeline(&pipeline("p", "again"), true, None, 6)
        .await
        .unwrap();
    assert_eq!(v1.version, 1, "a deleted id starts again");
}

async fn breakers_open_at_the_threshold_and_close_on_a_success(h) {
    let store = h.open().await;
    assert_eq!(store.breaker("p", "n").await.unwrap(), Breaker::default());
    let one = store.record_breaker("p", "n", true, 3, 10).await.unwrap();
    assert_eq!(one, Breaker { consecutive_failures: 1, opened_ms: None });
    store.record_breaker("p", "n", true, 3, 11).await.unwrap();
    let open = store.record_breaker("p", "n", true, 3, 12).await.unwrap();
    assert_eq!(open, Breaker { consecutive_failures: 3, opened_ms: Some(12) });
    let reopened = store.record_breaker("p", "n", true, 3, 20).await.unwrap();
    assert_eq!(reopened, Breaker { consecutive_failures: 4, opened_ms: Some(20) });
    assert_eq!(store.breaker("p", "n").await.unwrap(), reopened);
    assert_eq!(store.breaker("p", "other").await.unwrap(), Breaker::default());
    let closed = store.record_breaker("p", "n", false, 3, 30).await.unwrap();
    assert_eq!(closed, Breaker::default());
    assert_eq!(store.breaker("p", "n").await.unwrap(), Breaker::default());
    // A threshold of 0 never opens.
    let never = store.record_breaker("p", "z", true, 0, 40).await.unwrap();
    assert_eq!(never, Breaker { consecutive_failures: 1, opened_ms: None });
    // The first failure opens a threshold of 1.
    let at_once = store.record_breaker("p", "y", true, 1, 50).await.unwrap();
    assert_eq!(at_once, Breaker { consecutive_failures: 1, opened_ms: Some(50) });
}

async fn concurrent_failures_are_all_counted(h) {
    let store = h.open().await;
    let failures = (0..20).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.record_breaker("p", "n", true, 100, i).await.unwrap() })
    });
    futures::future::join_all(failures).await;
    assert_eq!(store.breaker("p", "n").await.unwrap().consecutive_failures, 20);
}
}
