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
    let (status, delay) = {
        let mut inner = sink.inner.lock().unwrap();
        let behaviour = inner
            .behaviour
            .get(&hit.path)
            .copied()
            .unwrap_or((200, Duration::ZERO));
        inner.hits.push(hit);
        behaviour
    };
    tokio::time::sleep(delay).await;
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
