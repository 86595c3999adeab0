//! Pipeline graph semantics through the real `Execute` API (DESIGN §5.3): the branches of
//! a diamond run concurrently (proven by a rendezvous, not by timing); conditions pick
//! their TRUE or FALSE branch; SKIPPED propagates through `join: ANY` and `join: ALL`; an
//! ON_FAILURE branch runs only when its source failed after its retries and the execution
//! then succeeds with the failure listed; an unhandled failure cancels the running
//! sibling and the nodes not started; a template carries one node's output into the next
//! node's request.

mod common;
mod pipeline_support;

use almanac_proto::executor::v1::{CallApiAction, EdgeWhen, ExecutionStatus, NodeStatus};
use common::*;
use pipeline_support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_two_branches_of_a_diamond_run_concurrently_and_join_all_waits_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    // Each branch calls a barrier that answers only once BOTH requests are in: run one
    // after the other, the first would get a 500 after the barrier's wait and fail.
    let barrier = "/barrier/diamond/2";
    create(
        &executor,
        pipeline(
            "diamond",
            vec![
                trigger("start"),
                parallel("fan"),
                api("left", &target.url(barrier)),
                api("right", &target.url(barrier)),
                join_all(parallel("done")),
            ],
            vec![
                edge("start", "fan"),
                edge("fan", "left"),
                edge("fan", "right"),
                edge("left", "done"),
                edge("right", "done"),
            ],
        ),
    )
    .await;

    let events = run(&executor, "diamond-1", "diamond", json!({})).await;
    let finish = finished(&events);
    assert_eq!(
        finish.status,
        ExecutionStatus::Succeeded as i32,
        "{finish:?}"
    );
    assert_eq!(target.hits_on(barrier).len(), 2);
    let execution = execution(&executor, "diamond-1").await;
    for node in ["start", "fan", "left", "right", "done"] {
        assert_eq!(
            row_statuses(&execution, node),
            [NodeStatus::Succeeded],
            "{node}"
        );
    }
    // Both branches started before either succeeded, and `done` only after both.
    let at = |kind: &str, node: &str| event_index(&events, kind, node);
    for (a, b) in [("left", "right"), ("right", "left")] {
        assert!(at("NodeStarted", a) < at("NodeSucceeded", b), "{a} / {b}");
        assert!(at("NodeSucceeded", a) < at("NodeStarted", "done"));
    }
    assert_eq!(
        result(&execution)["outputs"]["done"],
        json!({}),
        "the leaf's output (the input passed through) is the result"
    );
}

/// trigger → fetch → check (count > input.threshold) —TRUE→ big, —FALSE→ small.
async fn branching_pipeline(executor: &Executor, target: &Scripted) {
    target.script("/fetch", vec![Reply::json(json!({ "count": 12 }))]);
    create(
        executor,
        pipeline(
            "branch",
            vec![
                trigger("start"),
                api("fetch", &target.url("/fetch")),
                condition("check", "nodes.fetch.output.body.count > input.threshold"),
                api("big", &target.url("/big")),
                api("small", &target.url("/small")),
            ],
            vec![
                edge("start", "fetch"),
                edge("fetch", "check"),
                edge_when("check", "big", EdgeWhen::True),
                edge_when("check", "small", EdgeWhen::False),
            ],
        ),
    )
    .await;
}

