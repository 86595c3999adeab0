//! The `webhook` channel: a JSON POST signed per the Standard Webhooks specification
//! 1.0.0 (<https://www.standardwebhooks.com>, `spec/standard-webhooks.md` of
//! standard-webhooks/standard-webhooks, symmetric scheme):
//!
//! - `webhook-id`: `msg_` + 32 hex digits of SHA-256 over the execution's idempotency key
//!   and the node id: the same on every try and every resume of one notification (the
//!   spec's "remains the same no matter how many times a webhook that has failed is
//!   retried"), and free of `.` (the spec warns against user-controlled ids with dots).
//! - `webhook-timestamp`: the attempt's time, integer Unix seconds.
//! - `webhook-signature`: `v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`,
//!   keyed with the secret's `whsec_<base64>` value, base64-decoded after the prefix.
//!
//! The body (the spec's recommended `type` / `timestamp` / `data` envelope):
//!
//! ```json
//! {
//!   "type": "almanac.notification",
//!   "timestamp": "2026-10-26T07:33:20.123Z",
//!   "data": {
//!     "title": "Nightly export",
//!     "text": "The export finished",
//!     "fields": [{"name": "rows", "value": "1204"}],
//!     "schedule_id": "nightly",
//!     "run_id": "…",
//!     "nominal_time": "2026-10-26T07:30:00.000Z",
//!     "execution_id": "…"
//!   }
//! }
//! ```
//!
//! `timestamp` is when the attempt started; `fields` keeps the message's order (a list,
//! not an object, so repeated names survive); `schedule_id`, `run_id` and `nominal_time`
//! are `null` for work that does not come from a schedule.

use almanac_proto::executor::v1::{NotificationMessage, WebhookChannel};
use almanac_proto::time::{ms_to_rfc3339, timestamp_to_ms};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::http::{self, UrlSource};
use crate::actions::{ActionContext, ActionEnv, ActionError};

/// The prefix of a symmetric Standard Webhooks signing secret.
const SECRET_PREFIX: &str = "whsec_";
/// The payload's `type`.
pub(super) const EVENT_TYPE: &str = "almanac.notification";

/// Sends one signed webhook.
pub(super) async fn send(
    env: &ActionEnv,
    client: &reqwest::Client,
    ctx: &ActionContext,
    channel: &WebhookChannel,
    message: &NotificationMessage,
) -> Result<Value, ActionError> {
    let secret_name = channel.signing_secret.as_str();
    let secret = env.config.secrets.get(secret_name).ok_or_else(|| {
        ActionError::permanent(format!("this executor has no secret named {secret_name:?}"))
    })?;
    let key = signing_key(secret.expose())
        .map_err(|problem| ActionError::permanent(key_problem(secret_name, problem)))?;
    let endpoint = http::endpoint(env, "webhook", UrlSource::Inline(&channel.url))?;

    let id = webhook_id(ctx);
    let timestamp = ctx.now_ms.div_euclid(1000);
    let body = serde_json::to_vec(&payload(ctx, message))
        .map_err(|e| ActionError::permanent(format!("the webhook body cannot be encoded: {e}")))?;
    let signature = sign(&key, &id, timestamp, &body);

    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &channel.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ActionError::permanent(format!("{name:?} is not a valid header name")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            ActionError::permanent(format!("the value of {name:?} is not a valid header value"))
        })?;
        headers.append(name, value);
    }
    // The executor's own headers win over extra ones of the same name.
    for (name, value) in http::almanac_headers(ctx)? {
        if let Some(name) = name {
            headers.insert(name, value);
        }
    }
    let mut set = |name: &'static str, value: &str| {
        let value = HeaderValue::from_str(value).expect("ids, digits and base64 are header-safe");
        headers.insert(HeaderName::from_static(name), value);
    };
    set("webhook-id", &id);
    set("webhook-timestamp", &timestamp.to_string());
    set("webhook-signature", &signature);

    let status = http::post_json(client, ctx, &endpoint, headers, body).await?;
    tracing::debug!(execution_id = %ctx.execution_id, webhook_id = %id, status = status.as_u16(),
        "webhook notification sent");
    Ok(json!({
        "channel": "webhook",
        "status": status.as_u16(),
        "webhook_id": id,
    }))
}

