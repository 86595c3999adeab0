//! Pipeline definitions and run inputs read from files: YAML or JSON (by extension, else by
//! content), parsed into JSON and then into the proto message through its canonical proto3
//! JSON mapping, so a file holds what grpcurl would send — plus two conveniences: short enum
//! names (`when: TRUE`, `join: ALL`) and human durations (`5m`). Problems are reported with a
//! place: the YAML/JSON line, the field path, or the unknown field and what was expected.

use std::path::Path;

use almanac_proto::executor::v1::{EdgeWhen, Join, Pipeline};
use serde_json::Value;

use crate::error::CliError;
use crate::proto_fields;

/// How a document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// `.json` is JSON and `.yaml`/`.yml` YAML; anything else (stdin included) is JSON
    /// when it starts with `{`, YAML otherwise.
    pub fn detect(path: &Path, text: &str) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Self::Json,
            Some(e) if e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml") => {
                Self::Yaml
            }
            _ if text
                .trim_start_matches('\u{feff}')
                .trim_start()
                .starts_with('{') =>
            {
                Self::Json
            }
            _ => Self::Yaml,
        }
    }
}

/// The text of `path`, or of stdin for `-`.
pub fn read_text(path: &Path) -> Result<String, CliError> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// The pipeline in `path` ("-" for stdin).
pub fn load_pipeline(path: &Path) -> Result<Pipeline, CliError> {
    let text = read_text(path)?;
    parse_pipeline(&text, Format::detect(path, &text))
        .map_err(|e| CliError::Usage(format!("{}: {e}", name(path))))
}

/// The input object in `path` ("-" for stdin).
pub fn load_input(path: &Path) -> Result<pbjson_types::Struct, CliError> {
    let text = read_text(path)?;
    parse_input(&text, Format::detect(path, &text))
        .map_err(|e| CliError::Usage(format!("{}: {e}", name(path))))
}

fn name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    }
}

/// A pipeline from its text.
pub fn parse_pipeline(text: &str, format: Format) -> Result<Pipeline, String> {
    let mut document = parse_document(text, format)?;
    if !document.is_object() {
        return Err("a pipeline is a mapping of fields (id, nodes, edges, ...)".to_owned());
    }
    short_enum_names(&mut document);
    let unknown = proto_fields::check(&mut document, ".almanac.executor.v1.Pipeline");
    if let Some(first) = unknown.first() {
        let mut message = format!(
            "unknown field {}: expected one of {}",
            first.path,
            first.expected.join(", ")
        );
        for other in &unknown[1..] {
            message.push_str(&format!("; unknown field {}", other.path));
        }
        return Err(message);
    }
    serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// An execution input (a JSON object) from its text.
pub fn parse_input(text: &str, format: Format) -> Result<pbjson_types::Struct, String> {
    let document = parse_document(text, format)?;
    if !document.is_object() {
        return Err("the input must be a JSON object, e.g. {\"base_url\": \"http://...\"}".into());
    }
    serde_json::from_value(document).map_err(|e| e.to_string())
}

/// YAML or JSON into a JSON tree; errors carry the line and column.
fn parse_document(text: &str, format: Format) -> Result<Value, String> {
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}")),
        Format::Yaml => serde_norway::from_str(text).map_err(|e| {
            let mut message = format!("not valid YAML: {e}");
            // `url: {{ input.x }}` opens a YAML flow mapping: the classic template mistake.
            let line = e
                .location()
                .and_then(|l| text.lines().nth(l.line().saturating_sub(1)));
            if line.is_some_and(|l| l.contains("{{")) {
                message.push_str(" (hint: quote a value that starts with a {{ template }})");
            }
            message
        }),
    }
}

