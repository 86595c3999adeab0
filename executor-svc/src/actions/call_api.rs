//! The `call_api` action: one HTTP request with reqwest. It sends the action's method, URL,
//! headers and JSON body with `Idempotency-Key` (the execution key) and, for scheduled
//! work, `X-Almanac-Schedule-Id`, `X-Almanac-Run-Id` and `X-Almanac-Nominal-Time`; its
//! output is the status, selected headers, body and duration.

use std::time::{Duration, Instant};

use almanac_proto::action::DEFAULT_CALL_API_TIMEOUT_MS;
use almanac_proto::executor::v1::{CallApiAction, action::Kind, call_api_action::Body};
use almanac_proto::time::{duration_to_ms, ms_to_rfc3339, timestamp_to_ms};
use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use super::egress::EgressPolicy;
use super::{ActionContext, ActionEnv, ActionError, ActionHandler};
use crate::json::pb_to_json;

/// At most this much of a response body is read.
const MAX_BODY_READ: usize = 1024 * 1024;
/// A text (non-JSON) body kept in the output is cut to this many bytes.
const MAX_TEXT_BODY: usize = 64 * 1024;
/// A failure message quotes at most this many bytes of the body.
const MAX_ERROR_BODY: usize = 512;
/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// Builds the one HTTP client every outgoing call shares.
///
/// This is the seam of the egress guard (DESIGN §5.2, a later issue): the guard will
/// install its resolver and redirect policy here. Until then no address is refused.
/// Proxies from the environment are always ignored (they would bypass the guard).
pub fn build_http_client(egress: Arc<EgressPolicy>) -> Result<reqwest::Client, reqwest::Error> {
    let _ = egress;
    // reqwest is built without a bundled crypto provider; install ring once per process.
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("almanac-executor/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs `call_api` actions with a shared client.
#[derive(Debug, Clone)]
pub struct CallApiHandler {
    client: reqwest::Client,
}

impl CallApiHandler {
    /// A handler sending through the environment's HTTP client.
    pub fn new(env: Arc<ActionEnv>) -> Self {
        Self {
            client: env.http.clone(),
        }
    }
}

#[async_trait]
impl ActionHandler for CallApiHandler {
    fn kind(&self) -> &'static str {
        "call_api"
    }

    async fn run(
        &self,
        ctx: &ActionContext,
        action: &Kind,
        _cancel: CancellationToken,
    ) -> Result<Value, ActionError> {
        let Kind::CallApi(call) = action else {
            return Err(ActionError::permanent(
                "call_api handler given another action kind",
            ));
        };
        self.call(ctx, call).await
    }
}

impl CallApiHandler {
    async fn call(&self, ctx: &ActionContext, call: &CallApiAction) -> Result<Value, ActionError> {
        let method = if call.method.is_empty() {
            reqwest::Method::GET
        } else {
            reqwest::Method::from_bytes(call.method.as_bytes()).map_err(|_| {
                ActionError::permanent(format!("{:?} is not an HTTP method", call.method))
            })?
        };
        let timeout = request_timeout(ctx, call);
        let mut request = self
            .client
            .request(method, &call.url)
            .headers(request_headers(ctx, call)?)
            .timeout(timeout);
        if let Some(Body::JsonBody(body)) = &call.body {
            request = request.json(&pb_to_json(body));
        }

        let started = Instant::now();
        let mut response = request.send().await.map_err(|e| send_error(e, timeout))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let mut complete = true;
        while let Some(chunk) = response.chunk().await.map_err(|e| send_error(e, timeout))? {
            if body.len() + chunk.len() > MAX_BODY_READ {
                body.extend_from_slice(&chunk[..MAX_BODY_READ - body.len()]);
                complete = false;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let duration_ms = started.elapsed().as_millis() as u64;

        if !accepted(call, status) {
            let mut message = format!("HTTP {status}");
            let excerpt = truncate_utf8(&body, MAX_ERROR_BODY);
            if !excerpt.trim().is_empty() {
                message.push_str(": ");
                message.push_str(excerpt.trim_end());
            }
            return Err(ActionError {
                retry_after_ms: None,
                message,
                retryable: status_is_retryable(status),
            });
        }

        let mut headers = serde_json::Map::new();
        if let Some(ct) = &content_type {
            headers.insert("content-type".into(), Value::String(ct.clone()));
        }
        Ok(json!({
            "status": status.as_u16(),
            "headers": headers,
            "body": output_body(content_type.as_deref(), &body, complete),
            "duration_ms": duration_ms,
        }))
    }
}

/// The action's headers plus the ones the executor sets itself.
fn request_headers(ctx: &ActionContext, call: &CallApiAction) -> Result<HeaderMap, ActionError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &call.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ActionError::permanent(format!("{name:?} is not a valid header name")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            ActionError::permanent(format!("the value of {name:?} is not a valid header value"))
        })?;
        headers.append(name, value);
    }
    let mut set = |name: &'static str, value: &str| -> Result<(), ActionError> {
        let value = HeaderValue::from_str(value).map_err(|_| {
            ActionError::permanent(format!("{name} {value:?} is not a header value"))
        })?;
        headers.insert(HeaderName::from_static(name), value);
        Ok(())
    };
    set("idempotency-key", &ctx.idempotency_key)?;
    if let Some(origin) = ctx.origin.as_ref().filter(|o| !o.schedule_id.is_empty()) {
        set("x-almanac-schedule-id", &origin.schedule_id)?;
        set("x-almanac-run-id", &origin.run_id)?;
        if let Some(nominal) = &origin.nominal_time {
            set(
                "x-almanac-nominal-time",
                &ms_to_rfc3339(timestamp_to_ms(nominal)),
            )?;
        }
    }
    Ok(headers)
}

