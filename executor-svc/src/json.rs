//! Conversions between `serde_json::Value` (what the engine and the store keep) and
//! `google.protobuf.Value` (what the wire carries), written out so that JSON `null`
//! stays an explicit `NullValue` both ways.

use pbjson_types::value::Kind;
use pbjson_types::{ListValue, Struct, Value as PbValue};
use serde_json::Value;

/// A `google.protobuf.Value` as JSON; a value with no kind is `null`.
pub fn pb_to_json(value: &PbValue) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers stay integers so that `1` is sent as `1`, not `1.0`.
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(pb_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), pb_to_json(v)))
                .collect(),
        ),
    }
}

/// JSON as a `google.protobuf.Value` (numbers become doubles, as proto3 says).
pub fn json_to_pb(value: &Value) -> PbValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_pb).collect(),
        }),
        Value::Object(map) => Kind::StructValue(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_pb(v)))
                .collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

/// An action from its canonical JSON. Proto3 JSON cannot tell a JSON body of `null` from
/// no body (pbjson reads `"jsonBody": null` as absent), so that one case is restored by
/// hand.
pub fn action_from_json(
    raw: Value,
) -> Result<almanac_proto::executor::v1::Action, serde_json::Error> {
    use almanac_proto::executor::v1::{action::Kind, call_api_action::Body};
    let null_body = raw.pointer("/callApi/jsonBody").is_some_and(Value::is_null);
    let mut action: almanac_proto::executor::v1::Action = serde_json::from_value(raw)?;
    if let Some(Kind::CallApi(call)) = &mut action.kind
        && call.body.is_none()
        && null_body
    {
        call.body = Some(Body::JsonBody(pbjson_types::Value {
            kind: Some(pbjson_types::value::Kind::NullValue(0)),
        }));
    }
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_protobuf_value() {
        let v = json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3}});
        assert_eq!(pb_to_json(&json_to_pb(&v)), v);
        assert_eq!(json_to_pb(&Value::Null).kind, Some(Kind::NullValue(0)));
    }
}
