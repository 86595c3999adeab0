//! Pipeline validation (DESIGN §5.3): every problem at once, each naming the node or
//! edge it concerns — at create, update, `ValidatePipeline`, and before a run. Invalid
//! pipelines are never stored.

use std::collections::{HashMap, HashSet};

use almanac_proto::action::{FieldViolation, validate as validate_action};
use almanac_proto::executor::v1::{Action, Pipeline, action, node::Kind};
use almanac_proto::time::duration_to_ms;

use super::cel::compile_condition;
use super::graph::{When, topological_order};
use crate::actions::templates;

/// The longest delay a node may ask for.
pub const MAX_DELAY_MS: i64 = 24 * 3_600_000;
/// The most nodes of one pipeline.
pub const MAX_NODES: usize = 500;
/// The most edges of one pipeline.
pub const MAX_EDGES: usize = 2_000;
/// The longest node id.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Template roots a pipeline node may use besides the run context.
pub const PIPELINE_ROOTS: &[&str] = &["input", "nodes"];

/// The path of a node's field.
fn at(node: &str, field: &str) -> String {
    if field.is_empty() {
        format!("pipeline.nodes[{node}]")
    } else {
        format!("pipeline.nodes[{node}].{field}")
    }
}

/// Every problem of a definition; empty when it can be stored and run.
pub fn validate(p: &Pipeline) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let mut bad =
        |field: String, description: String| out.push(FieldViolation::new(field, description));
    if p.nodes.is_empty() {
        bad(
            "pipeline.nodes".into(),
            "a pipeline needs at least one node (a trigger)".into(),
        );
    }
    if p.nodes.len() > MAX_NODES {
        bad(
            "pipeline.nodes".into(),
            format!("at most {MAX_NODES} nodes"),
        );
    }
    if p.edges.len() > MAX_EDGES {
        bad(
            "pipeline.edges".into(),
            format!("at most {MAX_EDGES} edges"),
        );
    }

    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, node) in p.nodes.iter().enumerate() {
        let id = node.id.as_str();
        let valid_id = !id.is_empty()
            && id.len() <= MAX_NODE_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_id {
            bad(
                format!("pipeline.nodes[{i}].id"),
                format!("{id:?} is not a node id: 1-{MAX_NODE_ID_LEN} letters, digits, '_' or '-'"),
            );
        }
        if seen.insert(id, i).is_some() {
            bad(at(id, "id"), format!("duplicate node id {id:?}"));
        }
        check_node(node, &mut bad);
    }

    // Edges: known ends, labels that fit their source.
    let kinds: HashMap<&str, Option<&Kind>> = p
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.kind.as_ref()))
        .collect();
    let mut edge_keys = HashSet::new();
    for edge in &p.edges {
        let path = format!("pipeline.edges[{}->{}]", edge.from, edge.to);
        for (end, name) in [(&edge.from, "from"), (&edge.to, "to")] {
            if !kinds.contains_key(end.as_str()) {
                bad(
                    format!("{path}.{name}"),
                    format!("there is no node {end:?}"),
                );
            }
        }
        let Some(when) = When::from_proto(edge.when) else {
            bad(
                format!("{path}.when"),
                format!("unknown enum value {}", edge.when),
            );
            continue;
        };
        if !edge_keys.insert((edge.from.as_str(), edge.to.as_str(), edge.when)) {
            bad(path.clone(), "duplicate edge".into());
        }
        let from_condition = matches!(
            kinds.get(edge.from.as_str()),
            Some(Some(Kind::Condition(_)))
        );
        match (from_condition, when) {
            (true, When::Always) => bad(
                format!("{path}.when"),
                "an edge out of a condition must be labelled TRUE or FALSE (or ON_FAILURE)".into(),
            ),
            (false, When::True | When::False) => bad(
                format!("{path}.when"),
                format!(
                    "{} is not a condition: only a condition's edges may be TRUE or FALSE",
                    edge.from
                ),
            ),
            _ => {}
        }
        if matches!(kinds.get(edge.to.as_str()), Some(Some(Kind::Trigger(_)))) {
            bad(
                format!("{path}.to"),
                format!("{} is a trigger: nothing may lead into a trigger", edge.to),
            );
        }
    }

    // Structure: no cycle, every node reachable from a trigger.
    let index: HashMap<&str, usize> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut outgoing = vec![Vec::new(); p.nodes.len()];
    for edge in &p.edges {
        if let (Some(&f), Some(&t)) = (index.get(edge.from.as_str()), index.get(edge.to.as_str())) {
            outgoing[f].push((t, When::Always));
        }
    }
    if let Err(cycle) = topological_order(p.nodes.len(), &outgoing) {
        let names: Vec<&str> = cycle.iter().map(|&i| p.nodes[i].id.as_str()).collect();
        bad(
            "pipeline.edges".into(),
            format!("cycle through {}", names.join(", ")),
        );
    }
    let triggers: Vec<usize> = p
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.kind, Some(Kind::Trigger(_))))
        .map(|(i, _)| i)
        .collect();
    if triggers.is_empty() && !p.nodes.is_empty() {
        bad(
            "pipeline.nodes".into(),
            "a pipeline needs a trigger node".into(),
        );
    }
    let mut reached = vec![false; p.nodes.len()];
    let mut stack = triggers;
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut reached[i], true) {
            continue;
        }
        stack.extend(outgoing[i].iter().map(|(t, _)| *t));
    }
    for (i, node) in p.nodes.iter().enumerate() {
        if !reached[i] && !matches!(node.kind, Some(Kind::Trigger(_))) {
            bad(at(&node.id, ""), "not reachable from a trigger".into());
        }
    }

    if let Some(t) = &p.timeout
        && duration_to_ms(t).is_none_or(|ms| ms <= 0)
    {
        bad("pipeline.timeout".into(), "must be more than 0".into());
    }
    out
}

