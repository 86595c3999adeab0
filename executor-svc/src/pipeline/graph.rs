//! The DAG semantics of DESIGN §5.3 as pure functions over node states: when an edge is
//! taken, when a node is ready, when it runs or is SKIPPED (which propagates), and when a
//! failure is handled. The runner asks; this module never waits and never writes.

use std::collections::HashMap;

use almanac_proto::executor::v1::{EdgeWhen, Join, Pipeline, node::Kind};

/// When an edge is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The source SUCCEEDED.
    Always,
    /// The source is a condition that succeeded with true.
    True,
    /// The source is a condition that succeeded with false.
    False,
    /// The source FAILED after its retries.
    OnFailure,
}

impl When {
    /// The wire value as a `When` (unknown values are refused by validation).
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match EdgeWhen::try_from(value).ok()? {
            EdgeWhen::Unspecified | EdgeWhen::Always => Self::Always,
            EdgeWhen::True => Self::True,
            EdgeWhen::False => Self::False,
            EdgeWhen::OnFailure => Self::OnFailure,
        })
    }
}

/// Where a node is in one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started: waiting for its predecessors.
    Pending,
    /// Started, not finished.
    Running,
    /// Finished well; a condition carries its value.
    Succeeded(Option<bool>),
    /// Failed after its retries.
    Failed,
    /// Not run: no incoming edge (ANY) or not every one (ALL) was taken.
    Skipped,
    /// Not run or stopped: the execution failed or was cancelled.
    Cancelled,
}

impl State {
    /// Whether nothing will change this state again.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

/// What the runner must do with a node now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start it.
    Run(usize),
    /// Record it SKIPPED with this reason (already applied to the states).
    Skip(usize, String),
}

/// A pipeline's nodes and edges by index, in topological order.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Node ids by index.
    pub ids: Vec<String>,
    /// Nodes that run without predecessors: triggers (the single node of a single-action
    /// execution too).
    roots: Vec<bool>,
    join_all: Vec<bool>,
    incoming: Vec<Vec<(usize, When)>>,
    outgoing: Vec<Vec<(usize, When)>>,
    /// Node indexes, every node after its predecessors.
    pub order: Vec<usize>,
    by_id: HashMap<String, usize>,
}

impl Graph {
    /// The graph of a pipeline that passed validation (unknown edge ends are dropped).
    pub fn new(pipeline: &Pipeline) -> Self {
        let ids: Vec<String> = pipeline.nodes.iter().map(|n| n.id.clone()).collect();
        let by_id: HashMap<String, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i))
            .collect();
        let n = ids.len();
        let mut incoming = vec![Vec::new(); n];
        let mut outgoing = vec![Vec::new(); n];
        for edge in &pipeline.edges {
            if let (Some(&from), Some(&to), Some(when)) = (
                by_id.get(&edge.from),
                by_id.get(&edge.to),
                When::from_proto(edge.when),
            ) {
                outgoing[from].push((to, when));
                incoming[to].push((from, when));
            }
        }
        let roots = pipeline
            .nodes
            .iter()
            .map(|node| matches!(node.kind, Some(Kind::Trigger(_))))
            .collect();
        let join_all = pipeline
            .nodes
            .iter()
            .map(|node| node.join == Join::All as i32)
            .collect();
        let order = topological_order(n, &outgoing).unwrap_or_else(|_| (0..n).collect());
        Self {
            ids,
            roots,
            join_all,
            incoming,
            outgoing,
            order,
            by_id,
        }
    }

    /// The graph of a single-action execution: one root node.
    pub fn single(id: &str) -> Self {
        Self {
            ids: vec![id.to_owned()],
            roots: vec![true],
            join_all: vec![false],
            incoming: vec![Vec::new()],
            outgoing: vec![Vec::new()],
            order: vec![0],
            by_id: HashMap::from([(id.to_owned(), 0)]),
        }
    }

    /// Every node a node depends on, directly or not.
    pub fn ancestors(&self, node: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut stack: Vec<usize> = self.incoming[node].iter().map(|(f, _)| *f).collect();
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(self.incoming[i].iter().map(|(f, _)| *f));
            }
        }
        (0..self.len()).filter(|&i| seen[i]).collect()
    }

    /// Nodes no edge leaves: their outputs make a pipeline's result.
    pub fn leaves(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.outgoing[i].is_empty())
            .collect()
    }

    /// The index of a node id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether an edge out of a node in state `from` is taken.
    pub fn edge_taken(when: When, from: State) -> bool {
        matches!(
            (when, from),
            (When::Always, State::Succeeded(_))
                | (When::True, State::Succeeded(Some(true)))
                | (When::False, State::Succeeded(Some(false)))
                | (When::OnFailure, State::Failed)
        )
    }

    /// Whether a failed node's failure is handled: one of its ON_FAILURE edges is taken.
    pub fn failure_handled(&self, node: usize) -> bool {
        self.outgoing[node]
            .iter()
            .any(|(_, when)| *when == When::OnFailure)
    }

    /// Decides every pending node that can be decided: triggers run; a node whose
    /// predecessors are all final runs when its join is satisfied and is SKIPPED
    /// otherwise. Skips are applied to `states` at once, so they propagate in one call.
    pub fn advance(&self, states: &mut [State]) -> Vec<Step> {
        let mut steps = Vec::new();
        for &i in &self.order {
            if states[i] != State::Pending {
                continue;
            }
            if self.roots[i] {
                steps.push(Step::Run(i));
                continue;
            }
            let incoming = &self.incoming[i];
            if incoming.iter().any(|(from, _)| !states[*from].is_final()) {
                continue;
            }
            let taken = incoming
                .iter()
                .filter(|(from, when)| Self::edge_taken(*when, states[*from]))
                .count();
            let runs = if self.join_all[i] {
                taken == incoming.len() && taken > 0
            } else {
                taken > 0
            };
            if runs {
                steps.push(Step::Run(i));
            } else {
                states[i] = State::Skipped;
                let reason = if incoming.is_empty() {
                    "no incoming edge".to_owned()
                } else if self.join_all[i] {
                    format!(
                        "join ALL: {taken} of {} incoming edges taken",
                        incoming.len()
                    )
                } else {
                    "join ANY: no incoming edge taken".to_owned()
                };
                steps.push(Step::Skip(i, reason));
            }
        }
        steps
    }
}

