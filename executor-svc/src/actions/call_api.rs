//! The `call_api` action: one HTTP request through the guarded client. It sends the
//! action's method, URL (plus its query), headers, body and credentials (from a named
//! secret) with `Idempotency-Key` and, for scheduled work, `X-Almanac-Schedule-Id`,
//! `X-Almanac-Run-Id` and `X-Almanac-Nominal-Time`; its result is the status, kept
//! headers, body (read up to a limit), whether it was cut, and the duration.

mod auth;
mod response;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use almanac_proto::action::{DEFAULT_CALL_API_TIMEOUT_MS, FieldViolation, is_template};
use almanac_proto::executor::v1::{CallApiAction, action::Kind, call_api_action::Body};
use almanac_proto::time::{duration_to_ms, ms_to_rfc3339, timestamp_to_ms};
use async_trait::async_trait;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use url::Url;

pub use super::http::build_http_client;
use super::http::{DEFAULT_MAX_REDIRECTS, RedirectRules, build_guarded_client, refusal};
use super::{ActionContext, ActionEnv, ActionError, ActionHandler};
use crate::json::pb_to_json;
use auth::{credential, secret_field};
use response::{
    DEFAULT_MAX_RESPONSE_BYTES, accepted, kept_headers, output_body, read_body, redact_json,
    redact_text, status_failure, system_time,
};

/// The most redirects a client is built for (the action's validation allows no more).
const MAX_REDIRECTS: u32 = 20;

/// Runs `call_api` actions.
#[derive(Debug)]
pub struct CallApiHandler {
    env: Arc<ActionEnv>,
    /// Clients for redirect rules other than the default (`env.http`), built on first use.
    clients: Mutex<HashMap<RedirectRules, reqwest::Client>>,
}

impl CallApiHandler {
    /// A handler sending through the environment's guarded client.
    pub fn new(env: Arc<ActionEnv>) -> Self {
        Self {
            env,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The guarded client that follows redirects by `rules`.
    fn client(&self, rules: RedirectRules) -> Result<reqwest::Client, ActionError> {
        if rules == RedirectRules::default() {
            return Ok(self.env.http.clone());
        }
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&rules) {
            return Ok(client.clone());
        }
        let client = build_guarded_client(Arc::clone(&self.env.egress), rules).map_err(|e| {
            tracing::error!(error = %e, "cannot build an http client");
            ActionError::retryable("the executor could not build an HTTP client")
        })?;
        clients.insert(rules, client.clone());
        Ok(client)
    }
}

#[async_trait]
impl ActionHandler for CallApiHandler {
    fn kind(&self) -> &'static str {
        "call_api"
    }

