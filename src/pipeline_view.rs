//! Pipelines as text for people: the `key  value` block, node table and edge table of
//! `pipeline get`, the table of `pipeline list`, and the short node kind names the live
//! view shares.

use almanac_proto::executor::v1::{
    Action, CircuitBreaker, EdgeWhen, Join, Node, Pipeline, RetryPolicy, action, node::Kind,
};

use crate::output::{self, Table, label, time};
use crate::schedule_view;

/// `trigger`, `parallel`, `condition`, `delay`, `task`, or the action's kind (`call_api`).
pub fn node_kind(node: &Node) -> String {
    match &node.kind {
        Some(Kind::Trigger(_)) => "trigger".to_owned(),
        Some(Kind::Task(_)) => "task".to_owned(),
        Some(Kind::Action(a)) => a
            .kind
            .as_ref()
            .map_or("action", almanac_proto::action::kind_name)
            .to_owned(),
        Some(Kind::Condition(_)) => "condition".to_owned(),
        Some(Kind::Parallel(_)) => "parallel".to_owned(),
        Some(Kind::Delay(_)) => "delay".to_owned(),
        None => "?".to_owned(),
    }
}

/// What the node does, in a few words: the call, the queue, the expression, the wait
/// (without the kind, which has its own column).
fn node_config(node: &Node) -> String {
    let action = match &node.kind {
        Some(Kind::Task(task)) => Action {
            kind: Some(action::Kind::RunTask(task.clone())),
        },
        Some(Kind::Action(a)) => a.clone(),
        Some(Kind::Condition(c)) => return c.expression.clone(),
        Some(Kind::Delay(d)) => return output::duration(d.duration.as_ref()),
        Some(Kind::Trigger(_) | Kind::Parallel(_)) | None => return String::new(),
    };
    let text = schedule_view::action(Some(&action));
    match action.kind.as_ref().map(almanac_proto::action::kind_name) {
        Some(name) => text
            .strip_prefix(name)
            .map_or(text.clone(), |rest| rest.trim_start().to_owned()),
        None => text,
    }
}

/// `3 tries, 1s..1m x2`, with the proto defaults filled in; `-` when absent.
pub fn retry(policy: Option<&RetryPolicy>) -> String {
    let Some(p) = policy else {
        return "-".to_owned();
    };
    let tries = if p.max_attempts == 0 {
        3
    } else {
        p.max_attempts
    };
    if tries == 1 {
        return "no retry".to_owned();
    }
    let initial = p
        .initial_backoff
        .as_ref()
        .map_or("1s".to_owned(), |d| output::duration(Some(d)));
    let max = p
        .max_backoff
        .as_ref()
        .map_or("1m".to_owned(), |d| output::duration(Some(d)));
    let multiplier = if p.multiplier == 0.0 {
        2.0
    } else {
        p.multiplier
    };
    format!("{tries} tries, {initial}..{max} x{multiplier}")
}

fn breaker(b: Option<&CircuitBreaker>) -> String {
    match b {
        Some(b) if b.failure_threshold > 0 => {
            let cool_down = b
                .cool_down
                .as_ref()
                .map_or("1m".to_owned(), |d| output::duration(Some(d)));
            format!("{} failures, {cool_down}", b.failure_threshold)
        }
        _ => "-".to_owned(),
    }
}

fn join(value: i32) -> String {
    match Join::try_from(value) {
        Ok(Join::Unspecified) => "any".to_owned(),
        Ok(j) => label(j.as_str_name(), "JOIN_"),
        Err(_) => value.to_string(),
    }
}

/// `always`, `true`, `false`, `on_failure`.
pub fn when(value: i32) -> String {
    match EdgeWhen::try_from(value) {
        Ok(EdgeWhen::Unspecified) => "always".to_owned(),
        Ok(w) => label(w.as_str_name(), "EDGE_WHEN_"),
        Err(_) => value.to_string(),
    }
}

