//! What `call_api` makes of an answer: the body read as a stream and cut at the action's
//! limit (a `Content-Length` is never trusted), the kept headers, the body as the result
//! holds it, and a failure that says whether retrying can help and when (`Retry-After`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use crate::actions::ActionError;

/// Response bytes read when the action does not say.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;
/// A text (non-JSON) body kept in the result is cut to this many bytes.
pub const MAX_TEXT_BODY: usize = 64 * 1024;
/// A failure message quotes at most this many bytes of the body.
pub const MAX_ERROR_BODY: usize = 512;
/// What replaces a secret's value wherever an answer echoes it.
pub const REDACTED: &str = "<redacted>";

/// A body read up to a limit.
#[derive(Debug)]
pub struct ReadBody {
    /// The bytes read.
    pub bytes: Vec<u8>,
    /// Whether the answer had more than the limit (the rest was not read).
    pub cut: bool,
}

/// Reads at most `limit` bytes of the body, chunk by chunk; whatever the other side
/// announced, nothing past the limit is kept.
pub async fn read_body(
    response: &mut reqwest::Response,
    limit: u64,
) -> Result<ReadBody, reqwest::Error> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(ReadBody { bytes, cut: true });
        }
        bytes.extend_from_slice(&chunk);
        if bytes.len() == limit {
            // Exactly at the limit: only one more chunk tells whether there is more.
            let more = response.chunk().await?.is_some_and(|c| !c.is_empty());
            return Ok(ReadBody { bytes, cut: more });
        }
    }
    Ok(ReadBody { bytes, cut: false })
}

/// The response headers the action keeps (lowercase names; several values joined with
/// ", "), content-type only when it names none.
pub fn kept_headers(headers: &HeaderMap, names: &[String]) -> serde_json::Map<String, Value> {
    let default = ["content-type".to_owned()];
    let names = if names.is_empty() {
        &default[..]
    } else {
        names
    };
    let mut kept = serde_json::Map::new();
    for name in names {
        let name = name.to_ascii_lowercase();
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if !values.is_empty() {
            kept.insert(name, Value::String(values.join(", ")));
        }
    }
    kept
}

/// The body as kept in the result, and whether it is shorter than what was read: parsed
/// when it is JSON and was read whole, else text cut to 64 KiB.
pub fn output_body(content_type: Option<&str>, body: &[u8], complete: bool) -> (Value, bool) {
    if complete
        && content_type.is_some_and(is_json_content_type)
        && let Ok(v) = serde_json::from_slice::<Value>(body)
    {
        return (v, false);
    }
    let text = truncate_utf8(body, MAX_TEXT_BODY).into_owned();
    (Value::String(text), body.len() > MAX_TEXT_BODY)
}

fn is_json_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// At most `max` bytes of `bytes` as text, cut at a character boundary.
pub fn truncate_utf8(bytes: &[u8], max: usize) -> std::borrow::Cow<'_, str> {
    let mut end = bytes.len().min(max);
    // Step back over a partial UTF-8 sequence (at most 3 bytes) at the cut.
    while end > 0 && end < bytes.len() && (bytes[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    String::from_utf8_lossy(&bytes[..end])
}

/// Whether a status counts as success: the action's list, or any 2xx.
pub fn accepted(accepted_statuses: &[u32], status: StatusCode) -> bool {
    if accepted_statuses.is_empty() {
        status.is_success()
    } else {
        accepted_statuses.contains(&u32::from(status.as_u16()))
    }
}

/// Whether a status that was not accepted might be accepted on another try.
pub fn status_is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// The failure of an answer whose status was not accepted: the status and the start of
/// the body; retryable for 5xx, 408 and 429, with the wait a 429 or 503 asked for.
pub fn status_failure(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> ActionError {
    let mut message = format!("HTTP {status}");
    let excerpt = truncate_utf8(body, MAX_ERROR_BODY);
    if !excerpt.trim().is_empty() {
        message.push_str(": ");
        message.push_str(excerpt.trim_end());
    }
    if !status_is_retryable(status) {
        return ActionError::permanent(message);
    }
    let asks_to_wait =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    let after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .filter(|_| asks_to_wait)
        .and_then(|v| retry_after_ms(v, now));
    ActionError::retry_after(message, after)
}

/// A `Retry-After` value in milliseconds from `now`: delay-seconds or an HTTP-date (a
/// date in the past means now).
pub fn retry_after_ms(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX),
    )
}