/// Lets files say `when: TRUE` and `join: ALL` instead of the proto names
/// `EDGE_WHEN_TRUE` and `JOIN_ALL` — YAML even reads an unquoted TRUE or FALSE as a bool.
/// Values that are no enum name either way are left for the deserializer to refuse.
fn short_enum_names(document: &mut Value) {
    let full = |prefix: &str, value: &Value| -> Option<String> {
        let text = match value {
            Value::Bool(true) => "TRUE".to_owned(),
            Value::Bool(false) => "FALSE".to_owned(),
            Value::String(s) => s.trim().to_ascii_uppercase().replace('-', "_"),
            _ => return None,
        };
        Some(if text.starts_with(prefix) {
            text
        } else {
            format!("{prefix}{text}")
        })
    };
    let edges = document.get_mut("edges").and_then(Value::as_array_mut);
    for edge in edges.into_iter().flatten() {
        if let Some(when) = edge.get_mut("when")
            && let Some(name) =
                full("EDGE_WHEN_", when).filter(|n| EdgeWhen::from_str_name(n).is_some())
        {
            *when = Value::String(name);
        }
    }
    let nodes = document.get_mut("nodes").and_then(Value::as_array_mut);
    for node in nodes.into_iter().flatten() {
        if let Some(join) = node.get_mut("join")
            && let Some(name) = full("JOIN_", join).filter(|n| Join::from_str_name(n).is_some())
        {
            *join = Value::String(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::{action, node};

    const SNAKE_YAML: &str = r#"
id: p
display_name: A pipeline
default_retry: {max_attempts: 4, initial_backoff: 500ms}
nodes:
  - id: start
    trigger: {}
  - id: fetch
    action:
      call_api:
        url: "{{ input.base_url }}/x"
        json_body: {a: [1, "two"]}
    timeout: 5s
  - id: ok
    join: all
    condition: {expression: "nodes.fetch.output.status == 200"}
  - id: done
    parallel: {}
edges:
  - {from: start, to: fetch}
  - {from: fetch, to: ok}
  - {from: ok, to: done, when: TRUE}
  - {from: fetch, to: done, when: on_failure}
"#;

    const CAMEL_JSON: &str = r#"{
  "id": "p",
  "displayName": "A pipeline",
  "defaultRetry": {"maxAttempts": 4, "initialBackoff": "0.500s"},
  "nodes": [
    {"id": "start", "trigger": {}},
    {"id": "fetch", "action": {"callApi": {"url": "{{ input.base_url }}/x",
                                           "jsonBody": {"a": [1, "two"]}}},
     "timeout": "5s"},
    {"id": "ok", "join": "JOIN_ALL",
     "condition": {"expression": "nodes.fetch.output.status == 200"}},
    {"id": "done", "parallel": {}}
  ],
  "edges": [
    {"from": "start", "to": "fetch"},
    {"from": "fetch", "to": "ok"},
    {"from": "ok", "to": "done", "when": "EDGE_WHEN_TRUE"},
    {"from": "fetch", "to": "done", "when": "EDGE_WHEN_ON_FAILURE"}
  ]
}"#;

    #[test]
    fn snake_case_yaml_and_camel_case_json_read_the_same_pipeline() {
        let yaml = parse_pipeline(SNAKE_YAML, Format::Yaml).unwrap();
        let json = parse_pipeline(CAMEL_JSON, Format::Json).unwrap();
        assert_eq!(yaml, json);
        assert_eq!(yaml.display_name, "A pipeline");
        assert_eq!(yaml.nodes.len(), 4);
        assert_eq!(yaml.nodes[2].join, Join::All as i32);
        assert_eq!(yaml.edges[2].when, EdgeWhen::True as i32);
        assert_eq!(yaml.edges[3].when, EdgeWhen::OnFailure as i32);
        assert_eq!(yaml.default_retry.as_ref().unwrap().max_attempts, 4);
        let Some(node::Kind::Action(a)) = &yaml.nodes[1].kind else {
            panic!("fetch is an action: {:?}", yaml.nodes[1]);
        };
        let Some(action::Kind::CallApi(call)) = &a.kind else {
            panic!("fetch calls an API: {a:?}");
        };
        assert_eq!(call.url, "{{ input.base_url }}/x");
    }

    #[test]
    fn the_format_comes_from_the_extension_or_else_the_content() {
        let check = |path: &str, text: &str, expected: Format| {
            assert_eq!(
                Format::detect(Path::new(path), text),
                expected,
                "{path} {text:?}"
            );
        };
        check("p.yaml", "{}", Format::Yaml);
        check("p.YML", "{}", Format::Yaml);
        check("p.json", "id: p", Format::Json);
        check("-", "\n  {\"id\": \"p\"}", Format::Json);
        check("-", "id: p", Format::Yaml);
        check("pipeline", "# comment\nid: p", Format::Yaml);
    }

    #[test]
    fn broken_yaml_is_reported_with_its_line_and_a_hint_for_unquoted_templates() {
        let err =
            parse_pipeline("id: p\nnodes:\n  - id: a\n   trigger: {}\n", Format::Yaml).unwrap_err();
        assert!(err.starts_with("not valid YAML: "), "{err}");
        assert!(err.contains("line 4"), "{err}");
        let err = parse_pipeline("id: p\nurl: {{ input.x }}\n", Format::Yaml).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("hint: quote"), "{err}");
    }

    #[test]
    fn broken_json_is_reported_with_its_line() {
        let err =
            parse_pipeline("{\n  \"id\": \"p\",\n  \"nodes\": [\n}", Format::Json).unwrap_err();
        assert!(err.starts_with("not valid JSON: "), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err =
            parse_pipeline("id: p\nnodes:\n  - id: a\n    triger: {}\n", Format::Yaml).unwrap_err();
        assert!(
            err.starts_with("unknown field nodes[0].triger: expected one of id, trigger"),
            "{err}"
        );
    }

    #[test]
    fn values_of_the_wrong_shape_are_reported_with_their_path() {
        let err = parse_pipeline(
            "id: p\nnodes:\n  - id: a\n    trigger: {}\n    join: SOMETIMES\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(err.starts_with("nodes[0].join: "), "{err}");
        assert!(err.contains("SOMETIMES"), "{err}");
        let err = parse_pipeline(
            "id: p\nnodes:\n  - id: a\n    timeout: soon\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(err.starts_with("nodes[0].timeout: "), "{err}");
        let err = parse_pipeline("- a\n- b\n", Format::Yaml).unwrap_err();
        assert!(err.contains("mapping"), "{err}");
    }

    #[test]
    fn the_example_pipelines_load() {
        for (file, text) in [
            (
                "health-check.yaml",
                include_str!("../examples/pipelines/health-check.yaml"),
            ),
            (
                "nightly-report.yaml",
                include_str!("../examples/pipelines/nightly-report.yaml"),
            ),
        ] {
            let p = parse_pipeline(text, Format::detect(Path::new(file), text))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(
                !p.id.is_empty() && !p.nodes.is_empty() && !p.edges.is_empty(),
                "{file}"
            );
        }
    }

    #[test]
    fn inputs_are_json_or_yaml_objects() {
        let input = parse_input(
            r#"{"base_url": "http://127.0.0.1:8080", "n": 2}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(input.fields.len(), 2);
        let input = parse_input("base_url: http://127.0.0.1:8080\n", Format::Yaml).unwrap();
        assert!(input.fields.contains_key("base_url"));
        assert!(
            parse_input("[1]", Format::Json)
                .unwrap_err()
                .contains("object")
        );
        assert!(
            parse_input("{", Format::Json)
                .unwrap_err()
                .starts_with("not valid JSON")
        );
    }
}