    fn check(&self, action: &Kind, prefix: &str) -> Vec<FieldViolation> {
        let Kind::CallApi(call) = action else {
            return Vec::new();
        };
        let mut refused = Vec::new();
        if !is_template(&call.url)
            && let Ok(url) = Url::parse(&call.url)
            && let Err(refusal) = self.env.egress.check_url(&url)
        {
            refused.push(FieldViolation::new(
                format!("{prefix}.url"),
                refusal.to_string(),
            ));
        }
        // Secret names are never rendered (templates.rs): a name is always literal.
        if let Some((field, name)) = secret_field(call.auth.as_ref()) {
            refused.extend(self.env.missing_secret(format!("{prefix}.{field}"), name));
        }
        refused
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
        let url = target_url(call)?;
        // IP literals never reach the resolver: the guard looks at them here, before
        // anything is sent (redirect hops are checked by the client's redirect policy).
        self.env
            .egress
            .check_url(&url)
            .map_err(|refusal| ActionError::permanent(refusal.to_string()))?;
        let credential = credential(&self.env.config.secrets, call.auth.as_ref())?;
        let echoes = credential
            .as_ref()
            .map(|c| c.echoes.clone())
            .unwrap_or_default();
        let client = self.client(RedirectRules {
            max_redirects: call
                .max_redirects
                .unwrap_or(DEFAULT_MAX_REDIRECTS)
                .min(MAX_REDIRECTS),
            same_origin_only: credential.as_ref().is_some_and(|c| c.api_key),
        })?;

        let mut headers = request_headers(ctx, call)?;
        if let Some(c) = credential {
            headers.insert(c.header, c.value);
        }
        let timeout = request_timeout(ctx, call);
        let mut request = client.request(method, url);
        match &call.body {
            Some(Body::JsonBody(body)) => request = request.json(&pb_to_json(body)),
            Some(Body::RawBody(raw)) => {
                // The body's own type, else a Content-Type header of the action, else bytes.
                if !raw.content_type.is_empty() || !headers.contains_key(CONTENT_TYPE) {
                    let content_type = match raw.content_type.as_str() {
                        "" => "application/octet-stream",
                        given => given,
                    };
                    let content_type = HeaderValue::from_str(content_type).map_err(|_| {
                        ActionError::permanent("raw_body.content_type is not a valid header value")
                    })?;
                    headers.insert(CONTENT_TYPE, content_type);
                }
                request = request.body(raw.data.clone());
            }
            None => {}
        }
        let request = request.headers(headers).timeout(timeout);

        let started = Instant::now();
        let mut response = request.send().await.map_err(|e| send_error(e, timeout))?;
        let status = response.status();
        let limit = match call.max_response_bytes {
            0 => DEFAULT_MAX_RESPONSE_BYTES,
            n => n,
        };
        let body = read_body(&mut response, limit)
            .await
            .map_err(|e| send_error(e, timeout))?;
        let duration_ms = started.elapsed().as_millis() as u64;
        tracing::debug!(
            execution_id = %ctx.execution_id,
            node_id = %ctx.node_id,
            status = status.as_u16(),
            duration_ms,
            bytes = body.bytes.len(),
            cut = body.cut,
            "call_api answered"
        );

        if !accepted(&call.accepted_statuses, status) {
            let now = system_time(ctx.now_ms + duration_ms as i64);
            let mut failure = status_failure(status, response.headers(), &body.bytes, now);
            failure.message = redact_text(&failure.message, &echoes);
            return Err(failure);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let (body_value, shortened) = output_body(content_type, &body.bytes, !body.cut);
        let headers = kept_headers(response.headers(), &call.response_headers);
        Ok(redact_json(
            json!({
                "status": status.as_u16(),
                "headers": headers,
                "body": body_value,
                "truncated": body.cut || shortened,
                "duration_ms": duration_ms,
            }),
            &echoes,
        ))
    }
}

/// The URL to call: the action's (templates rendered), an absolute http(s) URL without
/// credentials, with the action's query parameters appended to its own.
fn target_url(call: &CallApiAction) -> Result<Url, ActionError> {
    let mut url = Url::parse(&call.url)
        .map_err(|e| ActionError::permanent(format!("{:?} is not a URL: {e}", call.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ActionError::permanent(format!(
            "{:?} is not an http or https URL with a host",
            call.url
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ActionError::permanent(
            "credentials in the URL are not allowed: use auth with a secret",
        ));
    }
    if !call.query.is_empty() {
        url.query_pairs_mut().extend_pairs(&call.query);
    }
    Ok(url)
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

/// A transport failure: the egress guard's refusals and requests that cannot be built
/// are final; timeouts and connection problems are worth retrying.
fn send_error(error: reqwest::Error, timeout: Duration) -> ActionError {
    if let Some(refused) = refusal(&error) {
        return ActionError::permanent(refused);
    }
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
        "a redirect could not be followed"
    } else if error.is_body() || error.is_decode() {
        "the response body could not be read"
    } else {
        "the request failed"
    };
    let message = format!("{what}: {}", error_chain(&error.without_url()));
    if retryable {
        ActionError::retryable(message)
    } else {
        ActionError::permanent(message)
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
            handover: tokio_util::sync::CancellationToken::new(),
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
    fn the_query_is_appended_to_the_urls_own() {
        let mut call = CallApiAction {
            url: "http://example.com/p?a=1".into(),
            ..Default::default()
        };
        assert_eq!(
            target_url(&call).unwrap().as_str(),
            "http://example.com/p?a=1"
        );
        call.query.insert("b".into(), "x y&z".into());
        assert_eq!(
            target_url(&call).unwrap().as_str(),
            "http://example.com/p?a=1&b=x+y%26z"
        );
        for bad in ["ftp://example.com/", "http://u:p@example.com/", "not a url"] {
            call.url = bad.into();
            assert!(!target_url(&call).unwrap_err().retryable, "{bad}");
        }
    }
}