/// A time in milliseconds since the epoch as a `SystemTime`.
pub fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Replaces every occurrence of a secret in `text`.
pub fn redact_text(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), REDACTED))
}

/// Replaces every occurrence of a secret in the strings (and keys) of a JSON value.
pub fn redact_json(value: Value, secrets: &[String]) -> Value {
    if secrets.iter().all(String::is_empty) {
        return value;
    }
    match value {
        Value::String(s) => Value::String(redact_text(&s, secrets)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| redact_json(v, secrets)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (redact_text(&k, secrets), redact_json(v, secrets)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    #[test]
    fn retryable_statuses_are_5xx_408_and_429() {
        for (code, retryable) in [
            (500, true),
            (503, true),
            (408, true),
            (429, true),
            (404, false),
            (400, false),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(status_is_retryable(status), retryable, "{code}");
        }
    }

    #[test]
    fn accepted_statuses_default_to_2xx() {
        assert!(accepted(&[], StatusCode::NO_CONTENT));
        assert!(!accepted(&[], StatusCode::FOUND));
        assert!(accepted(&[404], StatusCode::NOT_FOUND));
        assert!(!accepted(&[404], StatusCode::OK));
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = system_time(1_445_412_480_000); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(retry_after_ms("1", now), Some(1_000));
        assert_eq!(retry_after_ms(" 120 ", now), Some(120_000));
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", now), None);
        assert_eq!(retry_after_ms("-1", now), None);
    }

    #[test]
    fn a_failure_quotes_the_status_and_the_start_of_the_body() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        let now = system_time(0);
        let body = "x".repeat(2_000);
        let e = status_failure(
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            body.as_bytes(),
            now,
        );
        assert!(e.retryable);
        assert_eq!(e.retry_after_ms, Some(2_000));
        assert_eq!(
            e.message,
            format!("HTTP 429 Too Many Requests: {}", "x".repeat(MAX_ERROR_BODY))
        );
        let e = status_failure(StatusCode::INTERNAL_SERVER_ERROR, &headers, b"", now);
        assert_eq!((e.retryable, e.retry_after_ms), (true, None));
        assert_eq!(e.message, "HTTP 500 Internal Server Error");
        let e = status_failure(StatusCode::NOT_FOUND, &headers, b"nope\n", now);
        assert_eq!(
            (e.retryable, e.message.as_str()),
            (false, "HTTP 404 Not Found: nope")
        );
    }

    #[test]
    fn bodies_are_parsed_when_json_and_cut_when_text() {
        assert_eq!(
            output_body(Some("application/json; charset=utf-8"), br#"{"a":1}"#, true),
            (json!({"a": 1}), false)
        );
        assert_eq!(
            output_body(Some("application/problem+json"), b"[1]", true),
            (json!([1]), false)
        );
        assert_eq!(
            output_body(Some("application/json"), b"[1", false),
            (json!("[1"), false),
            "a cut JSON body is kept as text"
        );
        assert_eq!(
            output_body(Some("text/plain"), b"{\"a\":1}", true),
            (json!("{\"a\":1}"), false)
        );
        let long = "é".repeat(MAX_TEXT_BODY);
        let (Value::String(cut), shortened) = output_body(None, long.as_bytes(), true) else {
            panic!("text expected")
        };
        assert!(shortened);
        assert!(cut.len() <= MAX_TEXT_BODY && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn kept_headers_default_to_content_type() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        assert_eq!(
            Value::Object(kept_headers(&headers, &[])),
            json!({"content-type": "text/plain"})
        );
        assert_eq!(
            Value::Object(kept_headers(&headers, &["X-A".into(), "x-missing".into()])),
            json!({"x-a": "1, 2"})
        );
    }

    #[test]
    fn secrets_echoed_by_an_answer_are_redacted() {
        let secrets = vec!["s3cr3t".to_owned(), String::new()];
        assert_eq!(
            redact_json(
                json!({"auth": "Bearer s3cr3t", "n": [1, "s3cr3t"]}),
                &secrets
            ),
            json!({"auth": "Bearer <redacted>", "n": [1, "<redacted>"]})
        );
        assert_eq!(redact_text("no secret", &secrets), "no secret");
    }
}