fn check_node(node: &almanac_proto::executor::v1::Node, bad: &mut impl FnMut(String, String)) {
    let id = node.id.as_str();
    let mut add_all = |violations: Vec<FieldViolation>| {
        for v in violations {
            bad(v.field, v.description);
        }
    };
    match &node.kind {
        None => bad(
            at(id, "kind"),
            "unknown or missing kind: one of trigger, task, action, condition, parallel, delay"
                .into(),
        ),
        Some(Kind::Trigger(_)) | Some(Kind::Parallel(_)) => {}
        Some(Kind::Task(task)) => {
            let action = Action {
                kind: Some(action::Kind::RunTask(task.clone())),
            };
            add_all(validate_action(Some(&action), &at(id, "task")));
            add_all(templates::check_in(
                &action,
                &at(id, "task"),
                PIPELINE_ROOTS,
            ));
        }
        Some(Kind::Action(action)) => {
            if let Some(action::Kind::ExecutePipeline(_)) = action.kind {
                bad(
                    at(id, "action.execute_pipeline"),
                    "a pipeline cannot run another pipeline".into(),
                );
            } else {
                add_all(validate_action(Some(action), &at(id, "action")));
                add_all(templates::check_in(
                    action,
                    &at(id, "action"),
                    PIPELINE_ROOTS,
                ));
            }
        }
        Some(Kind::Condition(c)) => {
            if c.expression.trim().is_empty() {
                bad(at(id, "condition.expression"), "required".into());
            } else if let Err(problem) = compile_condition(&c.expression) {
                bad(at(id, "condition.expression"), problem);
            }
        }
        Some(Kind::Delay(d)) => match d.duration.as_ref().and_then(duration_to_ms) {
            None => bad(at(id, "delay.duration"), "required".into()),
            Some(ms) if ms <= 0 => bad(at(id, "delay.duration"), "must be more than 0".into()),
            Some(ms) if ms > MAX_DELAY_MS => bad(
                at(id, "delay.duration"),
                format!("at most {}h", MAX_DELAY_MS / 3_600_000),
            ),
            Some(_) => {}
        },
    }
    if let Some(t) = &node.timeout
        && duration_to_ms(t).is_none_or(|ms| ms <= 0)
    {
        bad(at(id, "timeout"), "must be more than 0".into());
    }
    if almanac_proto::executor::v1::Join::try_from(node.join).is_err() {
        bad(at(id, "join"), format!("unknown enum value {}", node.join));
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
