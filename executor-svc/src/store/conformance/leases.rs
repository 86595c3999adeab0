//! Execution leases on every backend: creating takes the lease (epoch 1); fenced appends
//! apply only under the current owner and epoch; renewals name (id, epoch) and report the
//! recorded cancellations; adoption claims expired (or released, or own, or all)
//! unfinished executions and bumps the epoch, which fences the previous holder out;
//! concurrent adoptions never claim one execution twice.

use std::collections::HashSet;

use super::executions::{new_execution, started};
use crate::error::ExecutorError;
use crate::model::{CancelMode, ExecutionStatus, Transition};
use crate::store::{AdoptScope, Adoption, ExecutorStore, Lease};

fn lease(owner: &str, epoch: u64) -> Lease {
    Lease {
        owner: owner.into(),
        epoch,
    }
}

fn adoption(owner: &str, now_ms: i64, scope: AdoptScope) -> Adoption {
    Adoption {
        owner: owner.into(),
        now_ms,
        lease_until_ms: now_ms + 15_000,
        scope,
        only: None,
        after_id: None,
        limit: 100,
    }
}

/// Creates executions `ids` (each under key `k-{id}`), owned by replica-a until 60 000.
async fn create(store: &dyn ExecutorStore, ids: &[&str]) {
    for id in ids {
        store
            .create_execution(&new_execution(id, &format!("k-{id}"), None))
            .await
            .unwrap();
    }
}

async fn finish(store: &dyn ExecutorStore, id: &str, held: &Lease) {
    let done = Transition::ExecutionFinished {
        status: ExecutionStatus::Succeeded,
        result: None,
        error: String::new(),
        retryable: false,
    };
    store.append_as(id, held, 3_000, done).await.unwrap();
}