/// The text of `pipeline get` (and of create's and update's answers).
pub fn render_pipeline(p: &Pipeline) -> Vec<String> {
    let parallelism = match p.max_parallelism {
        0 => String::new(),
        n => n.to_string(),
    };
    let mut lines = output::render_fields(&[
        ("id", p.id.clone()),
        ("version", p.version.to_string()),
        ("name", p.display_name.clone()),
        ("description", p.description.clone()),
        (
            "created",
            p.create_time
                .as_ref()
                .map_or_else(String::new, |t| time(Some(t))),
        ),
        (
            "timeout",
            p.timeout
                .as_ref()
                .map_or_else(String::new, |d| output::duration(Some(d))),
        ),
        ("parallelism", parallelism),
        (
            "default retry",
            p.default_retry
                .as_ref()
                .map_or_else(String::new, |r| retry(Some(r))),
        ),
    ]);
    lines.push(String::new());
    let mut nodes = Table::new(&[
        "NODE", "KIND", "JOIN", "RETRY", "TIMEOUT", "BREAKER", "CONFIG",
    ]);
    for n in &p.nodes {
        nodes.row(vec![
            n.id.clone(),
            node_kind(n),
            join(n.join),
            retry(n.retry.as_ref()),
            output::duration(n.timeout.as_ref()),
            breaker(n.circuit_breaker.as_ref()),
            node_config(n),
        ]);
    }
    lines.extend(nodes.render());
    if !p.edges.is_empty() {
        lines.push(String::new());
        let mut edges = Table::new(&["FROM", "TO", "WHEN"]);
        for e in &p.edges {
            edges.row(vec![e.from.clone(), e.to.clone(), when(e.when)]);
        }
        lines.extend(edges.render());
    }
    lines
}

/// The one-row-per-pipeline table of `pipeline list`.
pub fn pipeline_table(pipelines: &[Pipeline]) -> Table {
    let mut table = Table::new(&["ID", "VERSION", "NODES", "EDGES", "CREATED", "NAME"]);
    for p in pipelines {
        table.row(vec![
            p.id.clone(),
            p.version.to_string(),
            p.nodes.len().to_string(),
            p.edges.len().to_string(),
            time(p.create_time.as_ref()),
            output::or_dash(&p.display_name),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline_file::{Format, parse_pipeline};

    #[test]
    fn get_shows_nodes_with_kind_join_retry_timeout_and_labelled_edges() {
        let p = parse_pipeline(
            r#"
id: demo
version: 2
timeout: 2m
defaultRetry: {maxAttempts: 3}
nodes:
  - {id: start, trigger: {}}
  - id: fetch
    timeout: 10s
    retry: {maxAttempts: 5, initialBackoff: 2s, maxBackoff: 30s, multiplier: 1.5}
    circuitBreaker: {failureThreshold: 4}
    action: {callApi: {url: "http://127.0.0.1:8080/"}}
  - {id: ok, join: ALL, condition: {expression: "nodes.fetch.output.status == 200"}}
  - {id: wait, delay: {duration: 2s}}
edges:
  - {from: start, to: fetch}
  - {from: fetch, to: ok}
  - {from: ok, to: wait, when: TRUE}
"#,
            Format::Yaml,
        )
        .unwrap();
        let lines = render_pipeline(&p);
        let text = lines.join("\n");
        assert!(lines.contains(&"id             demo".to_owned()), "{text}");
        assert!(
            lines.contains(&"default retry  3 tries, 1s..1m x2".to_owned()),
            "{text}"
        );
        let row = |id: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(&format!("{id} ")))
                .unwrap_or_else(|| panic!("no row {id}: {text}"))
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("fetch"),
            [
                "fetch",
                "call_api",
                "any",
                "5 tries, 2s..30s x1.5",
                "10s",
                "4 failures, 1m",
                "GET http://127.0.0.1:8080/"
            ]
        );
        assert_eq!(
            row("ok"),
            [
                "ok",
                "condition",
                "all",
                "-",
                "-",
                "-",
                "nodes.fetch.output.status == 200"
            ]
        );
        assert_eq!(row("wait"), ["wait", "delay", "any", "-", "-", "-", "2s"]);
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().eq(["ok", "wait", "true"])),
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().eq(["start", "fetch", "always"])),
            "{text}"
        );
    }
}
