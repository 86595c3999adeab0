//! What makes a `call_api` action well formed.

use super::{
    DEFAULT_CALL_API_TIMEOUT_MS, MAX_CALL_API_TIMEOUT_MS, Problems, check_headers, check_url,
    is_template,
};
use crate::executor::v1::{CallApiAction, call_api_action::Body, http_auth};

/// The most redirects an action may follow.
pub const MAX_REDIRECTS: u32 = 20;
/// The most response bytes an action may keep.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

pub(crate) fn check_call_api(call: &CallApiAction, out: &mut Problems) {
    let _ = DEFAULT_CALL_API_TIMEOUT_MS;
    if !call.method.is_empty()
        && !is_template(&call.method)
        && ::http::Method::from_bytes(call.method.as_bytes()).is_err()
    {
        out.bad("method", format!("{:?} is not an HTTP method", call.method));
    }
    check_url(out, "url", &call.url);
    check_headers(out, "headers", &call.headers);
    for name in call.query.keys() {
        if name.is_empty() {
            out.bad("query", "a query parameter needs a name");
        }
    }
    match &call.body {
        Some(Body::JsonBody(v)) if v.kind.is_none() => out.bad(
            "json_body",
            "a JSON body must have a value (use null explicitly)",
        ),
        Some(Body::RawBody(raw))
            if !raw.content_type.is_empty()
                && ::http::HeaderValue::from_str(&raw.content_type).is_err() =>
        {
            out.bad("raw_body.content_type", "not a valid header value")
        }
        _ => {}
    }
    out.duration("timeout", call.timeout.as_ref(), MAX_CALL_API_TIMEOUT_MS);
    for s in &call.accepted_statuses {
        if !(100..=599).contains(s) {
            out.bad(
                "accepted_statuses",
                format!("{s} is not an HTTP status (100-599)"),
            );
        }
    }
    if let Some(auth) = &call.auth {
        match &auth.kind {
            None => out.bad("auth", "one of bearer, basic, api_key is required"),
            Some(http_auth::Kind::Bearer(b)) => {
                out.required("auth.bearer.token_secret", &b.token_secret)
            }
            Some(http_auth::Kind::Basic(b)) => {
                out.required("auth.basic.username", &b.username);
                out.required("auth.basic.password_secret", &b.password_secret);
            }
            Some(http_auth::Kind::ApiKey(k)) => {
                out.required("auth.api_key.value_secret", &k.value_secret);
                match ::http::HeaderName::from_bytes(k.header.as_bytes()) {
                    Ok(h) if !super::RESERVED_HEADERS.contains(&h.as_str()) => {}
                    _ => out.bad(
                        "auth.api_key.header",
                        format!("{:?} is not a header an action may set", k.header),
                    ),
                }
            }
        }
    }
    if call.max_redirects.is_some_and(|n| n > MAX_REDIRECTS) {
        out.bad("max_redirects", format!("at most {MAX_REDIRECTS}"));
    }
    if call.max_response_bytes > MAX_RESPONSE_BYTES {
        out.bad(
            "max_response_bytes",
            format!("at most {MAX_RESPONSE_BYTES}"),
        );
    }
    for h in &call.response_headers {
        if ::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            out.bad(
                "response_headers",
                format!("{h:?} is not a valid header name"),
            );
        }
    }
    out.retry("retry", call.retry.as_ref());
}
