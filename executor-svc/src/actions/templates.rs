//! Run-context templates (DESIGN §5.2): string fields of any action may be MiniJinja
//! templates over `schedule.id`, `run.id`, `run.nominal_time`, `run.attempt` (and
//! `execution.id`, `execution.key`), rendered per run in strict mode — an undefined name
//! is an error, never an empty string. Checked when the action is validated, rendered by
//! the runner before the handler sees the action.
//!
//! The walk is generic over the action's canonical JSON, so a new action kind gets
//! templates without code here. Secret and profile names are never rendered: they name
//! configuration, and a template there would let a run pick another secret.

use almanac_proto::action::{FieldViolation, is_template};
use almanac_proto::executor::v1::{Action, Origin};
use almanac_proto::time::{ms_to_rfc3339, timestamp_to_ms};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// The names a template may use.
pub const VARIABLES: &[&str] = &[
    "schedule.id",
    "run.id",
    "run.nominal_time",
    "run.attempt",
    "execution.id",
    "execution.key",
    "execution.schedule_id",
    "execution.run_id",
    "execution.nominal_time",
    "execution.attempt",
];

/// Keys whose values are names of configuration, never rendered.
fn is_name_key(key: &str) -> bool {
    key.ends_with("Secret") || key == "profile" || key == "data"
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

/// What templates of one run see.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunContext {
    pub schedule_id: String,
    pub run_id: String,
    pub nominal_time: String,
    pub attempt: u32,
    pub execution_id: String,
    pub execution_key: String,
    /// A pipeline execution's input (null for a single action).
    pub input: serde_json::Value,
    /// A pipeline node's finished ancestors: `{id: {status, output, error}}`.
    pub nodes: serde_json::Value,
}

impl RunContext {
    /// The context of an execution (empty strings for work that does not come from a
    /// schedule).
    pub fn new(origin: Option<&Origin>, execution_id: &str, execution_key: &str) -> Self {
        let origin = origin.cloned().unwrap_or_default();
        Self {
            schedule_id: origin.schedule_id,
            run_id: origin.run_id,
            nominal_time: origin
                .nominal_time
                .as_ref()
                .map(|t| ms_to_rfc3339(timestamp_to_ms(t)))
                .unwrap_or_default(),
            attempt: origin.attempt,
            execution_id: execution_id.to_owned(),
            execution_key: execution_key.to_owned(),
            input: serde_json::Value::Null,
            nodes: serde_json::Value::Null,
        }
    }

    fn value(&self) -> minijinja::Value {
        minijinja::context! {
            schedule => minijinja::context! { id => self.schedule_id.clone() },
            run => minijinja::context! {
                id => self.run_id.clone(),
                nominal_time => self.nominal_time.clone(),
                attempt => self.attempt,
            },
            execution => minijinja::context! {
                id => self.execution_id.clone(),
                key => self.execution_key.clone(),
                schedule_id => self.schedule_id.clone(),
                run_id => self.run_id.clone(),
                nominal_time => self.nominal_time.clone(),
                attempt => self.attempt,
            },
            input => minijinja::Value::from(minijinja::value::Serde(&self.input)),
            nodes => minijinja::Value::from(minijinja::value::Serde(&self.nodes)),
        }
    }
}

/// `jsonBody` → `json_body`: pbjson's JSON names back to proto field names.
fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Visits every templated string of a JSON tree with its field path.
fn walk(value: &mut Value, path: &str, visit: &mut dyn FnMut(&str, &mut String)) {
    match value {
        Value::String(s) => visit(path, s),
        Value::Array(items) => {
            for item in items {
                walk(item, path, visit);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if !is_name_key(key) {
                    walk(item, &format!("{path}.{}", snake(key)), visit);
                }
            }
        }
        _ => {}
    }
}

/// Every template problem of an action: syntax errors and names outside [`VARIABLES`].
pub fn check(action: &Action, prefix: &str) -> Vec<FieldViolation> {
    check_in(action, prefix, &[])
}

