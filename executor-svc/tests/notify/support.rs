//! Helpers of the notification tests: actions, executor configurations, a webhook
//! receiver verifying Standard Webhooks signatures on its own (HMAC-SHA256 over
//! `id.timestamp.body`, base64, constant-time comparison, 5-minute tolerance), a target
//! whose error page quotes the path, the documented chat shapes, and an aiosmtpd sink.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use almanac_executor::Config;
use almanac_executor::config::ActionsConfig;
use almanac_executor::secrets::Secret;
use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::{
    Action, ChatWebhookChannel, EmailChannel, Execution, GetExecutionRequest, MessageField,
    NotificationMessage, RetryPolicy, SendNotificationAction, WebhookChannel, action::Kind,
    chat_webhook_channel::Target as ChatTarget, send_notification_action::Channel,
};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tonic::transport::Channel as GrpcChannel;

use crate::common::{Executor, eventually};

/// The signing key the executor and the receiver share.
pub const KEY_BYTES: &[u8] = b"almanac-test-signing-key-32bytes";
/// The spec's replay tolerance.
pub const TOLERANCE_S: i64 = 5 * 60;

/// The key as a Standard Webhooks secret.
pub fn key_secret() -> String {
    format!("whsec_{}", STANDARD.encode(KEY_BYTES))
}

/// A configuration with the signing key as `hook_key`, `extra` secrets, and loopback
/// let through the egress guard.
pub fn actions(extra: &[(&str, &str)]) -> ActionsConfig {
    let mut config = ActionsConfig::default();
    config.secrets.insert("hook_key", Secret::new(key_secret()));
    for (name, value) in extra {
        config.secrets.insert(*name, Secret::new(*value));
    }
    config.allow_loopback();
    config
}

/// An executor with exactly these actions' configuration (loopback is let through only
/// when `actions` allows it), its database in a fresh tempdir.
pub async fn start(actions: ActionsConfig) -> (tempfile::TempDir, Executor) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("executor.db"));
    config.actions = actions;
    let executor = Executor::start_exact(config).await;
    (dir, executor)
}

/// The message every test sends.
pub fn message() -> NotificationMessage {
    NotificationMessage {
        title: "Nightly export".into(),
        text: "12 rows & <b>done</b>".into(),
        fields: vec![
            MessageField {
                name: "rows".into(),
                value: "12".into(),
            },
            MessageField {
                name: "took".into(),
                value: "3s".into(),
            },
        ],
    }
}

fn notification(channel: Channel) -> Action {
    Action {
        kind: Some(Kind::SendNotification(SendNotificationAction {
            channel: Some(channel),
            message: Some(message()),
            retry: None,
        })),
    }
}

/// A webhook to `url` signed with the secret `secret`, with one extra header.
pub fn webhook(url: &str, secret: &str) -> Action {
    let mut headers = std::collections::BTreeMap::new();
    headers.insert("X-Extra".to_owned(), "yes".to_owned());
    notification(Channel::Webhook(WebhookChannel {
        url: url.into(),
        signing_secret: secret.into(),
        headers,
    }))
}

