//! A scripted HTTP target on loopback for the pipeline tests. It records every request
//! and answers by path:
//! - `/barrier/{name}/{parties}`: answers 200 only once `parties` requests to that path
//!   have arrived, 500 if they have not within [`BARRIER_WAIT`] — a rendezvous that only
//!   concurrent callers pass;
//! - `/hold/{name}`: waits until the test calls [`Scripted::release`] (at most
//!   [`BARRIER_WAIT`], then 500);
//! - `/gate/{status}/{path…}`: waits until a request to `/{path…}` has arrived, then
//!   answers `status` (500 if none arrives within [`BARRIER_WAIT`]);
//! - any other path: the next reply scripted for it with [`Scripted::script`] (the last
//!   one repeats), else 200 `{"path": …}`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::common::eventually;

/// How long a barrier, a hold or a gate waits before it gives up and answers 500.
pub const BARRIER_WAIT: Duration = Duration::from_secs(10);

/// One scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub delay: Duration,
}

impl Reply {
    /// `status` with a small JSON body, at once.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            body: json!({ "status": status }),
            delay: Duration::ZERO,
        }
    }

    /// 200 with this JSON body.
    pub fn json(body: Value) -> Self {
        Self {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }

    /// The same reply after `ms`.
    pub fn after(mut self, ms: u64) -> Self {
        self.delay = Duration::from_millis(ms);
        self
    }
}

/// One request the target received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub at: Instant,
}

impl Hit {
    /// A header's value (names are lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

struct Inner {
    hits: Mutex<Vec<Hit>>,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    released: Mutex<HashSet<String>>,
    /// Bumped on every request and every release: barriers, holds and gates wait on it.
    changed: watch::Sender<u64>,
}

/// The target; cloning shares it.
#[derive(Clone)]
pub struct Scripted {
    pub base: String,
    inner: Arc<Inner>,
}

impl Scripted {
    /// Starts a target on 127.0.0.1:0.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner {
            hits: Mutex::new(Vec::new()),
            scripts: Mutex::new(HashMap::new()),
            released: Mutex::new(HashSet::new()),
            changed: watch::Sender::new(0),
        });
        let app = axum::Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, inner }
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers the next requests to `path` with `replies`, in order; the last repeats.
    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.inner
            .scripts
            .lock()
            .unwrap()
            .insert(path.into(), replies.into());
    }

    /// Lets every request held on `/hold/{name}` (now or later) answer 200.
    pub fn release(&self, name: &str) {
        self.inner.released.lock().unwrap().insert(name.into());
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.inner.hits.lock().unwrap().clone()
    }

    /// The requests to one path.
    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    /// Waits until `path` has received at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Hit> {
        eventually(&format!("{n} request(s) to {path}"), || {
            let hits = self.hits_on(path);
            async move { (hits.len() >= n).then_some(hits) }
        })
        .await
    }
}

fn count(inner: &Inner, path: &str) -> usize {
    inner
        .hits
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.path == path)
        .count()
}

/// Waits (at most [`BARRIER_WAIT`]) until `ready` holds; whether it did.
async fn wait_until(inner: &Inner, ready: impl Fn() -> bool) -> bool {
    let mut changes = inner.changed.subscribe();
    let waited = tokio::time::timeout(BARRIER_WAIT, async {
        loop {
            if ready() {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    });
    waited.await.is_ok()
}

async fn serve(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    _body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    inner.hits.lock().unwrap().push(Hit {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().unwrap_or_default().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        at: Instant::now(),
    });
    inner.changed.send_modify(|n| *n += 1);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["barrier", _, parties] => {
            let parties: usize = parties.parse().unwrap_or(2);
            if wait_until(&inner, || count(&inner, &path) >= parties).await {
                axum::Json(json!({ "met": parties })).into_response()
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, "barrier not met").into_response()
            }
        }
        ["hold", name] => {
            let name = (*name).to_owned();
            if wait_until(&inner, || inner.released.lock().unwrap().contains(&name)).await {
                axum::Json(json!({ "released": name })).into_response()
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, "never released").into_response()
            }
        }
        ["gate", status, rest @ ..] => {
            let other = format!("/{}", rest.join("/"));
            let status = StatusCode::from_u16(status.parse().unwrap_or(500)).unwrap();
            if wait_until(&inner, || count(&inner, &other) >= 1).await {
                (status, format!("gate answered {}", status.as_u16())).into_response()
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, "gate never opened").into_response()
            }
        }
        _ => {
            let reply = {
                let mut scripts = inner.scripts.lock().unwrap();
                match scripts.get_mut(&path) {
                    Some(queue) if queue.len() > 1 => queue.pop_front(),
                    Some(queue) => queue.front().cloned(),
                    None => None,
                }
            }
            .unwrap_or_else(|| Reply::json(json!({ "path": path })));
            tokio::time::sleep(reply.delay).await;
            let status = StatusCode::from_u16(reply.status).unwrap();
            (status, axum::Json(reply.body)).into_response()
        }
    }
}