#[tokio::test]
async fn a_condition_takes_its_true_branch_or_its_false_branch_and_skips_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    branching_pipeline(&executor, &target).await;

    let events = run(&executor, "true-path", "branch", json!({"threshold": 10})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(nodes_of(&events, "NodeSkipped"), ["small"]);
    let e = execution(&executor, "true-path").await;
    assert_eq!(row_statuses(&e, "check"), [NodeStatus::Succeeded]);
    assert_eq!(json(rows(&e, "check")[0].output.as_ref().unwrap()), true);
    assert_eq!(row_statuses(&e, "big"), [NodeStatus::Succeeded]);
    assert_eq!(row_statuses(&e, "small"), [NodeStatus::Skipped]);
    assert_eq!(
        (target.hits_on("/big").len(), target.hits_on("/small").len()),
        (1, 0)
    );

    let events = run(&executor, "false-path", "branch", json!({"threshold": 20})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    assert_eq!(nodes_of(&events, "NodeSkipped"), ["big"]);
    let e = execution(&executor, "false-path").await;
    assert_eq!(json(rows(&e, "check")[0].output.as_ref().unwrap()), false);
    assert_eq!(row_statuses(&e, "big"), [NodeStatus::Skipped]);
    assert_eq!(row_statuses(&e, "small"), [NodeStatus::Succeeded]);
    assert_eq!(
        (target.hits_on("/big").len(), target.hits_on("/small").len()),
        (1, 1)
    );
    assert_eq!(
        result(&e)["outputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["small"],
        "only leaves that succeeded make the result"
    );
}

#[tokio::test]
async fn a_skip_propagates_through_join_any_and_join_all() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    // go —TRUE→ yes, —FALSE→ no; yes & no → any (ANY) and all (ALL); no → after_no;
    // all → after_all (calls the target if it ever runs); any → after_any.
    create(
        &executor,
        pipeline(
            "skips",
            vec![
                trigger("start"),
                condition("go", "input.go"),
                parallel("yes"),
                parallel("no"),
                parallel("after_no"),
                parallel("any"),
                join_all(parallel("all")),
                api("after_all", &target.url("/after_all")),
                api("after_any", &target.url("/after_any")),
            ],
            vec![
                edge("start", "go"),
                edge_when("go", "yes", EdgeWhen::True),
                edge_when("go", "no", EdgeWhen::False),
                edge("no", "after_no"),
                edge("yes", "any"),
                edge("no", "any"),
                edge("yes", "all"),
                edge("no", "all"),
                edge("all", "after_all"),
                edge("any", "after_any"),
            ],
        ),
    )
    .await;

    let events = run(&executor, "skips-1", "skips", json!({"go": true})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    let mut skipped = nodes_of(&events, "NodeSkipped");
    skipped.sort();
    assert_eq!(skipped, ["after_all", "after_no", "all", "no"]);
    let e = execution(&executor, "skips-1").await;
    for node in ["no", "after_no", "all", "after_all"] {
        assert_eq!(row_statuses(&e, node), [NodeStatus::Skipped], "{node}");
    }
    for node in ["yes", "any", "after_any"] {
        assert_eq!(row_statuses(&e, node), [NodeStatus::Succeeded], "{node}");
    }
    let all = rows(&e, "all")[0];
    assert!(all.error.contains("join ALL: 1 of 2"), "{}", all.error);
    assert!(target.hits_on("/after_all").is_empty());
    assert_eq!(target.hits_on("/after_any").len(), 1);
}

/// trigger → risky (3 tries) —ON_FAILURE→ recover; risky → next.
async fn guarded_pipeline(executor: &Executor, target: &Scripted) {
    create(
        executor,
        pipeline(
            "guarded",
            vec![
                trigger("start"),
                retrying(api("risky", &target.url("/risky")), 3),
                api("recover", &target.url("/recover")),
                api("next", &target.url("/next")),
            ],
            vec![
                edge("start", "risky"),
                edge_when("risky", "recover", EdgeWhen::OnFailure),
                edge("risky", "next"),
            ],
        ),
    )
    .await;
}

#[tokio::test]
async fn an_on_failure_branch_runs_only_after_the_retries_fail_and_the_execution_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    guarded_pipeline(&executor, &target).await;

    // A failure on the first try that the retry absorbs: the branch does not run.
    target.script("/risky", vec![Reply::status(500), Reply::status(200)]);
    let events = run(&executor, "absorbed", "guarded", json!({})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    let e = execution(&executor, "absorbed").await;
    assert_eq!(
        row_statuses(&e, "risky"),
        [NodeStatus::Failed, NodeStatus::Succeeded]
    );
    assert_eq!(row_statuses(&e, "recover"), [NodeStatus::Skipped]);
    assert_eq!(row_statuses(&e, "next"), [NodeStatus::Succeeded]);
    assert!(target.hits_on("/recover").is_empty());
    assert_eq!(result(&e)["handled_failures"], json!([]));

    // Every try fails: the branch runs, the failure is handled and listed.
    target.script("/risky", vec![Reply::status(500)]);
    let events = run(&executor, "handled", "guarded", json!({})).await;
    let finish = finished(&events);
    assert_eq!(
        finish.status,
        ExecutionStatus::Succeeded as i32,
        "{finish:?}"
    );
    assert_eq!(target.hits_on("/risky").len(), 2 + 3);
    assert_eq!(nodes_of(&events, "NodeRetrying"), ["risky", "risky"]);
    let e = execution(&executor, "handled").await;
    assert_eq!(row_statuses(&e, "risky"), [NodeStatus::Failed; 3]);
    assert_eq!(row_statuses(&e, "recover"), [NodeStatus::Succeeded]);
    assert_eq!(row_statuses(&e, "next"), [NodeStatus::Skipped]);
    assert_eq!(target.hits_on("/recover").len(), 1);
    let handled = result(&e)["handled_failures"].clone();
    assert_eq!(handled.as_array().unwrap().len(), 1, "{handled}");
    assert_eq!(handled[0]["node"], "risky");
    let error = handled[0]["error"].as_str().unwrap();
    assert!(
        error.contains("failed after 3 tries") && error.contains("500"),
        "{error}"
    );
    assert!(result(&e)["outputs"].get("recover").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unhandled_failure_cancels_the_running_sibling_and_the_nodes_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    // `boom` answers 400 only once `slow` is in flight at the target; `slow` would take
    // 30 s (its call's timeout is longer) if it were not cut.
    target.script("/slow", vec![Reply::status(200).after(30_000)]);
    let mut slow = CallApiAction {
        url: target.url("/slow"),
        timeout: Some(almanac_proto::time::ms_to_duration(60_000)),
        ..Default::default()
    };
    slow.method = "GET".into();
    create(
        &executor,
        pipeline(
            "doomed",
            vec![
                trigger("start"),
                parallel("fan"),
                api("boom", &target.url("/gate/400/slow")),
                api_with("slow", slow),
                api("after_boom", &target.url("/after_boom")),
                api("after_slow", &target.url("/after_slow")),
            ],
            vec![
                edge("start", "fan"),
                edge("fan", "boom"),
                edge("fan", "slow"),
                edge("boom", "after_boom"),
                edge("slow", "after_slow"),
            ],
        ),
    )
    .await;

    let started = std::time::Instant::now();
    let events = run(&executor, "doomed-1", "doomed", json!({})).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the slow sibling was cut, not waited for"
    );
    let finish = finished(&events);
    assert_eq!(finish.status, ExecutionStatus::Failed as i32, "{finish:?}");
    assert!(
        finish.error.starts_with("node boom failed") && finish.error.contains("400"),
        "{}",
        finish.error
    );
    let e = execution(&executor, "doomed-1").await;
    assert_eq!(row_statuses(&e, "boom"), [NodeStatus::Failed]);
    assert_eq!(row_statuses(&e, "slow"), [NodeStatus::Cancelled]);
    assert!(
        rows(&e, "slow")[0].error.contains("another node"),
        "{}",
        rows(&e, "slow")[0].error
    );
    for node in ["after_boom", "after_slow"] {
        assert_eq!(row_statuses(&e, node), [NodeStatus::Cancelled], "{node}");
        assert_eq!(rows(&e, node)[0].attempt, 0, "{node} never started");
    }
    assert_eq!(target.hits_on("/slow").len(), 1);
    assert!(target.hits_on("/after_boom").is_empty());
    assert!(target.hits_on("/after_slow").is_empty());
}

#[tokio::test]
async fn a_template_carries_a_value_from_one_nodes_output_into_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let target = Scripted::start().await;
    let executor = Executor::start(&dir.path().join("e.db")).await;
    target.script("/token", vec![Reply::json(json!({ "token": "tok-7f3a" }))]);
    let mut use_it = CallApiAction {
        method: "POST".into(),
        url: format!(
            "{}/use/{{{{ nodes.fetch.output.body.token }}}}",
            target.base
        ),
        ..Default::default()
    };
    use_it.headers.insert(
        "x-token".into(),
        "{{ nodes.fetch.output.body.token }}".into(),
    );
    use_it
        .headers
        .insert("x-user".into(), "{{ input.user }}".into());
    create(
        &executor,
        pipeline(
            "carry",
            vec![
                trigger("start"),
                api("fetch", &target.url("/token")),
                api_with("use", use_it),
            ],
            vec![edge("start", "fetch"), edge("fetch", "use")],
        ),
    )
    .await;

    let events = run(&executor, "carry-1", "carry", json!({"user": "ada"})).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    let hits = target.hits_on("/use/tok-7f3a");
    assert_eq!(hits.len(), 1, "{:?}", target.hits());
    assert_eq!(hits[0].method, "POST");
    assert_eq!(hits[0].header("x-token"), Some("tok-7f3a"));
    assert_eq!(hits[0].header("x-user"), Some("ada"));
    assert_eq!(hits[0].header("idempotency-key"), Some("carry-1/use"));
}