/// Like [`check`], also allowing any name under `open_roots` (a pipeline node's
/// templates may use `input.…` and `nodes.…`, whose shape only the run knows).
pub fn check_in(action: &Action, prefix: &str, open_roots: &[&str]) -> Vec<FieldViolation> {
    let Ok(mut json) = serde_json::to_value(action) else {
        return Vec::new();
    };
    let env = environment();
    let mut problems = Vec::new();
    walk(&mut json, prefix, &mut |path, s| {
        if !is_template(s) {
            return;
        }
        match env.template_from_str(s) {
            Err(e) => problems.push(FieldViolation::new(
                path,
                format!(
                    "template does not parse: {}",
                    e.detail().unwrap_or("syntax error")
                ),
            )),
            Ok(template) => {
                let mut unknown: Vec<String> = template
                    .undeclared_variables(true)
                    .into_iter()
                    .filter(|name| {
                        let root = name.split('.').next().unwrap_or_default();
                        !open_roots.contains(&root)
                            && !VARIABLES
                                .iter()
                                .any(|v| v == name || v.starts_with(&format!("{name}.")))
                    })
                    .collect();
                unknown.sort();
                if !unknown.is_empty() {
                    problems.push(FieldViolation::new(
                        path,
                        format!(
                            "unknown template variable(s) {}: use {}",
                            unknown.join(", "),
                            VARIABLES.join(", ")
                        ),
                    ));
                }
            }
        }
    });
    problems
}

/// The action with every template rendered for this run.
pub fn render(action: &Action, ctx: &RunContext) -> Result<Action, String> {
    let mut json = serde_json::to_value(action).map_err(|e| e.to_string())?;
    let env = environment();
    let values = ctx.value();
    let mut failure = None;
    walk(&mut json, "action", &mut |path, s| {
        if failure.is_some() || !is_template(s) {
            return;
        }
        match env.render_str(s, &values) {
            Ok(rendered) => *s = rendered,
            Err(e) => failure = Some(format!("{path}: template failed: {e}")),
        }
    });
    if let Some(f) = failure {
        return Err(f);
    }
    crate::json::action_from_json(json).map_err(|e| format!("rendered action is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::{
        BearerAuth, CallApiAction, HttpAuth, action::Kind, call_api_action::Body, http_auth,
    };

    fn call(url: &str, body: serde_json::Value, secret: &str) -> Action {
        Action {
            kind: Some(Kind::CallApi(CallApiAction {
                url: url.into(),
                body: Some(Body::JsonBody(crate::json::json_to_pb(&body))),
                auth: Some(HttpAuth {
                    kind: Some(http_auth::Kind::Bearer(BearerAuth {
                        token_secret: secret.into(),
                    })),
                }),
                ..Default::default()
            })),
        }
    }

    fn ctx() -> RunContext {
        RunContext {
            schedule_id: "nightly".into(),
            run_id: "r1".into(),
            nominal_time: "2026-03-08T07:00:00.000Z".into(),
            attempt: 2,
            execution_id: "e1".into(),
            execution_key: "r1/2".into(),
            ..RunContext::default()
        }
    }

    #[test]
    fn urls_and_bodies_render_the_run_context() {
        let action = call(
            "http://h/{{ schedule.id }}?at={{ run.nominal_time }}",
            serde_json::json!({"day": "{{ run.nominal_time[:10] }}", "try": "{{ run.attempt }}", "n": 1}),
            "token",
        );
        let rendered = render(&action, &ctx()).unwrap();
        let Some(Kind::CallApi(c)) = rendered.kind else {
            panic!()
        };
        assert_eq!(c.url, "http://h/nightly?at=2026-03-08T07:00:00.000Z");
        let Some(Body::JsonBody(body)) = c.body else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            serde_json::json!({"day": "2026-03-08", "try": "2", "n": 1.0})
        );
    }

    #[test]
    fn secret_names_are_never_rendered() {
        let action = call("http://h/", serde_json::json!(null), "{{ run.id }}");
        let rendered = render(&action, &ctx()).unwrap();
        assert_eq!(rendered, action);
        assert!(check(&action, "action").is_empty());
    }

    #[test]
    fn undefined_names_and_bad_syntax_are_refused_with_their_field() {
        let action = call(
            "http://h/{{ run.nope }}",
            serde_json::json!({"x": "{{ unclosed"}),
            "token",
        );
        let problems = check(&action, "action");
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["action.call_api.json_body.x", "action.call_api.url"]
        );
        assert!(problems[1].description.contains("run.nope"), "{problems:?}");
        assert!(
            render(&action, &ctx()).is_err(),
            "strict: never an empty string"
        );
    }
}