/// Nodes in an order where each comes after its predecessors, or the nodes left on a
/// cycle when there is none (Kahn's algorithm).
pub fn topological_order(
    n: usize,
    outgoing: &[Vec<(usize, When)>],
) -> Result<Vec<usize>, Vec<usize>> {
    let mut indegree = vec![0usize; n];
    for edges in outgoing {
        for (to, _) in edges {
            indegree[*to] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).rev().collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for (to, _) in outgoing[i].iter().rev() {
            indegree[*to] -= 1;
            if indegree[*to] == 0 {
                ready.push(*to);
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err((0..n).filter(|&i| indegree[i] > 0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::{ConditionNode, Edge, Node, ParallelNode, TriggerNode};

    fn node(id: &str, kind: Kind, join: Join) -> Node {
        Node {
            id: id.into(),
            kind: Some(kind),
            join: join as i32,
            ..Default::default()
        }
    }
    fn trigger(id: &str) -> Node {
        node(id, Kind::Trigger(TriggerNode {}), Join::Unspecified)
    }
    fn step(id: &str, join: Join) -> Node {
        node(id, Kind::Parallel(ParallelNode {}), join)
    }
    fn condition(id: &str) -> Node {
        node(
            id,
            Kind::Condition(ConditionNode {
                expression: "true".into(),
            }),
            Join::Unspecified,
        )
    }
    fn edge(from: &str, to: &str, when: EdgeWhen) -> Edge {
        Edge {
            from: from.into(),
            to: to.into(),
            when: when as i32,
        }
    }

    /// Runs `graph` to the end with `outcome(id)` as each started node's final state,
    /// returning every node's final state by id.
    fn simulate(p: &Pipeline, outcome: impl Fn(&str) -> State) -> HashMap<String, State> {
        let g = Graph::new(p);
        let mut states = vec![State::Pending; g.len()];
        for _ in 0..=g.len() {
            let steps = g.advance(&mut states);
            if steps.is_empty() {
                break;
            }
            for s in steps {
                if let Step::Run(i) = s {
                    states[i] = outcome(&g.ids[i]);
                }
            }
        }
        g.ids.iter().cloned().zip(states).collect()
    }

    #[test]
    fn a_condition_takes_only_the_edges_of_its_value() {
        let p = Pipeline {
            nodes: vec![
                trigger("t"),
                condition("c"),
                step("yes", Join::Any),
                step("no", Join::Any),
            ],
            edges: vec![
                edge("t", "c", EdgeWhen::Always),
                edge("c", "yes", EdgeWhen::True),
                edge("c", "no", EdgeWhen::False),
            ],
            ..Default::default()
        };
        let states = simulate(&p, |id| {
            if id == "c" {
                State::Succeeded(Some(false))
            } else {
                State::Succeeded(None)
            }
        });
        assert_eq!(states["yes"], State::Skipped);
        assert_eq!(states["no"], State::Succeeded(None));
    }

    #[test]
    fn skips_propagate_and_joins_decide_at_merges() {
        // t -> c -(TRUE)-> a -> any, all ; t -> b -> any, all
        let p = Pipeline {
            nodes: vec![
                trigger("t"),
                condition("c"),
                step("a", Join::Any),
                step("b", Join::Any),
                step("any", Join::Any),
                step("all", Join::All),
                step("after_all", Join::Any),
            ],
            edges: vec![
                edge("t", "c", EdgeWhen::Always),
                edge("c", "a", EdgeWhen::True),
                edge("t", "b", EdgeWhen::Always),
                edge("a", "any", EdgeWhen::Always),
                edge("b", "any", EdgeWhen::Always),
                edge("a", "all", EdgeWhen::Always),
                edge("b", "all", EdgeWhen::Always),
                edge("all", "after_all", EdgeWhen::Always),
            ],
            ..Default::default()
        };
        let states = simulate(&p, |id| {
            if id == "c" {
                State::Succeeded(Some(false))
            } else {
                State::Succeeded(None)
            }
        });
        assert_eq!(states["a"], State::Skipped);
        assert_eq!(states["any"], State::Succeeded(None), "ANY runs on b alone");
        assert_eq!(states["all"], State::Skipped, "ALL needs a too");
        assert_eq!(states["after_all"], State::Skipped, "a skip propagates");
    }

    #[test]
    fn on_failure_edges_run_only_after_a_failure_and_mark_it_handled() {
        let p = Pipeline {
            nodes: vec![
                trigger("t"),
                step("work", Join::Any),
                step("cleanup", Join::Any),
                step("next", Join::Any),
            ],
            edges: vec![
                edge("t", "work", EdgeWhen::Always),
                edge("work", "cleanup", EdgeWhen::OnFailure),
                edge("work", "next", EdgeWhen::Always),
            ],
            ..Default::default()
        };
        let g = Graph::new(&p);
        assert!(g.failure_handled(g.index("work").unwrap()));
        assert!(!g.failure_handled(g.index("next").unwrap()));
        let ok = simulate(&p, |_| State::Succeeded(None));
        assert_eq!(
            (ok["cleanup"], ok["next"]),
            (State::Skipped, State::Succeeded(None))
        );
        let failed = simulate(&p, |id| {
            if id == "work" {
                State::Failed
            } else {
                State::Succeeded(None)
            }
        });
        assert_eq!(
            (failed["cleanup"], failed["next"]),
            (State::Succeeded(None), State::Skipped)
        );
    }

    #[test]
    fn no_edge_out_of_a_skipped_or_cancelled_node_is_taken() {
        for when in [When::Always, When::True, When::False, When::OnFailure] {
            assert!(!Graph::edge_taken(when, State::Skipped));
            assert!(!Graph::edge_taken(when, State::Cancelled));
        }
    }

    #[test]
    fn ancestors_and_leaves_follow_the_edges() {
        let p = Pipeline {
            nodes: vec![
                trigger("t"),
                step("a", Join::Any),
                step("b", Join::Any),
                step("c", Join::Any),
            ],
            edges: vec![
                edge("t", "a", EdgeWhen::Always),
                edge("a", "b", EdgeWhen::Always),
                edge("t", "c", EdgeWhen::Always),
            ],
            ..Default::default()
        };
        let g = Graph::new(&p);
        let names = |v: Vec<usize>| v.into_iter().map(|i| g.ids[i].clone()).collect::<Vec<_>>();
        assert_eq!(names(g.ancestors(g.index("b").unwrap())), ["t", "a"]);
        assert_eq!(names(g.leaves()), ["b", "c"]);
        let single = Graph::single("action");
        let mut states = vec![State::Pending];
        assert_eq!(single.advance(&mut states), [Step::Run(0)]);
    }

    #[test]
    fn a_cycle_is_reported_with_its_nodes() {
        let out = vec![
            vec![(1, When::Always)],
            vec![(2, When::Always)],
            vec![(1, When::Always)],
        ];
        assert_eq!(topological_order(3, &out), Err(vec![1, 2]));
    }
}
