//! The HTTP side of notifications: where a channel posts (a URL in the action, or a
//! named secret holding one, which is then never shown), the one JSON POST through the
//! executor's guarded client, and what the answer means (2xx sent; connect errors,
//! timeouts, 5xx, 408 and 429 worth retrying; anything else final).

use std::time::Duration;

use almanac_proto::time::{ms_to_rfc3339, timestamp_to_ms};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::actions::egress::EgressRefusal;
use crate::actions::{ActionContext, ActionEnv, ActionError};

/// Time allowed for one POST when the deadline leaves more.
const DEFAULT_TIMEOUT_MS: i64 = 30_000;
/// A failure message quotes at most this many bytes of the answer.
const MAX_ERROR_BODY: usize = 512;

/// Where a notification goes, and how errors name it.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub url: url::Url,
    /// The URL itself, or "the slack webhook from secret X" when it is a secret.
    pub shown: String,
    /// Pieces of a secret URL (the whole, its path, its query) that no message may
    /// contain: a server's error page or a redirect refusal could quote them.
    redact: Vec<String>,
}

impl Endpoint {
    /// `message` with every piece of a secret URL replaced.
    pub fn scrub(&self, message: String) -> String {
        self.redact.iter().fold(message, |m, piece| {
            if m.contains(piece.as_str()) {
                m.replace(piece.as_str(), "<redacted>")
            } else {
                m
            }
        })
    }
}

/// Where a URL comes from.
#[derive(Debug, Clone, Copy)]
pub(super) enum UrlSource<'a> {
    /// Written in the action.
    Inline(&'a str),
    /// Written in the action, but a credential itself (a chat service's incoming
    /// webhook, whose path is the token): messages show its origin only.
    InlineCredential(&'a str),
    /// Held by the executor's secret of this name.
    Secret(&'a str),
}

/// Resolves a destination: the secret's value when it is one, parsed as an http(s) URL
/// and checked by the egress guard when its host is an IP literal. Every failure is
/// permanent, and none shows a URL that came from a secret.
pub(super) fn endpoint(
    env: &ActionEnv,
    what: &str,
    source: UrlSource<'_>,
) -> Result<Endpoint, ActionError> {
    let (raw, shown) = match source {
        UrlSource::Inline(url) => (
            url.to_owned(),
            without_query(url).unwrap_or_else(|| format!("the {what} URL")),
        ),
        UrlSource::InlineCredential(url) => (
            url.to_owned(),
            match url::Url::parse(url.trim()) {
                Ok(u) => format!("the {what} at {}", u.origin().ascii_serialization()),
                Err(_) => format!("the {what} URL"),
            },
        ),
        UrlSource::Secret(name) => {
            let secret = env.config.secrets.get(name).ok_or_else(|| {
                ActionError::permanent(format!("this executor has no secret named {name:?}"))
            })?;
            (
                secret.expose().to_owned(),
                format!("the {what} from secret {name:?}"),
            )
        }
    };
    let url = parse_http_url(&raw)
        .map_err(|problem| ActionError::permanent(format!("{shown} is not usable: {problem}")))?;
    env.egress.check_url(&url).map_err(|refusal| {
        ActionError::permanent(match source {
            UrlSource::Inline(_) | UrlSource::InlineCredential(_) => refusal.to_string(),
            // The refusal names the address; a secret URL's host stays unsaid.
            UrlSource::Secret(_) => format!(
                "{shown} is refused by the egress guard: {}; allow its network in the executor's egress configuration to permit it",
                refusal.reason
            ),
        })
    })?;
    let redact = match source {
        UrlSource::Inline(_) => Vec::new(),
        UrlSource::InlineCredential(_) | UrlSource::Secret(_) => {
            let mut pieces = vec![raw.trim().to_owned(), url.to_string()];
            if url.path().len() > 1 {
                pieces.push(url.path().to_owned());
            }
            if let Some(query) = url.query().filter(|q| !q.is_empty()) {
                pieces.push(query.to_owned());
            }
            // Longest first, so a whole URL is replaced before its path.
            pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
            pieces
        }
    };
    Ok(Endpoint { url, shown, redact })
}

/// A URL as messages show it: without its query and fragment, which may carry tokens.
fn without_query(raw: &str) -> Option<String> {
    let mut url = url::Url::parse(raw.trim()).ok()?;
    url.set_query(None);
    url.set_fragment(None);
    Some(url.to_string())
}

/// An absolute http(s) URL with a host, or why not (never quoting the value).
pub(super) fn parse_http_url(raw: &str) -> Result<url::Url, &'static str> {
    let url = url::Url::parse(raw.trim()).map_err(|_| "not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("not an http or https URL");
    }
    if url.host().is_none() {
        return Err("the URL has no host");
    }
    Ok(url)
}

/// The headers every outgoing notification carries (DESIGN §5.2): the execution's
/// `Idempotency-Key` and, for scheduled work, the schedule, run and nominal time.
pub(super) fn almanac_headers(ctx: &ActionContext) -> Result<HeaderMap, ActionError> {
    let mut headers = HeaderMap::new();
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

/// The time one POST may take: 30 s, bounded by what is left before the deadline.
pub(super) fn timeout(ctx: &ActionContext) -> Duration {
    let ms = ctx.remaining_ms().map_or(DEFAULT_TIMEOUT_MS, |left| {
        DEFAULT_TIMEOUT_MS.min(left.max(1))
    });
    Duration::from_millis(ms as u64)
}

/// POSTs a JSON body with `client` (the guarded client that follows no redirect) and
/// returns the (2xx) status, or the failure classified.
pub(super) async fn post_json(
    client: &reqwest::Client,
    ctx: &ActionContext,
    endpoint: &Endpoint,
    mut headers: HeaderMap,
    body: Vec<u8>,
) -> Result<StatusCode, ActionError> {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let timeout = timeout(ctx);
    let mut response = client
        .post(endpoint.url.clone())
        .headers(headers)
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| {
            let mut error = transport_error(&endpoint.shown, e, timeout);
            error.message = endpoint.scrub(error.message);
            error
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(status);
    }
    let retry_after_ms = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry_after_ms(v, ctx.now_ms));
    // Only the start of the answer is read: it goes into the message, nothing else.
    let mut excerpt = Vec::new();
    while excerpt.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    excerpt.truncate(MAX_ERROR_BODY);
    let mut error = status_error(&endpoint.shown, status, &excerpt, retry_after_ms);
    error.message = endpoint.scrub(error.message);
    Err(error)
}

/// A non-2xx answer: 5xx, 408 and 429 may pass on another try (honouring
/// `Retry-After`), others will not.
pub(super) fn status_error(
    shown: &str,
    status: StatusCode,
    excerpt: &[u8],
    retry_after_ms: Option<u64>,
) -> ActionError {
    let mut message = format!("{shown} answered HTTP {status}");
    let text = String::from_utf8_lossy(excerpt);
    let text = text.trim();
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(text);
    }
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    if retryable {
        ActionError::retry_after(message, retry_after_ms)
    } else {
        ActionError::permanent(message)
    }
}