/// Where a chat channel posts.
pub enum ChatUrl<'a> {
    Inline(&'a str),
    Secret(&'a str),
}

/// A slack, discord or teams notification.
pub fn chat(service: &str, url: ChatUrl<'_>) -> Action {
    let target = Some(match url {
        ChatUrl::Inline(u) => ChatTarget::Url(u.into()),
        ChatUrl::Secret(s) => ChatTarget::UrlSecret(s.into()),
    });
    let c = ChatWebhookChannel { target };
    notification(match service {
        "slack" => Channel::Slack(c),
        "discord" => Channel::Discord(c),
        "teams" => Channel::Teams(c),
        other => panic!("no chat service {other}"),
    })
}

/// An email through `profile`.
pub fn email(profile: &str, to: &[&str], cc: &[&str]) -> Action {
    notification(Channel::Email(EmailChannel {
        profile: profile.into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        cc: cc.iter().map(|s| s.to_string()).collect(),
        subject: String::new(),
    }))
}

/// Sets the retry policy of a notification.
pub fn set_retry(action: &mut Action, policy: RetryPolicy) {
    if let Some(Kind::SendNotification(n)) = action.kind.as_mut() {
        n.retry = Some(policy);
    }
}

/// The execution of an idempotency key.
pub async fn get_execution(
    client: &mut ExecutorServiceClient<GrpcChannel>,
    key: &str,
) -> Execution {
    client
        .get_execution(GetExecutionRequest {
            idempotency_key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .execution
        .unwrap()
}

/// The Standard Webhooks check, written from the specification: the signed content is
/// `{webhook-id}.{webhook-timestamp}.{body}`, the key signs it with HMAC-SHA256, and one
/// of the space-separated `v1,<base64>` signatures must match (compared in constant
/// time by `verify_slice`); the timestamp must be within the tolerance of `now_s`.
pub fn verify(
    key: &[u8],
    headers: &HashMap<String, String>,
    body: &[u8],
    now_s: i64,
) -> Result<(), String> {
    let header = |name: &str| headers.get(name).ok_or(format!("missing {name}"));
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let ts: i64 = timestamp.parse().map_err(|_| "bad timestamp".to_string())?;
    if (now_s - ts).abs() > TOLERANCE_S {
        return Err(format!(
            "timestamp {ts} is outside the tolerance of {now_s}"
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    for signature in signatures.split(' ') {
        if let Some(("v1", encoded)) = signature.split_once(',')
            && let Ok(bytes) = STANDARD.decode(encoded)
            && mac.clone().verify_slice(&bytes).is_ok()
        {
            return Ok(());
        }
    }
    Err("no signature matches".into())
}

/// One webhook the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub verified: Result<(), String>,
}

struct ReceiverState {
    key: Vec<u8>,
    /// Statuses to answer first, in order (503, or 429 with `Retry-After: 1`).
    script: Mutex<Vec<u16>>,
    received: Mutex<Vec<Received>>,
}

/// A webhook receiver on loopback: verifies every request; answers the scripted
/// statuses first, then 200 when the signature is valid and 401 when it is not.
pub struct Receiver {
    base: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start(key: &[u8], script: Vec<u16>) -> Self {
        let state = Arc::new(ReceiverState {
            key: key.to_vec(),
            script: Mutex::new(script),
            received: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let verified = verify(&state.key, &headers, &body, chrono::Utc::now().timestamp());
    let ok = verified.is_ok();
    state.received.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
        verified,
    });
    let scripted = {
        let mut script = state.script.lock().unwrap();
        (!script.is_empty()).then(|| script.remove(0))
    };
    match scripted {
        Some(429) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        Some(code) => (StatusCode::from_u16(code).unwrap(), "try again").into_response(),
        None if ok => StatusCode::OK.into_response(),
        None => (StatusCode::UNAUTHORIZED, "bad signature").into_response(),
    }
}

/// A server that records the paths it is asked for: `/moved` redirects (302) to
/// `/landed`, which answers 200; anything else gets a 404 page quoting the path, like
/// many frameworks' default pages.
pub struct Echo {
    base: String,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Echo {
    pub async fn start() -> Self {
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&paths);
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let seen = Arc::clone(&seen);
            async move {
                seen.lock().unwrap().push(uri.path().to_owned());
                match uri.path() {
                    "/moved" => (StatusCode::FOUND, [("location", "/landed")]).into_response(),
                    "/landed" => StatusCode::OK.into_response(),
                    path => (StatusCode::NOT_FOUND, format!("Cannot POST {path}")).into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, paths }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Slack incoming webhook: `text` (fallback) and Block Kit `blocks` — a header
/// (plain_text), a section of mrkdwn text (`&`, `<`, `>` escaped), a section of fields.
pub fn assert_slack(body: &Value) {
    assert_eq!(
        body["text"],
        "Nightly export: 12 rows &amp; &lt;b&gt;done&lt;/b&gt;"
    );
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 3, "{body}");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(blocks[0]["text"]["text"], "Nightly export");
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert_eq!(
        blocks[1]["text"]["text"],
        "12 rows &amp; &lt;b&gt;done&lt;/b&gt;"
    );
    assert_eq!(blocks[2]["type"], "section");
    let fields = blocks[2]["fields"].as_array().expect("fields");
    assert_eq!(fields.len(), 2);
    assert_eq!(fields[0]["type"], "mrkdwn");
    assert_eq!(fields[0]["text"], "*rows*\n12");
    assert_eq!(fields[1]["text"], "*took*\n3s");
}

/// Discord Execute Webhook: one embed with title, description and inline fields, and
/// no mentions allowed.
pub fn assert_discord(body: &Value) {
    let embeds = body["embeds"].as_array().expect("embeds");
    assert_eq!(embeds.len(), 1);
    let embed = &embeds[0];
    assert_eq!(embed["title"], "Nightly export");
    assert_eq!(embed["description"], "12 rows & <b>done</b>");
    assert_eq!(
        embed["fields"],
        serde_json::json!([
            {"name": "rows", "value": "12", "inline": true},
            {"name": "took", "value": "3s", "inline": true},
        ])
    );
    assert_eq!(body["allowed_mentions"]["parse"], serde_json::json!([]));
}

/// Teams Workflows webhook: a message with one Adaptive Card 1.4 attachment holding the
/// title (bold, medium), the text (wrapped) and a FactSet.
pub fn assert_teams(body: &Value) {
    assert_eq!(body["type"], "message");
    let attachments = body["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1);
    let a = &attachments[0];
    assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
    assert!(a["contentUrl"].is_null());
    let card = &a["content"];
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    let blocks = card["body"].as_array().expect("body");
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[0]["type"], "TextBlock");
    assert_eq!(blocks[0]["text"], "Nightly export");
    assert_eq!(blocks[0]["weight"], "Bolder");
    assert_eq!(blocks[0]["size"], "Medium");
    assert_eq!(blocks[1]["type"], "TextBlock");
    assert_eq!(blocks[1]["text"], "12 rows & <b>done</b>");
    assert_eq!(blocks[1]["wrap"], true);
    assert_eq!(blocks[2]["type"], "FactSet");
    assert_eq!(
        blocks[2]["facts"],
        serde_json::json!([{"title": "rows", "value": "12"}, {"title": "took", "value": "3s"}])
    );
}

/// The aiosmtpd sink of `tests/clients/smtp_sink.py`, killed when dropped.
pub struct SmtpSink {
    pub port: u16,
    child: Child,
    _stdin: ChildStdin,
    mails: Arc<Mutex<Vec<Value>>>,
}

impl SmtpSink {
    /// Starts the sink with these flags (`--auth USER:PASSWORD`, `--defer-first`), or
    /// `None` (with the reason printed) when Python or aiosmtpd is missing — unless
    /// `ALMANAC_REQUIRE_TOOLS=1`, which makes that a failure.
    pub fn start(flags: &[&str]) -> Option<Self> {
        let python = std::env::var("ALMANAC_PYTHON").unwrap_or_else(|_| "python3".into());
        let present = Command::new(&python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let why = format!("{python} with aiosmtpd is not available (pip install aiosmtpd)");
            if std::env::var("ALMANAC_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
                panic!("required tool missing (ALMANAC_REQUIRE_TOOLS=1): {why}");
            }
            eprintln!("SKIPPED: {why}; scripts/test.sh installs it");
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/smtp_sink.py");
        let mut command = Command::new(&python);
        command.arg(script).args(flags);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP sink");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the sink prints its port").unwrap();
        let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
            .as_u64()
            .expect("a port") as u16;
        let mails = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&mails);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mail) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(mail);
                }
            }
        });
        Some(Self {
            port,
            child,
            _stdin: stdin,
            mails,
        })
    }

    pub fn received(&self) -> Vec<Value> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits until `n` mails have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} mails at the sink"), || {
            let got = self.received();
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self._stdin.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
