//! What an execution's graph is. Every execution is a graph; a single action is the
//! one-node graph whose node is `action`. Pipelines (a later issue) will build their plan
//! from a stored definition and hand the runner the same shape.

use almanac_proto::action::kind_name;
use almanac_proto::executor::v1::{Action, action::Kind};

use crate::model::SINGLE_ACTION_NODE;

/// One node of an execution's graph.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanNode {
    /// Unique within the execution.
    pub id: String,
    /// The action kind's name, e.g. "call_api".
    pub kind: &'static str,
    /// What the node runs.
    pub action: Kind,
}

/// The nodes of an execution, in an order where every node comes after the ones it
/// depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The nodes.
    pub nodes: Vec<PlanNode>,
}

impl Plan {
    /// The plan of an execution's action, or why there cannot be one.
    pub fn for_action(action: &Action) -> Result<Self, String> {
        let kind = action
            .kind
            .as_ref()
            .ok_or_else(|| "the execution has no action".to_owned())?;
        Ok(Self {
            nodes: vec![PlanNode {
                id: SINGLE_ACTION_NODE.to_owned(),
                kind: kind_name(kind),
                action: kind.clone(),
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::CallApiAction;

    #[test]
    fn a_single_action_is_the_one_node_action() {
        let action = Action {
            kind: Some(Kind::CallApi(CallApiAction::default())),
        };
        let plan = Plan::for_action(&action).unwrap();
        assert_eq!(plan.nodes.len(), 1);
        assert_eq!(plan.nodes[0].id, "action");
        assert_eq!(plan.nodes[0].kind, "call_api");
        assert!(Plan::for_action(&Action { kind: None }).is_err());
    }
}
