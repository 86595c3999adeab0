//! PipelineService through its real gRPC API: create (version 1), get the latest or a
//! version, update (a new version while an execution started on the old one keeps running
//! the old definition), list in pages, delete (a started execution keeps running), and
//! validation — every problem of a broken definition at once, each naming its node or
//! edge; an invalid pipeline is refused with INVALID_ARGUMENT and never stored.

mod common;
mod pipeline_support;

use std::collections::BTreeSet;

use almanac_proto::executor::v1::{
    Action, CreatePipelineRequest, DeletePipelineRequest, EdgeWhen, ExecutePipelineAction,
    ExecutionStatus, GetPipelineRequest, ListPipelinesRequest, Node, Pipeline,
    UpdatePipelineRequest, ValidatePipelineRequest, action, node::Kind,
};
use common::*;
use pipeline_support::*;
use serde_json::json;
use tonic::Code;

async fn get(executor: &Executor, id: &str, version: i64) -> Result<Pipeline, tonic::Status> {
    pipelines(executor)
        .await
        .get_pipeline(GetPipelineRequest {
            pipeline_id: id.into(),
            version,
        })
        .await
        .map(|r| r.into_inner().pipeline.expect("a pipeline"))
}

async fn update(executor: &Executor, p: Pipeline) -> Pipeline {
    pipelines(executor)
        .await
        .update_pipeline(UpdatePipelineRequest {
            pipeline: Some(p),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .pipeline
        .expect("a pipeline")
}

/// trigger → gate (held at the target until `hold` is released) → `last` (calls `/{last}`).
fn held(target: &Scripted, id: &str, hold: &str, last: &str) -> Pipeline {
    pipeline(
        id,
        vec![
            trigger("start"),
            api("gate", &target.url(&format!("/hold/{hold}"))),
            api(last, &target.url(&format!("/{last}"))),
        ],
        vec![edge("start", "gate"), edge("gate", last)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_makes_version_2_while_a_running_execution_keeps_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    let v1 = create(&executor, held(&target, "evolving", "v1", "one")).await;
    assert_eq!(v1.version, 1);
    assert!(v1.create_time.is_some());

    let mut client = executor.client().await;
    let stream = client
        .execute(run_request("on-v1", "evolving", json!({})))
        .await
        .unwrap()
        .into_inner();
    target.wait_for("/hold/v1", 1).await;

    let mut next = held(&target, "evolving", "v2", "two");
    next.display_name = "the second".into();
    let v2 = update(&executor, next).await;
    assert_eq!(v2.version, 2);
    assert_eq!(get(&executor, "evolving", 0).await.unwrap().version, 2);
    let old = get(&executor, "evolving", 1).await.unwrap();
    assert_eq!((old.version, old.display_name.as_str()), (1, ""));
    assert_eq!(old.nodes[2].id, "one");
    let missing = get(&executor, "evolving", 3).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // The execution started on version 1 runs version 1's nodes to the end.
    target.release("v1");
    let events = collect(stream).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(target.hits_on("/one").len(), 1);
    assert!(target.hits_on("/two").is_empty());
    let e = execution(&executor, "on-v1").await;
    assert!(!row_statuses(&e, "one").is_empty() && row_statuses(&e, "two").is_empty());

    // A new execution runs the latest version; a pinned one runs the version it names.
    target.release("v2");
    let events = run(&executor, "on-v2", "evolving", json!({})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(target.hits_on("/two").len(), 1);
    let mut pinned = run_request("pinned-v1", "evolving", json!({}));
    pinned.action = Some(Action {
        kind: Some(action::Kind::ExecutePipeline(ExecutePipelineAction {
            pipeline_id: "evolving".into(),
            version: 1,
            input: None,
        })),
    });
    let events = execute_all(&mut client, pinned).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(target.hits_on("/one").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pipeline_is_gone_but_its_running_execution_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    create(&executor, held(&target, "doomed", "d", "last")).await;
    let mut client = executor.client().await;
    let stream = client
        .execute(run_request("before-delete", "doomed", json!({})))
        .await
        .unwrap()
        .into_inner();
    target.wait_for("/hold/d", 1).await;

    pipelines(&executor)
        .await
        .delete_pipeline(DeletePipelineRequest {
            pipeline_id: "doomed".into(),
        })
        .await
        .expect("delete");
    assert_eq!(
        get(&executor, "doomed", 0).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        get(&executor, "doomed", 1).await.unwrap_err().code(),
        Code::NotFound
    );

    target.release("d");
    let events = collect(stream).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(target.hits_on("/last").len(), 1);

    // A new execution of it is refused: the executor has no such pipeline.
    let refused = client
        .execute(run_request("after-delete", "doomed", json!({})))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let fields: Vec<String> = almanac_proto::status::precondition_violations(&refused)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        ["action.execute_pipeline.pipeline_id"],
        "{refused:?}"
    );
}

#[tokio::test]
async fn pipelines_list_in_pages_by_id_with_their_latest_versions() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    for id in ["p-e", "p-b", "p-d", "p-a", "p-c"] {
        create(&executor, held(&target, id, "x", "y")).await;
    }
    update(&executor, held(&target, "p-c", "x", "z")).await;

    let mut client = pipelines(&executor).await;
    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let page = client
            .list_pipelines(ListPipelinesRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .expect("list")
            .into_inner();
        pages.push(
            page.pipelines
                .iter()
                .map(|p| (p.id.clone(), p.version))
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let v = |id: &str, version: i64| (id.to_owned(), version);
    assert_eq!(
        pages,
        [
            vec![v("p-a", 1), v("p-b", 1)],
            vec![v("p-c", 2), v("p-d", 1)],
            vec![v("p-e", 1)],
        ]
    );
    let bad = client
        .list_pipelines(ListPipelinesRequest {
            page_size: 2,
            page_token: "not-hex!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

fn nested(id: &str) -> Node {
    Node {
        id: id.into(),
        kind: Some(Kind::Action(Action {
            kind: Some(action::Kind::ExecutePipeline(ExecutePipelineAction {
                pipeline_id: "other".into(),
                ..Default::default()
            })),
        })),
        ..Default::default()
    }
}

/// A definition with one of each problem, every node but `island` reachable.
fn broken(target: &Scripted) -> Pipeline {
    let mut unknown_kind = parallel("nokind");
    unknown_kind.kind = None;
    let nodes = vec![
        trigger("start"),
        parallel("dup"),
        parallel("dup"),
        unknown_kind,
        parallel("c1"),
        parallel("c2"),
        parallel("island"),
        parallel("t1"),
        condition("cond", "input.ok"),
        parallel("u"),
        condition("badcel", "1 +"),
        api("badtpl", &format!("{}/x/{{{{ input.x ", target.base)),
        nested("nested"),
        delay("long", 25 * 3_600_000),
        api("nourl", ""),
    ];
    let mut edges: Vec<_> = [
        "dup", "nokind", "c1", "cond", "badcel", "badtpl", "nested", "long", "nourl",
    ]
    .into_iter()
    .map(|to| edge("start", to))
    .collect();
    edges.extend([
        edge("start", "ghost"),
        edge("c1", "c2"),
        edge("c2", "c1"),
        edge_when("start", "t1", EdgeWhen::True),
        edge("cond", "u"),
    ]);
    pipeline("broken", nodes, edges)
}

/// Every field named, and (for each expected problem) a field containing `field` whose
/// description contains `says`.
fn assert_all_named(problems: &[(String, String)]) {
    let expected = [
        ("pipeline.nodes[dup].id", "duplicate"),
        ("pipeline.nodes[nokind].kind", "kind"),
        ("pipeline.edges[start->ghost].to", "no node"),
        ("pipeline.edges", "cycle through c1, c2"),
        ("pipeline.nodes[island]", "not reachable"),
        ("pipeline.edges[start->t1].when", "not a condition"),
        ("pipeline.edges[cond->u].when", "TRUE or FALSE"),
        ("pipeline.nodes[badcel].condition.expression", "compile"),
        ("pipeline.nodes[badtpl].action.call_api.url", "parse"),
        ("pipeline.nodes[nested].action.execute_pipeline", "pipeline"),
        ("pipeline.nodes[long].delay.duration", "24h"),
        ("pipeline.nodes[nourl].action.call_api.url", "required"),
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|(field, says)| {
            !problems
                .iter()
                .any(|(f, d)| f == field && d.to_lowercase().contains(&says.to_lowercase()))
        })
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in {problems:#?}");
}

#[tokio::test]
async fn validate_reports_every_problem_at_once_each_naming_its_node_or_edge() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    let mut client = pipelines(&executor).await;
    let problems: Vec<(String, String)> = client
        .validate_pipeline(ValidatePipelineRequest {
            pipeline: Some(broken(&target)),
        })
        .await
        .expect("validate answers with the problems")
        .into_inner()
        .problems
        .into_iter()
        .map(|p| (p.field, p.description))
        .collect();
    assert_all_named(&problems);

    let empty = client
        .validate_pipeline(ValidatePipelineRequest {
            pipeline: Some(pipeline("empty", vec![], vec![])),
        })
        .await
        .unwrap()
        .into_inner()
        .problems;
    assert!(
        empty.iter().any(|p| p.field == "pipeline.nodes"),
        "{empty:?}"
    );

    let fine = client
        .validate_pipeline(ValidatePipelineRequest {
            pipeline: Some(held(&target, "fine", "h", "z")),
        })
        .await
        .unwrap()
        .into_inner()
        .problems;
    assert!(fine.is_empty(), "{fine:?}");
}

#[tokio::test]
async fn an_invalid_pipeline_is_refused_with_every_field_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    let mut client = pipelines(&executor).await;
    let refused = client
        .create_pipeline(CreatePipelineRequest {
            pipeline_id: "broken".into(),
            pipeline: Some(broken(&target)),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let problems: Vec<(String, String)> = almanac_proto::status::field_violations(&refused)
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect();
    assert_all_named(&problems);
    assert_eq!(
        get(&executor, "broken", 0).await.unwrap_err().code(),
        Code::NotFound
    );
    let listed = client
        .list_pipelines(ListPipelinesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pipelines;
    assert!(listed.is_empty(), "{listed:?}");

    // An update to an invalid definition is refused the same way; version 1 stays.
    create(&executor, held(&target, "kept", "h", "z")).await;
    let mut bad = broken(&target);
    bad.id = "kept".into();
    let refused = client
        .update_pipeline(UpdatePipelineRequest {
            pipeline: Some(bad),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let fields: BTreeSet<String> = almanac_proto::status::field_violations(&refused)
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains("pipeline.edges[start->ghost].to"),
        "{fields:?}"
    );
    let kept = get(&executor, "kept", 0).await.unwrap();
    assert_eq!(kept.version, 1);
}