/// A request that got no answer: timeouts and connection failures are worth retrying;
/// a refused redirect or a request that cannot be built is not. The URL is left out of
/// the message (it may come from a secret).
fn transport_error(shown: &str, error: reqwest::Error, timeout: Duration) -> ActionError {
    if error.is_timeout() {
        return ActionError::retryable(format!(
            "the request to {shown} timed out after {} ms",
            timeout.as_millis()
        ));
    }
    if let Some(refusal) = egress_refusal(&error) {
        return ActionError::permanent(format!("{shown}: {refusal}"));
    }
    if error.is_redirect() {
        // Standard Webhooks: a 3xx is a failure, "update the webhook URL instead"; and a
        // followed 302 would turn the POST into a GET without its body.
        return ActionError::permanent(format!(
            "{shown} answered with a redirect: notifications follow none; point the channel at the final URL"
        ));
    }
    let retryable = !error.is_builder();
    let what = if error.is_connect() {
        "could not connect to"
    } else {
        "the request failed for"
    };
    let message = format!("{what} {shown}: {}", error_chain(&error.without_url()));
    if retryable {
        ActionError::retryable(message)
    } else {
        ActionError::permanent(message)
    }
}

/// The egress guard's refusal of a resolved address, if that is why the request failed.
fn egress_refusal(error: &reqwest::Error) -> Option<&EgressRefusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refusal) = e.downcast_ref::<EgressRefusal>() {
            return Some(refusal);
        }
        source = e.source();
    }
    None
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

/// `Retry-After` as milliseconds from `now_ms`: delta-seconds or an HTTP-date
/// (RFC 9110 §10.2.3). A date in the past means "now".
pub(super) fn retry_after_ms(value: &str, now_ms: i64) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.timestamp_millis() - now_ms).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(retry_after_ms("7", 0), Some(7_000));
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s.
        let now = 784_111_777_000 - 3_000;
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(3_000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", now + 10_000),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", 0), None);
    }

    #[test]
    fn statuses_are_classified_like_call_api() {
        for (code, retryable) in [
            (500, true),
            (502, true),
            (503, true),
            (408, true),
            (429, true),
            (400, false),
            (401, false),
            (404, false),
            (410, false),
        ] {
            let e = status_error("x", StatusCode::from_u16(code).unwrap(), b"", Some(5));
            assert_eq!(e.retryable, retryable, "{code}");
            assert_eq!(e.retry_after_ms.is_some(), retryable, "{code}");
            assert!(e.message.contains(&code.to_string()));
        }
    }

    #[test]
    fn only_http_urls_with_a_host_are_used_and_never_quoted() {
        assert!(parse_http_url("https://hooks.example.com/x").is_ok());
        for bad in ["ftp://h/x", "not a url", "https://", "mailto:a@b"] {
            let problem = parse_http_url(bad).unwrap_err();
            assert!(!problem.contains(bad), "{problem}");
        }
    }
}