fn ids(records: &[crate::model::ExecutionRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

conformance! {
async fn creating_an_execution_takes_its_lease_at_epoch_1(h) {
    let store = h.open().await;
    create(store.as_ref(), &["e1"]).await;
    let record = store.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(record.owner.as_deref(), Some("replica-a"));
    assert_eq!((record.lease_epoch, record.lease_until_ms), (1, Some(60_000)));
    assert!(lease("replica-a", 1).holds(&record));
}

async fn a_fenced_append_applies_only_under_the_current_owner_and_epoch(h) {
    let store = h.open().await;
    create(store.as_ref(), &["e1"]).await;
    let event = store.append_as("e1", &lease("replica-a", 1), 2_000, started(1)).await.unwrap();
    assert_eq!(event.seq, 2);
    for wrong in [lease("replica-a", 2), lease("replica-b", 1)] {
        let err = store.append_as("e1", &wrong, 2_100, started(2)).await.unwrap_err();
        assert!(matches!(err, ExecutorError::LeaseLost(ref id) if id == "e1"), "{err:?}");
    }
    let record = store.get_execution("e1").await.unwrap().unwrap();
    assert_eq!(record.last_seq, 2, "a refused write leaves nothing");
    assert_eq!(store.node_runs("e1").await.unwrap().len(), 1);
    let missing = store.append_as("nope", &lease("replica-a", 1), 1, started(1)).await.unwrap_err();
    assert!(matches!(missing, ExecutorError::NotFound(_)), "{missing:?}");
}

async fn several_transitions_append_in_one_transaction_or_not_at_all(h) {
    let store = h.open().await;
    create(store.as_ref(), &["e1"]).await;
    let held = lease("replica-a", 1);
    store.append_as("e1", &held, 2_000, started(1)).await.unwrap();
    let succeeded = Transition::NodeSucceeded {
        node_id: "action".into(),
        attempt: 1,
        output: serde_json::json!({"status": 200}),
        duration_ms: 5,
    };
    let done = Transition::ExecutionFinished {
        status: ExecutionStatus::Succeeded,
        result: Some(serde_json::json!({"status": 200})),
        error: String::new(),
        retryable: false,
    };
    let both = vec![(2_005, succeeded.clone()), (2_006, done.clone())];
    let refused = store.append_all_as("e1", &lease("replica-b", 1), both.clone()).await.unwrap_err();
    assert!(matches!(refused, ExecutorError::LeaseLost(_)), "{refused:?}");
    assert_eq!(store.get_execution("e1").await.unwrap().unwrap().last_seq, 2, "nothing of a refused pair");
    let events = store.append_all_as("e1", &held, both.clone()).await.unwrap();
    assert_eq!(events.iter().map(|e| (e.seq, e.at_ms)).collect::<Vec<_>>(), [(3, 2_005), (4, 2_006)]);
    assert_eq!(store.events_after("e1", 2, 10).await.unwrap(), events, "as stored");
    let record = store.get_execution("e1").await.unwrap().unwrap();
    assert_eq!((record.status, record.last_seq), (ExecutionStatus::Succeeded, 4));
    let runs = store.node_runs("e1").await.unwrap();
    assert_eq!(runs[0].status, crate::model::NodeStatus::Succeeded);
    let after = store.append_all_as("e1", &held, both).await.unwrap_err();
    assert!(matches!(after, ExecutorError::AlreadyFinished(_)), "{after:?}");
}

async fn renewals_move_only_the_named_leases_and_report_cancellations(h) {
    let store = h.open().await;
    create(store.as_ref(), &["e1", "e2", "e3"]).await;
    store.request_cancel("e2", CancelMode::Terminate, "stop").await.unwrap();
    let held = [("e1".to_owned(), 1), ("e2".to_owned(), 1), ("e3".to_owned(), 7)];
    let mut renewed = store.renew_leases("replica-a", &held, 90_000).await.unwrap();
    renewed.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
    let got: Vec<(&str, Option<CancelMode>)> = renewed
        .iter()
        .map(|r| (r.execution_id.as_str(), r.cancel_requested))
        .collect();
    assert_eq!(got, [("e1", None), ("e2", Some(CancelMode::Terminate))], "e3 has epoch 1, not 7");
    let until = |id: &'static str| {
        let store = store.clone();
        async move { store.get_execution(id).await.unwrap().unwrap().lease_until_ms }
    };
    assert_eq!(until("e1").await, Some(90_000));
    assert_eq!(until("e3").await, Some(60_000));
    let by_other = store.renew_leases("replica-b", &held, 99_000).await.unwrap();
    assert!(by_other.is_empty(), "another owner renews nothing");
    assert!(store.renew_leases("replica-a", &[], 1).await.unwrap().is_empty());
    let cancels = store
        .cancel_requests(&["e1".into(), "e2".into(), "zzz".into()])
        .await
        .unwrap();
    assert_eq!(cancels, [("e2".to_owned(), CancelMode::Terminate)]);
}

async fn adoption_claims_expired_unfinished_executions_and_fences_the_old_holder(h) {
    let store = h.open().await;
    create(store.as_ref(), &["e1", "e2", "e3"]).await;
    finish(store.as_ref(), "e3", &lease("replica-a", 1)).await;
    // Before the leases end (60 000), nothing is adoptable.
    let early = store.adopt(&adoption("replica-b", 59_999, AdoptScope::Expired)).await.unwrap();
    assert!(early.is_empty(), "{:?}", ids(&early));
    let adopted = store.adopt(&adoption("replica-b", 60_000, AdoptScope::Expired)).await.unwrap();
    assert_eq!(ids(&adopted), ["e1", "e2"], "a finished execution is never adopted");
    for record in &adopted {
        assert_eq!(record.owner.as_deref(), Some("replica-b"));
        assert_eq!((record.lease_epoch, record.lease_until_ms), (2, Some(75_000)));
    }
    let zombie = store.append_as("e1", &lease("replica-a", 1), 61_000, started(1)).await.unwrap_err();
    assert!(matches!(zombie, ExecutorError::LeaseLost(_)), "{zombie:?}");
    let renewed = store.renew_leases("replica-a", &[("e1".into(), 1)], 99_000).await.unwrap();
    assert!(renewed.is_empty(), "the old holder cannot renew either");
    let event = store.append_as("e1", &lease("replica-b", 2), 61_000, started(1)).await.unwrap();
    assert_eq!(event.seq, 2);
    // Live again: a second sweep takes nothing.
    let again = store.adopt(&adoption("replica-c", 70_000, AdoptScope::Expired)).await.unwrap();
    assert!(again.is_empty());
}

async fn adoption_scopes_batches_and_single_executions(h) {
    let store = h.open().await;
    create(store.as_ref(), &["e1", "e2", "e3", "e4"]).await;
    // replica-a restarting with the same id takes its own live executions back.
    let mut own = adoption("replica-a", 1_000, AdoptScope::ExpiredOrMine);
    own.limit = 3;
    let first = store.adopt(&own).await.unwrap();
    assert_eq!(ids(&first), ["e1", "e2", "e3"]);
    own.after_id = Some("e3".into());
    assert_eq!(ids(&store.adopt(&own).await.unwrap()), ["e4"]);
    assert!(store.adopt(&adoption("replica-b", 1_000, AdoptScope::ExpiredOrMine)).await.unwrap().is_empty());
    let mut one = adoption("replica-b", 1_000, AdoptScope::All);
    one.only = Some("e2".into());
    let taken = store.adopt(&one).await.unwrap();
    assert_eq!(ids(&taken), ["e2"]);
    assert_eq!(taken[0].lease_epoch, 3);
    let rest = store.adopt(&adoption("replica-c", 1_000, AdoptScope::All)).await.unwrap();
    assert_eq!(ids(&rest), ["e1", "e2", "e3", "e4"]);
}

async fn a_released_lease_is_adoptable_at_once(h) {
    let store = h.open().await;
    create(store.as_ref(), &["e1", "e2"]).await;
    store
        .release_leases("replica-a", &[("e1".into(), 1), ("e2".into(), 9)])
        .await
        .unwrap();
    store.release_leases("replica-b", &[("e2".into(), 1)]).await.unwrap();
    let adopted = store.adopt(&adoption("replica-b", 1_000, AdoptScope::Expired)).await.unwrap();
    assert_eq!(ids(&adopted), ["e1"], "only the lease named with its epoch by its owner");
}

async fn concurrent_adoptions_never_claim_one_execution_twice(h) {
    let store = h.open().await;
    let names: Vec<String> = (0..40).map(|i| format!("e{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    create(store.as_ref(), &refs).await;
    let sweeps = (0..4).map(|r| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut claim = adoption(&format!("replica-{r}"), 60_000, AdoptScope::Expired);
            claim.limit = 7;
            let mut mine = Vec::new();
            for _ in 0..20 {
                let got = store.adopt(&claim).await.unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|r| r.id));
            }
            mine
        })
    });
    let claimed: Vec<String> = futures::future::join_all(sweeps)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    let unique: HashSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), 40, "{claimed:?}");
    assert_eq!(unique.len(), 40);
    for id in &names {
        assert_eq!(store.get_execution(id).await.unwrap().unwrap().lease_epoch, 2);
    }
}

async fn a_shared_database_tells_its_time(h) {
    let store = h.open().await;
    let system = chrono::Utc::now().timestamp_millis();
    match store.database_now_ms().await.unwrap() {
        None => {} // SQLite: the process's clock is the clock
        Some(now) => assert!((now - system).abs() < 5_000, "{now} vs {system}"),
    }
}
}
