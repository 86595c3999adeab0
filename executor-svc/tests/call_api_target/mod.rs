//! A loopback HTTP API for the `call_api` tests: it records every request (method, path,
//! query, headers, body, when) and answers by route — echoes, long streamed bodies,
//! redirect chains, statuses that fail a given number of times, a `Retry-After` — and
//! the helpers that run one call and read its result.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use almanac_proto::executor::v1::{
    Action, CallApiAction, ExecutionEvent, ExecutionStatus, action::Kind,
};

use crate::common::{execute_all, execute_request, finished, json};

type Client = almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient<
    tonic::transport::Channel,
>;

/// Runs `call` once (no retry) under `key` and returns its events.
pub async fn run(client: &mut Client, key: &str, mut call: CallApiAction) -> Vec<ExecutionEvent> {
    call.retry.get_or_insert_with(Default::default).max_attempts = 1;
    let action = Action {
        kind: Some(Kind::CallApi(call)),
    };
    execute_all(client, execute_request(key, action)).await
}

/// The result of a call that succeeded.
pub fn result_of(events: &[ExecutionEvent]) -> serde_json::Value {
    let done = finished(events);
    assert_eq!(
        done.status,
        ExecutionStatus::Succeeded as i32,
        "{}",
        done.error
    );
    json(done.result.as_ref().expect("a result"))
}

/// One request the API received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

#[derive(Default)]
struct ApiState {
    seen: Mutex<Vec<Seen>>,
}

/// The API; cloning shares it.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    state: Arc<ApiState>,
}

impl Api {
    /// Starts the API on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Serves the API on a bound listener.
    pub fn serve(listener: tokio::net::TcpListener) -> Self {
        let state = Arc::new(ApiState::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&state));
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The requests received on `path`.
    pub fn seen_on(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

/// Routes: `/echo/...` (200, JSON of what was received, auth headers included),
/// `/bytes/{n}` and `/json-bytes/{n}` (n bytes streamed in 16 KiB chunks, no length),
/// `/redirect/{n}` (302 to `/redirect/{n-1}`, `/redirect/0` answers "landed"),
/// `/flaky/{k}/...` (503 for the first k requests on that path, then 200),
/// `/throttled/...` (429 with `Retry-After: 1` first, then 200), `/status/{code}`,
/// `/headers` (200 with extra headers), `/to?url=...` (302 to that URL).
async fn answer(
    State(state): State<Arc<ApiState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    let header_map: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let earlier = {
        let mut seen = state.seen.lock().unwrap();
        let earlier = seen.iter().filter(|s| s.path == path).count();
        seen.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: header_map.clone(),
            body: body.to_vec(),
            at: Instant::now(),
        });
        earlier
    };
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let route = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    let n = || arg.parse::<usize>().unwrap_or(0);
    match route {
        "echo" => axum::Json(serde_json::json!({
            "method": method.as_str(),
            "path": path,
            "query": query,
            "authorization": header_map.get("authorization"),
            "x-api-key": header_map.get("x-api-key"),
            "body_len": body.len(),
        }))
        .into_response(),
        "bytes" => streamed(n(), "text/plain", None),
        "json-bytes" => streamed(n(), "application/json", Some(b"{\"pad\":\"")),
        "redirect" if n() > 0 => redirect(&format!("/redirect/{}", n() - 1)),
        "redirect" => "landed".into_response(),
        "to" => {
            let target = query
                .as_deref()
                .and_then(|q| q.strip_prefix("url="))
                .unwrap_or("/");
            redirect(target)
        }
        "flaky" if earlier < n() => {
            (StatusCode::SERVICE_UNAVAILABLE, "try again later").into_response()
        }
        "flaky" => axum::Json(serde_json::json!({"answered_on": earlier + 1})).into_response(),
        "throttled" if earlier == 0 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "slow down",
        )
            .into_response(),
        "throttled" => "thanks for waiting".into_response(),
        "status" => {
            let code = StatusCode::from_u16(arg.parse().unwrap_or(500)).unwrap();
            (code, format!("boom {}", code.as_u16())).into_response()
        }
        "headers" => {
            let mut response = "with headers".into_response();
            let h = response.headers_mut();
            h.insert("x-request-id", "req-42".parse().unwrap());
            h.append("x-multi", "one".parse().unwrap());
            h.append("x-multi", "two".parse().unwrap());
            response
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn redirect(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_owned())]).into_response()
}

/// `len` bytes (after `prefix`) in 16 KiB chunks, without a Content-Length.
fn streamed(len: usize, content_type: &'static str, prefix: Option<&'static [u8]>) -> Response {
    const CHUNK: usize = 16 * 1024;
    let mut left = len;
    let mut first = prefix;
    let chunks = std::iter::from_fn(move || {
        if let Some(p) = first.take() {
            return Some(Ok::<_, std::io::Error>(Bytes::from_static(p)));
        }
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK);
        left -= n;
        Some(Ok(Bytes::from(vec![b'a'; n])))
    });
    let stream = futures::stream::iter(chunks);
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The time between two requests, by the API's clock.
pub fn gap(a: &Seen, b: &Seen) -> Duration {
    b.at.duration_since(a.at)
}
