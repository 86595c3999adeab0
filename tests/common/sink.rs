//! A loopback HTTP target that records every request (method, path, headers, body, when)
//! and answers with a status and delay the test chooses per path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

#[derive(Default)]
struct Inner {
    hits: Vec<Hit>,
    /// path → (status, delay)
    behaviour: HashMap<String, (u16, Duration)>,
    /// path → statuses to answer first, one per request, before `behaviour`.
    script: HashMap<String, std::collections::VecDeque<u16>>,
    /// path → requests answered after their delay (a request whose client gave up first
    /// is dropped by the server and never counted).
    completed: HashMap<String, usize>,
}

/// The sink; cloning shares it.
#[derive(Clone, Default)]
pub struct Sink {
    inner: Arc<Mutex<Inner>>,
    pub addr: Option<SocketAddr>,
}

impl Sink {
    /// Starts a sink on 127.0.0.1:0 answering 200 at once unless told otherwise.
    pub async fn start() -> Self {
        let mut sink = Sink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        sink.addr = Some(listener.local_addr().expect("sink addr"));
        let app = Router::new().fallback(record).with_state(sink.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("sink serves");
        });
        sink
    }

    /// The URL of `path` on this sink.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr.expect("started"))
    }

    /// Answer `status` after `delay` on `path`.
    pub fn respond(&self, path: &str, status: u16, delay: Duration) {
        self.inner
            .lock()
            .unwrap()
            .behaviour
            .insert(path.to_string(), (status, delay));
    }

    /// Answer these statuses, in order, to the next requests on `path` (then `respond`'s).
    pub fn script(&self, path: &str, statuses: &[u16]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .insert(path.to_string(), statuses.iter().copied().collect());
    }

    /// Requests on `path` that ran to their answer.
    pub fn completed(&self, path: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .completed
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.inner.lock().unwrap().hits.clone()
    }

    /// Requests to one path.
    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }
}

async fn record(
    State(sink): State<Sink>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let hit = Hit {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    };
    let path = hit.path.clone();
    let (status, delay) = {
        let mut inner = sink.inner.lock().unwrap();
        let (mut status, delay) = inner
            .behaviour
            .get(&path)
            .copied()
            .unwrap_or((200, Duration::ZERO));
        if let Some(next) = inner.script.get_mut(&path).and_then(|q| q.pop_front()) {
            status = next;
        }
        inner.hits.push(hit);
        (status, delay)
    };
    tokio::time::sleep(delay).await;
    *sink
        .inner
        .lock()
        .unwrap()
        .completed
        .entry(path)
        .or_default() += 1;
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