/// The action's timeout (default 30 s), bounded by what is left before the deadline.
fn request_timeout(ctx: &ActionContext, call: &CallApiAction) -> Duration {
    let own = call
        .timeout
        .as_ref()
        .and_then(duration_to_ms)
        .filter(|ms| *ms > 0)
        .unwrap_or(DEFAULT_CALL_API_TIMEOUT_MS);
    let ms = ctx.remaining_ms().map_or(own, |left| own.min(left.max(1)));
    Duration::from_millis(ms as u64)
}

fn accepted(call: &CallApiAction, status: StatusCode) -> bool {
    if call.accepted_statuses.is_empty() {
        status.is_success()
    } else {
        call.accepted_statuses.contains(&u32::from(status.as_u16()))
    }
}

/// Whether a status that was not accepted might be accepted on another try.
fn status_is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// A transport failure: timeouts and connection problems are worth retrying; a request
/// that cannot even be built is not.
fn send_error(error: reqwest::Error, timeout: Duration) -> ActionError {
    if error.is_timeout() {
        return ActionError::retryable(format!(
            "the request timed out after {}",
            humanize(timeout)
        ));
    }
    let retryable = !(error.is_builder() || error.is_redirect());
    let what = if error.is_connect() {
        "could not connect"
    } else if error.is_redirect() {
        "too many redirects"
    } else {
        "the request failed"
    };
    ActionError {
        retry_after_ms: None,
        message: format!("{what}: {}", error_chain(&error.without_url())),
        retryable,
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// The body as kept in the output: parsed when it is (complete) JSON, else text cut to
/// 64 KiB.
fn output_body(content_type: Option<&str>, body: &[u8], complete: bool) -> Value {
    if complete
        && content_type.is_some_and(is_json_content_type)
        && let Ok(v) = serde_json::from_slice::<Value>(body)
    {
        return v;
    }
    Value::String(truncate_utf8(body, MAX_TEXT_BODY).into_owned())
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
fn truncate_utf8(bytes: &[u8], max: usize) -> std::borrow::Cow<'_, str> {
    let mut end = bytes.len().min(max);
    // Step back over a partial UTF-8 sequence (at most 3 bytes) at the cut.
    while end > 0 && end < bytes.len() && (bytes[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    String::from_utf8_lossy(&bytes[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::Origin;
    use almanac_proto::time::ms_to_timestamp;

    fn ctx(origin: Option<Origin>, deadline_ms: Option<i64>) -> ActionContext {
        ActionContext {
            execution_id: "e".into(),
            idempotency_key: "run-1/1".into(),
            node_id: "action".into(),
            attempt: 1,
            try_number: 1,
            origin,
            deadline_ms,
            now_ms: 1_000,
        }
    }

    #[test]
    fn scheduled_work_carries_the_almanac_headers() {
        let origin = Origin {
            schedule_id: "nightly".into(),
            run_id: "r1".into(),
            nominal_time: Some(ms_to_timestamp(1_793_000_000_123)),
            attempt: 1,
        };
        let h = request_headers(&ctx(Some(origin), None), &CallApiAction::default()).unwrap();
        assert_eq!(h["idempotency-key"], "run-1/1");
        assert_eq!(h["x-almanac-schedule-id"], "nightly");
        assert_eq!(h["x-almanac-run-id"], "r1");
        assert_eq!(h["x-almanac-nominal-time"], "2026-10-26T07:33:20.123Z");

        let h = request_headers(&ctx(None, None), &CallApiAction::default()).unwrap();
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn the_timeout_is_bounded_by_the_deadline() {
        let call = CallApiAction::default();
        assert_eq!(
            request_timeout(&ctx(None, None), &call),
            Duration::from_secs(30)
        );
        assert_eq!(
            request_timeout(&ctx(None, Some(3_500)), &call),
            Duration::from_millis(2_500)
        );
    }

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
        let mut call = CallApiAction::default();
        assert!(accepted(&call, StatusCode::NO_CONTENT));
        assert!(!accepted(&call, StatusCode::FOUND));
        call.accepted_statuses = vec![404];
        assert!(accepted(&call, StatusCode::NOT_FOUND));
        assert!(!accepted(&call, StatusCode::OK));
    }

    #[test]
    fn bodies_are_parsed_when_json_and_cut_when_text() {
        assert_eq!(
            output_body(Some("application/json; charset=utf-8"), br#"{"a":1}"#, true),
            json!({"a": 1})
        );
        assert_eq!(
            output_body(Some("application/problem+json"), b"[1]", true),
            json!([1])
        );
        assert_eq!(
            output_body(Some("text/plain"), b"{\"a\":1}", true),
            json!("{\"a\":1}")
        );
        assert_eq!(
            output_body(Some("application/json"), b"not json", true),
            json!("not json")
        );
        let long = "é".repeat(MAX_TEXT_BODY);
        let Value::String(cut) = output_body(None, long.as_bytes(), true) else {
            panic!("text expected")
        };
        assert!(cut.len() <= MAX_TEXT_BODY && cut.chars().all(|c| c == 'é'));
    }
}
