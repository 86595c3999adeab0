//! The bad-input table of pipeline validation: one broken definition per row, the field
//! each problem must name, and a valid diamond that passes.

use super::*;
use almanac_proto::executor::v1::{
    CallApiAction, ConditionNode, DelayNode, Edge, EdgeWhen, ExecutePipelineAction, Node,
    ParallelNode, TriggerNode,
};
use almanac_proto::time::ms_to_duration;

fn n(id: &str, kind: Kind) -> Node {
    Node {
        id: id.into(),
        kind: Some(kind),
        ..Default::default()
    }
}
fn trigger(id: &str) -> Node {
    n(id, Kind::Trigger(TriggerNode {}))
}
fn call(id: &str, url: &str) -> Node {
    n(
        id,
        Kind::Action(Action {
            kind: Some(action::Kind::CallApi(CallApiAction {
                url: url.into(),
                ..Default::default()
            })),
        }),
    )
}
fn condition(id: &str, expression: &str) -> Node {
    n(
        id,
        Kind::Condition(ConditionNode {
            expression: expression.into(),
        }),
    )
}
fn e(from: &str, to: &str) -> Edge {
    el(from, to, EdgeWhen::Always)
}
fn el(from: &str, to: &str, when: EdgeWhen) -> Edge {
    Edge {
        from: from.into(),
        to: to.into(),
        when: when as i32,
    }
}
fn pipeline(nodes: Vec<Node>, edges: Vec<Edge>) -> Pipeline {
    Pipeline {
        id: "p".into(),
        nodes,
        edges,
        ..Default::default()
    }
}

fn diamond() -> Pipeline {
    pipeline(
        vec![
            trigger("start"),
            n("fan", Kind::Parallel(ParallelNode {})),
            call("left", "http://127.0.0.1:1/l?x={{ input.x }}"),
            call("right", "http://127.0.0.1:1/r/{{ nodes.fan.status }}"),
            condition("check", "nodes.left.output.status == 200"),
            call("done", "http://127.0.0.1:1/done"),
        ],
        vec![
            e("start", "fan"),
            e("fan", "left"),
            e("fan", "right"),
            e("left", "check"),
            e("right", "check"),
            el("check", "done", EdgeWhen::True),
        ],
    )
}

#[test]
fn a_valid_diamond_passes() {
    assert_eq!(validate(&diamond()), []);
}

/// `(what, broken pipeline, a field the problems must name, words of the message)`.
#[test]
fn every_problem_is_reported_with_its_node_or_edge() {
    let with = |f: &dyn Fn(&mut Pipeline)| {
        let mut p = diamond();
        f(&mut p);
        p
    };
    let table: Vec<(&str, Pipeline, &str, &str)> = vec![
        (
            "no nodes",
            pipeline(vec![], vec![]),
            "pipeline.nodes",
            "at least one node",
        ),
        (
            "duplicate ids",
            with(&|p| p.nodes.push(call("left", "http://x/"))),
            "pipeline.nodes[left].id",
            "duplicate",
        ),
        (
            "unknown kind",
            with(&|p| p.nodes[1].kind = None),
            "pipeline.nodes[fan].kind",
            "unknown or missing kind",
        ),
        (
            "edge to a missing node",
            with(&|p| p.edges.push(e("left", "ghost"))),
            "pipeline.edges[left->ghost].to",
            "no node",
        ),
        (
            "edge from a missing node",
            with(&|p| p.edges.push(e("ghost", "left"))),
            "pipeline.edges[ghost->left].from",
            "no node",
        ),
        (
            "a cycle",
            with(&|p| p.edges.push(e("check", "fan"))),
            "pipeline.edges",
            "cycle through",
        ),
        (
            "unreachable node",
            with(&|p| p.nodes.push(call("island", "http://x/"))),
            "pipeline.nodes[island]",
            "not reachable",
        ),
        (
            "no trigger",
            with(&|p| p.nodes[0] = call("start", "http://x/")),
            "pipeline.nodes",
            "trigger",
        ),
        (
            "TRUE out of a non-condition",
            with(&|p| p.edges[1].when = EdgeWhen::True as i32),
            "pipeline.edges[fan->left].when",
            "not a condition",
        ),
        (
            "unlabelled edge out of a condition",
            with(&|p| p.edges[5].when = EdgeWhen::Always as i32),
            "pipeline.edges[check->done].when",
            "TRUE or FALSE",
        ),
        (
            "CEL that does not compile",
            with(&|p| p.nodes[4] = condition("check", "nodes.left.output.status ==")),
            "pipeline.nodes[check].condition.expression",
            "does not compile",
        ),
        (
            "CEL with an unknown name",
            with(&|p| p.nodes[4] = condition("check", "secret == 1")),
            "pipeline.nodes[check].condition.expression",
            "unknown variable",
        ),
        (
            "a template that does not parse",
            with(&|p| p.nodes[2] = call("left", "http://x/{{ input.x ")),
            "pipeline.nodes[left].action.call_api.url",
            "does not parse",
        ),
        (
            "a template with an unknown root",
            with(&|p| p.nodes[2] = call("left", "http://x/{{ secrets.token }}")),
            "pipeline.nodes[left].action.call_api.url",
            "unknown template",
        ),
        (
            "a nested pipeline",
            with(&|p| {
                p.nodes[2] = n(
                    "left",
                    Kind::Action(Action {
                        kind: Some(action::Kind::ExecutePipeline(
                            ExecutePipelineAction::default(),
                        )),
                    }),
                )
            }),
            "pipeline.nodes[left].action.execute_pipeline",
            "cannot run another pipeline",
        ),
        (
            "a delay over the maximum",
            with(&|p| {
                p.nodes[1] = n(
                    "fan",
                    Kind::Delay(DelayNode {
                        duration: Some(ms_to_duration(MAX_DELAY_MS + 1)),
                    }),
                )
            }),
            "pipeline.nodes[fan].delay.duration",
            "at most",
        ),
        (
            "a delay without a duration",
            with(&|p| p.nodes[1] = n("fan", Kind::Delay(DelayNode { duration: None }))),
            "pipeline.nodes[fan].delay.duration",
            "required",
        ),
        (
            "a call without its url",
            with(&|p| p.nodes[5] = call("done", "")),
            "pipeline.nodes[done].action.call_api.url",
            "required",
        ),
        (
            "an edge into a trigger",
            with(&|p| p.edges.push(e("done", "start"))),
            "pipeline.edges[done->start].to",
            "trigger",
        ),
    ];
    for (what, p, field, words) in table {
        let problems = validate(&p);
        assert!(
            problems
                .iter()
                .any(|v| v.field == field && v.description.contains(words)),
            "{what}: expected {field} ~ {words:?}, got {problems:#?}"
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut p = diamond();
    p.nodes[1].kind = None;
    p.edges.push(e("left", "ghost"));
    p.nodes[4] = condition("check", "((");
    let fields: Vec<String> = validate(&p).into_iter().map(|v| v.field).collect();
    for expected in [
        "pipeline.nodes[fan].kind",
        "pipeline.edges[left->ghost].to",
        "pipeline.nodes[check].condition.expression",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} missing from {fields:?}"
        );
    }
}
