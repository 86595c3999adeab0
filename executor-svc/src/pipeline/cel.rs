//! Condition nodes' CEL (the `cel` crate): compiled at validation, evaluated over
//! `input`, `nodes` and `execution`. A value that is not a bool is a non-retryable failure.

use cel::{Context, Program, Value};

/// The variables a condition may use.
pub const VARIABLES: &[&str] = &["input", "nodes", "execution"];

/// Compiles an expression and checks it uses only [`VARIABLES`].
pub fn compile_condition(expression: &str) -> Result<Program, String> {
    let program = Program::compile(expression).map_err(|e| format!("CEL does not compile: {e}"))?;
    let references = program.references();
    let unknown: Vec<&str> = references
        .variables()
        .into_iter()
        .filter(|v| !VARIABLES.contains(v))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown variable(s) {}: a condition sees {}",
            unknown.join(", "),
            VARIABLES.join(", ")
        ));
    }
    Ok(program)
}

/// Evaluates a condition: `Ok(bool)`, or why not (a runtime error, or a value that is not
/// a bool — both non-retryable).
pub fn evaluate(expression: &str, scope: &serde_json::Value) -> Result<bool, String> {
    let program = compile_condition(expression)?;
    let mut context = Context::default();
    for name in VARIABLES {
        let value = scope.get(*name).cloned().unwrap_or(serde_json::Value::Null);
        context
            .add_variable(*name, value)
            .map_err(|e| format!("cannot bind {name}: {e}"))?;
    }
    match program.execute(&context) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!(
            "the condition's value is not a bool but {:?}",
            other.type_of()
        )),
        Err(e) => Err(format!("the condition failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_see_input_nodes_and_execution() {
        let scope = json!({
            "input": {"threshold": 10},
            "nodes": {"fetch": {"status": "SUCCEEDED", "output": {"status": 200, "body": {"count": 12}}}},
            "execution": {"id": "e"}
        });
        assert_eq!(
            evaluate("nodes.fetch.output.body.count > input.threshold", &scope),
            Ok(true)
        );
        assert_eq!(
            evaluate("nodes.fetch.output.status == 404", &scope),
            Ok(false)
        );
        assert_eq!(evaluate("execution.id == 'e'", &scope), Ok(true));
    }

    #[test]
    fn a_value_that_is_not_a_bool_is_an_error() {
        let err = evaluate("1 + 2", &json!({})).unwrap_err();
        assert!(err.contains("not a bool"), "{err}");
    }

    #[test]
    fn bad_expressions_and_unknown_names_do_not_compile() {
        assert!(
            compile_condition("1 +")
                .unwrap_err()
                .contains("does not compile")
        );
        assert!(
            compile_condition("secrets.token == ''")
                .unwrap_err()
                .contains("secrets")
        );
    }
}
