//! The scheduler API's own promises: idempotent creates and triggers by request id,
//! pagination that visits every schedule once, updates through a field mask that move the
//! next fire, and deletes that take the ledger with them.

mod common;

use std::collections::BTreeSet;

use almanac_proto::scheduler::v1 as pb;
use almanac_proto::time::timestamp_to_ms;
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_make_creates_and_triggers_idempotent() {
    let stack = Stack::start().await;
    let mut client = stack.scheduler_client().await;
    let mut req = create(
        "",
        cron("0 0 1 1 *", "UTC"),
        call_api("GET", "http://127.0.0.1:9/"),
    );
    req.request_id = "create-1".into();
    let first = client
        .create_schedule(req.clone())
        .await
        .expect("create")
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(first.id.len(), 36, "a generated id is a UUID: {}", first.id);
    let again = client
        .create_schedule(req)
        .await
        .expect("retried create")
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(
        (again.id, again.etag),
        (first.id.clone(), first.etag.clone())
    );
    let listed = client
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.schedules.len(),
        1,
        "the retried create stored nothing new"
    );

    let trigger = pb::TriggerScheduleRequest {
        schedule_id: first.id.clone(),
        request_id: "run-1".into(),
        overlap_policy: pb::OverlapPolicy::AllowAll as i32,
    };
    let a = client
        .trigger_schedule(trigger.clone())
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let b = client
        .trigger_schedule(trigger)
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(a.id, b.id, "a retried trigger returns the same run");
    assert_eq!(a.request_id, "run-1");
    assert_eq!(all_runs(&mut client, &first.id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_visit_every_schedule_once_and_filter_by_state() {
    let stack = Stack::start().await;
    let mut client = stack.scheduler_client().await;
    for i in 0..25 {
        client
            .create_schedule(create(
                &format!("s{i:02}"),
                cron("0 0 1 1 *", "UTC"),
                call_api("GET", "http://127.0.0.1:9/"),
            ))
            .await
            .expect("create");
    }
    for i in 0..5 {
        client
            .pause_schedule(pb::PauseScheduleRequest {
                schedule_id: format!("s{i:02}"),
                ..Default::default()
            })
            .await
            .expect("pause");
    }
    let mut seen = BTreeSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_schedules(pb::ListSchedulesRequest {
                page_size: 7,
                page_token: token,
                state: 0,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.schedules.len() <= 7);
        for s in page.schedules {
            assert!(seen.insert(s.id), "a schedule listed twice");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 10);
    }
    assert_eq!((seen.len(), pages), (25, 4));
    let paused = client
        .list_schedules(pb::ListSchedulesRequest {
            state: pb::ScheduleState::Paused as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.schedules.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_through_a_field_mask_moves_the_next_fire_and_a_delete_takes_the_ledger() {
    let stack = Stack::start().await;
    let mut client = stack.scheduler_client().await;
    let created = client
        .create_schedule(create(
            "u",
            cron("0 0 1 1 *", "UTC"),
            call_api("GET", "http://127.0.0.1:9/"),
        ))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    let yearly = timestamp_to_ms(created.next_fire_time.as_ref().unwrap());
    let updated = client
        .update_schedule(pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule {
                spec: Some(cron("0 12 * * *", "Asia/Tokyo")),
                description: "not in the mask: ignored".into(),
                ..created.clone()
            }),
            update_mask: Some(pbjson_types::FieldMask {
                paths: vec!["spec".into()],
            }),
        })
        .await
        .expect("update")
        .into_inner()
        .schedule
        .unwrap();
    let daily = timestamp_to_ms(updated.next_fire_time.as_ref().unwrap());
    assert!(daily < yearly, "the next fire follows the new spec");
    assert_eq!(daily % 86_400_000, 3 * 3_600_000, "noon in Tokyo is 03:00Z");
    assert_eq!(
        updated.description, "",
        "fields outside the mask are unchanged"
    );
    assert_ne!(updated.etag, created.etag);

    client
        .trigger_schedule(pb::TriggerScheduleRequest {
            schedule_id: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let stale = client
        .delete_schedule(pb::DeleteScheduleRequest {
            schedule_id: "u".into(),
            etag: created.etag.clone(),
        })
        .await;
    assert_eq!(
        stale.unwrap_err().code(),
        Code::Aborted,
        "a delete with a stale etag is refused"
    );
    client
        .delete_schedule(pb::DeleteScheduleRequest {
            schedule_id: "u".into(),
            etag: updated.etag,
        })
        .await
        .expect("delete");
    let gone = client
        .get_schedule(pb::GetScheduleRequest {
            schedule_id: "u".into(),
        })
        .await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    let runs = client
        .list_runs(pb::ListRunsRequest {
            schedule_id: "u".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(runs.unwrap_err().code(), Code::NotFound);
}