/// Why a secret is not a signing key, for messages that name the secret, not its value.
pub(super) fn key_problem(secret_name: &str, problem: &str) -> String {
    format!(
        "the secret {secret_name:?} is not a Standard Webhooks signing key ({problem}): expected \"whsec_\" followed by base64"
    )
}

/// The HMAC key of a `whsec_<base64>` secret, or what is wrong with it (never quoting
/// the value).
pub(super) fn signing_key(secret: &str) -> Result<Vec<u8>, &'static str> {
    let encoded = secret
        .trim()
        .strip_prefix(SECRET_PREFIX)
        .ok_or("it does not start with \"whsec_\"")?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| "the part after \"whsec_\" is not base64")?;
    if key.is_empty() {
        return Err("the key is empty");
    }
    Ok(key)
}

/// `msg_` + 32 hex digits, the same for every try and resume of one notification.
pub(super) fn webhook_id(ctx: &ActionContext) -> String {
    let mut hash = Sha256::new();
    hash.update(ctx.idempotency_key.as_bytes());
    hash.update([0]);
    hash.update(ctx.node_id.as_bytes());
    format!("msg_{}", hex::encode(&hash.finalize()[..16]))
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub(super) fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The body described in the module documentation.
pub(super) fn payload(ctx: &ActionContext, message: &NotificationMessage) -> Value {
    let origin = ctx.origin.as_ref().filter(|o| !o.schedule_id.is_empty());
    let fields: Vec<Value> = message
        .fields
        .iter()
        .map(|f| json!({"name": f.name, "value": f.value}))
        .collect();
    json!({
        "type": EVENT_TYPE,
        "timestamp": ms_to_rfc3339(ctx.now_ms),
        "data": {
            "title": message.title,
            "text": message.text,
            "fields": fields,
            "schedule_id": origin.map(|o| o.schedule_id.clone()),
            "run_id": origin.map(|o| o.run_id.clone()),
            "nominal_time": origin
                .and_then(|o| o.nominal_time.as_ref())
                .map(|t| ms_to_rfc3339(timestamp_to_ms(t))),
            "execution_id": ctx.execution_id,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(key: &str, node: &str) -> ActionContext {
        ActionContext {
            execution_id: "e1".into(),
            idempotency_key: key.into(),
            node_id: node.into(),
            attempt: 1,
            try_number: 1,
            origin: None,
            deadline_ms: None,
            now_ms: 1_649_367_553_000,
            handover: tokio_util::sync::CancellationToken::new(),
        }
    }

    #[test]
    fn the_signature_matches_the_reference_library_vector() {
        // The test vector of the reference Rust library (libraries/rust/src/lib.rs).
        let key = signing_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_not_in_the_whsec_format_are_refused_without_quoting_them() {
        for bad in [
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_not base64!",
            "whsec_",
        ] {
            let problem = signing_key(bad).unwrap_err();
            let message = key_problem("hook_key", problem);
            if bad != "whsec_" {
                assert!(!message.contains(bad), "{message}");
            }
            assert!(message.contains("hook_key") && message.contains("whsec_"));
        }
    }

    #[test]
    fn the_webhook_id_is_stable_per_key_and_node_and_has_no_dot() {
        let a = webhook_id(&ctx("run-1.2/1", "action"));
        assert_eq!(a, webhook_id(&ctx("run-1.2/1", "action")));
        assert_ne!(a, webhook_id(&ctx("run-1.2/1", "notify")));
        assert_ne!(a, webhook_id(&ctx("run-1.2/2", "action")));
        assert!(a.starts_with("msg_") && a.len() == 36 && !a.contains('.'));
    }

    #[test]
    fn the_payload_has_the_documented_shape() {
        let message = NotificationMessage {
            title: "t".into(),
            text: "x".into(),
            fields: vec![almanac_proto::executor::v1::MessageField {
                name: "k".into(),
                value: "v".into(),
            }],
        };
        let body = payload(&ctx("k", "action"), &message);
        assert_eq!(body["type"], EVENT_TYPE);
        assert_eq!(body["timestamp"], "2022-04-07T21:39:13.000Z");
        assert_eq!(body["data"]["fields"], json!([{"name": "k", "value": "v"}]));
        assert_eq!(body["data"]["schedule_id"], Value::Null);
        assert_eq!(body["data"]["execution_id"], "e1");
    }
}
