//! Hand-written messages checked against the proto descriptors before they are
//! deserialized. The generated serde code ignores fields it does not know (so old clients
//! read new messages), which would turn a typo in a pipeline file (`timout: 5s`) into a
//! silently missing setting: this walk names every such field instead. It also lets a file
//! write durations as people do (`5m`, `1h30m`, `500ms`), rewritten into proto JSON (`300s`).

use std::collections::HashMap;

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use serde_json::Value;

/// One field of a document that its message does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Where, e.g. `nodes[2].actoin`.
    pub path: String,
    /// The field names the message has there (proto names).
    pub expected: Vec<String>,
}

/// Every field of `document` that the message `full_name` (e.g.
/// `.almanac.executor.v1.Pipeline`) does not define, recursively; `Duration` fields written
/// the human way are rewritten in place. Other well-known types (`Struct`, `Value`, ...)
/// hold free-form or scalar JSON and are not entered; map keys are free. Values of the
/// wrong type are left to the deserializer to report.
pub fn check(document: &mut Value, full_name: &str) -> Vec<UnknownField> {
    let index = Index::new();
    let mut out = Vec::new();
    if let Some(message) = index.messages.get(full_name) {
        index.walk(message, document, "", &mut out);
    }
    out
}

struct Index {
    messages: HashMap<String, DescriptorProto>,
}

impl Index {
    fn new() -> Self {
        // The descriptor set is generated at build time from the same protos as the
        // messages, so it always decodes.
        let set = FileDescriptorSet::decode(almanac_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let mut messages = HashMap::new();
        for file in set.file {
            let scope = match file.package() {
                "" => String::new(),
                package => format!(".{package}"),
            };
            for message in file.message_type {
                add(&mut messages, &scope, message);
            }
        }
        Self { messages }
    }

    fn walk(
        &self,
        message: &DescriptorProto,
        value: &mut Value,
        path: &str,
        out: &mut Vec<UnknownField>,
    ) {
        let Value::Object(map) = value else {
            return;
        };
        for (key, item) in map {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let Some(field) = message
                .field
                .iter()
                .find(|f| f.name() == key || f.json_name() == key)
            else {
                out.push(UnknownField {
                    path: here,
                    expected: message.field.iter().map(|f| f.name().to_owned()).collect(),
                });
                continue;
            };
            if field.type_name() == ".google.protobuf.Duration" {
                if field.label() == Label::Repeated {
                    item.as_array_mut()
                        .into_iter()
                        .flatten()
                        .for_each(human_duration);
                } else {
                    human_duration(item);
                }
                continue;
            }
            if field.r#type() != Type::Message || field.type_name().starts_with(".google.protobuf.")
            {
                continue;
            }
            let Some(child) = self.messages.get(field.type_name()) else {
                continue;
            };
            if child.options.as_ref().is_some_and(|o| o.map_entry()) {
                // A map: free keys; values are entered when they are messages.
                let value_field = child.field.iter().find(|f| f.number() == 2);
                let value_message = value_field
                    .filter(|f| f.r#type() == Type::Message)
                    .and_then(|f| self.messages.get(f.type_name()));
                if let (Some(value_message), Value::Object(entries)) = (value_message, item) {
                    for (k, v) in entries.iter_mut() {
                        self.walk(value_message, v, &format!("{here}.{k}"), out);
                    }
                }
            } else if field.label() == Label::Repeated {
                if let Value::Array(items) = item {
                    for (i, v) in items.iter_mut().enumerate() {
                        self.walk(child, v, &format!("{here}[{i}]"), out);
                    }
                }
            } else {
                self.walk(child, item, &here, out);
            }
        }
    }
}

/// `5m` → `300s`, `500ms` → `0.5s`; proto JSON (`1.5s`) and anything else is left as is.
fn human_duration(value: &mut Value) {
    let Value::String(text) = value else {
        return;
    };
    if let Ok(d) = humantime::parse_duration(text.trim()) {
        let nanos = format!("{:09}", d.subsec_nanos());
        let nanos = nanos.trim_end_matches('0');
        *text = if nanos.is_empty() {
            format!("{}s", d.as_secs())
        } else {
            format!("{}.{nanos}s", d.as_secs())
        };
    }
}

fn add(messages: &mut HashMap<String, DescriptorProto>, scope: &str, mut message: DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    for nested in std::mem::take(&mut message.nested_type) {
        add(messages, &name, nested);
    }
    messages.insert(name, message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PIPELINE: &str = ".almanac.executor.v1.Pipeline";

    fn paths(mut document: Value) -> Vec<String> {
        let mut paths: Vec<String> = check(&mut document, PIPELINE)
            .into_iter()
            .map(|u| u.path)
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn known_fields_in_either_spelling_pass() {
        let document = json!({
            "id": "p",
            "displayName": "P",
            "max_parallelism": 2,
            "defaultRetry": {"maxAttempts": 3, "initial_backoff": "1s"},
            "nodes": [
                {"id": "t", "trigger": {}},
                {"id": "c", "action": {"callApi": {
                    "url": "http://x/",
                    "headers": {"X-Free-Key": "v"},
                    "jsonBody": {"anything": {"goes": [1]}}
                }}},
                {"id": "w", "task": {"queue": "q", "payload": {"free": true}}}
            ],
            "edges": [{"from": "t", "to": "c", "when": "TRUE"}]
        });
        assert_eq!(paths(document), Vec::<String>::new());
    }

    #[test]
    fn unknown_fields_are_named_with_their_path_and_the_expected_names() {
        let document = json!({
            "id": "p",
            "timout": "5s",
            "nodes": [
                {"id": "t", "trigger": {}},
                {"id": "c", "actoin": {}},
                {"id": "d", "action": {"callApi": {"uri": "http://x/"}}}
            ],
            "edges": [{"from": "t", "too": "c"}]
        });
        assert_eq!(
            paths(document.clone()),
            [
                "edges[0].too",
                "nodes[1].actoin",
                "nodes[2].action.callApi.uri",
                "timout"
            ]
        );
        let found = check(&mut document.clone(), PIPELINE);
        let edge = found.iter().find(|u| u.path == "edges[0].too").unwrap();
        assert_eq!(edge.expected, ["from", "to", "when"]);
    }

    #[test]
    fn human_durations_become_proto_json_and_others_stay() {
        let mut document = json!({
            "timeout": "1h30m",
            "defaultRetry": {"initialBackoff": "500ms", "maxBackoff": "1.5s"},
            "nodes": [
                {"id": "d", "delay": {"duration": "2s"}},
                {"id": "e", "delay": {"duration": "soon"}},
                {"id": "f", "action": {"callApi": {"timeout": "250ms", "url": "5m"}}}
            ]
        });
        assert!(check(&mut document, PIPELINE).is_empty());
        assert_eq!(document["timeout"], "5400s");
        assert_eq!(document["defaultRetry"]["initialBackoff"], "0.5s");
        assert_eq!(document["defaultRetry"]["maxBackoff"], "1.5s");
        assert_eq!(document["nodes"][0]["delay"]["duration"], "2s");
        assert_eq!(document["nodes"][1]["delay"]["duration"], "soon");
        assert_eq!(
            document["nodes"][2]["action"]["callApi"]["timeout"],
            "0.25s"
        );
        assert_eq!(document["nodes"][2]["action"]["callApi"]["url"], "5m");
    }
}
