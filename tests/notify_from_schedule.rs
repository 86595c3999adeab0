//! `send_notification` driven from real schedules: a webhook schedule ends SUCCEEDED, a
//! target answering 404 ends the run FAILED with the status, a schedule naming a secret
//! the executor lacks is refused at CreateSchedule, and — with the executor as a real
//! process logging at debug level — no secret value reaches its logs, the events, the
//! execution, the scheduler's runs or either database.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use almanac_executor::config::ActionsConfig;
use almanac_executor::secrets::Secret;
use almanac_proto::executor::v1::{
    Action, ChatWebhookChannel, EmailChannel, GetExecutionRequest, MessageField,
    NotificationMessage, RetryPolicy, SendNotificationAction, WatchExecutionRequest,
    WebhookChannel, action::Kind, chat_webhook_channel::Target, send_notification_action::Channel,
};
use almanac_proto::scheduler::v1 as pb;
use common::sink::Sink;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_webhook_notification_schedule_ends_succeeded() {
    let sink = Sink::start().await;
    let stack = NotifyStack::start(&[("hook_key", &signing_secret())]).await;
    let mut client = stack.scheduler_client().await;
    let action = webhook(&sink.url("/hook"), "hook_key");
    let run = trigger_idle_schedule(&mut client, "notify-ok", action).await;
    let run = wait_for_run(&client, &run.id, "the run ends", is_terminal).await;
    assert_eq!(status_of(&run), pb::RunStatus::Succeeded, "{}", run.error);

    let hits = sink.hits_on("/hook");
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert!(hit.header("webhook-signature").unwrap().starts_with("v1,"));
    assert_eq!(hit.header("x-almanac-schedule-id"), Some("notify-ok"));
    let body: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["type"], "almanac.notification");
    assert_eq!(body["data"]["schedule_id"], "notify-ok");
    assert_eq!(body["data"]["run_id"], run.id.as_str());
    let result = serde_json::to_value(run.result.as_ref().expect("a result")).unwrap();
    assert_eq!(result["channel"], "webhook");
    assert_eq!(result["webhook_id"], hit.header("webhook-id").unwrap());
    stack.stop().await;
}

#[tokio::test]
async fn a_notification_to_a_target_answering_404_ends_the_run_failed_with_the_status() {
    let sink = Sink::start().await;
    sink.respond("/missing", 404, Duration::ZERO);
    let stack = NotifyStack::start(&[("slack_url", &sink.url("/missing"))]).await;
    let mut client = stack.scheduler_client().await;
    let run = trigger_idle_schedule(&mut client, "notify-404", slack("slack_url")).await;
    let run = wait_for_run(&client, &run.id, "the run ends", is_terminal).await;
    assert_eq!(status_of(&run), pb::RunStatus::Failed);
    assert!(run.error.contains("404"), "{}", run.error);
    assert!(run.error.contains("secret \"slack_url\""), "{}", run.error);
    assert!(!run.error.contains("/missing"), "{}", run.error);
    assert_eq!(sink.hits_on("/missing").len(), 1, "a 404 is not retried");
    stack.stop().await;
}

#[tokio::test]
async fn create_schedule_naming_a_secret_the_executor_lacks_is_refused_naming_the_field() {
    let stack = NotifyStack::start(&[]).await;
    let mut client = stack.scheduler_client().await;
    let status = client
        .create_schedule(create("no-secret", cron(YEARLY, "UTC"), slack("team_hook")))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("schedule.action.send_notification.slack.url_secret"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("team_hook"),
        "{}",
        status.message()
    );
    stack.stop().await;
}

#[tokio::test]
async fn secrets_never_reach_the_logs_the_events_the_runs_or_the_databases() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let token = format!("tok{}", uuid::Uuid::new_v4().simple());
    let slack_url = sink.url(&format!("/services/T0/B0/{token}"));
    let key = signing_secret();
    let password = format!("pw{}", uuid::Uuid::new_v4().simple());
    let smtp = python_with_aiosmtpd()
        .map(|python| SmtpSink::start(&python, &format!("almanac:{password}")));

    let mut toml = format!(
        "[secrets]\nhook_key = \"{key}\"\nslack_url = \"{slack_url}\"\nsmtp_password = \"{password}\"\n\n[egress]\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n"
    );
    if let Some(smtp) = &smtp {
        toml.push_str(&format!(
            "\n[smtp.default]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nusername = \"almanac\"\npassword_secret = \"smtp_password\"\nfrom = \"Almanac <almanac@example.com>\"\n",
            smtp.port
        ));
    }
    let config = dir.path().join("executor.toml");
    std::fs::write(&config, toml).unwrap();
    let executor = Process::spawn(
        "executor",
        &[
            "executor",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        dir.path(),
    );
    let scheduler = Process::spawn(
        "scheduler",
        &[
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--executor",
            &executor.url,
        ],
        dir.path(),
    );
    let mut client = scheduler_client(&scheduler.url).await;
    let mut executor_client = executor_client(&executor.url).await;

    let mut actions = vec![
        ("secret-webhook", webhook(&sink.url("/hook"), "hook_key")),
        ("secret-slack", slack("slack_url")),
    ];
    if smtp.is_some() {
        actions.push(("secret-email", email()));
    }
    let mut seen = String::new();
    for (id, action) in actions {
        let run = trigger_idle_schedule(&mut client, id, action).await;
        let run = wait_for_run(&client, &run.id, "the run ends", is_terminal).await;
        assert_eq!(
            status_of(&run),
            pb::RunStatus::Succeeded,
            "{id}: {}",
            run.error
        );
        let execution_id = run.attempts[0].execution_id.clone();
        let execution = executor_client
            .get_execution(GetExecutionRequest {
                execution_id: execution_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut events = executor_client
            .watch_execution(WatchExecutionRequest {
                execution_id,
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        for _ in 0..1_000 {
            match tokio::time::timeout(WAIT, events.message()).await.unwrap() {
                Ok(Some(event)) => seen.push_str(&format!("{event:?}\n")),
                Ok(None) => break,
                Err(e) => panic!("watch failed: {e}"),
            }
        }
        let schedule = client
            .get_schedule(pb::GetScheduleRequest {
                schedule_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        seen.push_str(&format!("{execution:?}\n{run:?}\n{schedule:?}\n"));
        seen.push_str(&format!("{:?}\n", all_runs(&mut client, id).await));
    }
    assert_eq!(sink.hits_on("/hook").len(), 1);
    assert_eq!(sink.hits_on(&format!("/services/T0/B0/{token}")).len(), 1);
    if let Some(smtp) = &smtp {
        let mails = smtp.wait_for(1).await;
        assert_eq!(mails[0]["login"], "almanac", "the password was used");
    }

    // Stop both so the logs and databases are complete, then search everything.
    drop((client, executor_client));
    let tail = |name: &str| {
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    assert!(
        scheduler.terminate().await,
        "the scheduler exits cleanly:\n{}",
        tail("scheduler")
    );
    assert!(
        executor.terminate().await,
        "the executor exits cleanly:\n{}",
        tail("executor")
    );
    let logs = std::fs::read_to_string(dir.path().join("executor.log")).unwrap();
    assert!(
        logs.contains("DEBUG") && logs.contains("send_notification"),
        "the executor logged its work at debug level: {logs}"
    );
    // The answers searched below do name the secrets: names are not values.
    assert!(seen.contains("hook_key") && seen.contains("slack_url"));
    let mut places = vec![
        ("executor log".to_owned(), logs.into_bytes()),
        (
            "scheduler log".to_owned(),
            std::fs::read(dir.path().join("scheduler.log")).unwrap(),
        ),
        ("API answers".to_owned(), seen.into_bytes()),
    ];
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains(".db") {
            places.push((name, std::fs::read(&path).unwrap()));
        }
    }
    for service in ["executor", "scheduler"] {
        if let Some(url) = almanac_testkit::postgres_database_for(dir.path(), service) {
            places.push((format!("{service} database"), postgres_dump(&url).await));
        }
    }
    let key_part = key.trim_start_matches("whsec_");
    for (what, bytes) in &places {
        for secret in [key.as_str(), key_part, &slack_url, &token, &password] {
            assert!(
                !contains(bytes, secret.as_bytes()),
                "{what} contains a secret value ({} bytes searched)",
                bytes.len()
            );
        }
    }
}

/// A Standard Webhooks secret: 32 hex digits are valid base64 (24 key bytes).
fn signing_secret() -> String {
    format!("whsec_{}", uuid::Uuid::new_v4().simple())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn message() -> Option<NotificationMessage> {
    Some(NotificationMessage {
        title: "Nightly export for {{ schedule.id }}".into(),
        text: "run {{ run.id }} at {{ run.nominal_time }}".into(),
        fields: vec![MessageField {
            name: "rows".into(),
            value: "12".into(),
        }],
    })
}

fn notification(channel: Channel) -> Action {
    Action {
        kind: Some(Kind::SendNotification(SendNotificationAction {
            channel: Some(channel),
            message: message(),
            retry: Some(RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            }),
        })),
    }
}

fn webhook(url: &str, secret: &str) -> Action {
    notification(Channel::Webhook(WebhookChannel {
        url: url.into(),
        signing_secret: secret.into(),
        headers: Default::default(),
    }))
}

fn slack(url_secret: &str) -> Action {
    notification(Channel::Slack(ChatWebhookChannel {
        target: Some(Target::UrlSecret(url_secret.into())),
    }))
}

fn email() -> Action {
    notification(Channel::Email(EmailChannel {
        profile: String::new(),
        to: vec!["ops@example.com".into()],
        cc: vec![],
        subject: String::new(),
    }))
}

/// Both services in this process; the executor with `secrets` and loopback allowed.
struct NotifyStack {
    _dir: tempfile::TempDir,
    executor_stop: tokio::sync::oneshot::Sender<()>,
    executor_task: tokio::task::JoinHandle<()>,
    scheduler: Service,
}

impl NotifyStack {
    async fn start(secrets: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut actions = ActionsConfig::default();
        for (name, value) in secrets {
            actions.secrets.insert(*name, Secret::new(*value));
        }
        actions.allow_loopback();
        let mut config = almanac_executor::config::Config::new(dir.path().join("executor.db"));
        config.database_url = almanac_testkit::postgres_database_for(dir.path(), "executor");
        config.actions = actions;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (executor_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let executor_task = tokio::spawn(async move {
            almanac_executor::server::run(config, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("executor runs");
        });
        let scheduler = start_scheduler(dir.path(), &url).await;
        Self {
            _dir: dir,
            executor_stop,
            executor_task,
            scheduler,
        }
    }

    async fn scheduler_client(
        &self,
    ) -> pb::scheduler_service_client::SchedulerServiceClient<tonic::transport::Channel> {
        scheduler_client(&self.scheduler.url()).await
    }

    async fn stop(self) {
        self.scheduler.stop().await;
        let _ = self.executor_stop.send(());
        tokio::time::timeout(WAIT, self.executor_task)
            .await
            .expect("the executor stops")
            .expect("the executor task does not panic");
    }
}

/// `almanac <args>` as a process logging at debug level to `<dir>/<name>.log`.
struct Process {
    child: Child,
    url: String,
}

impl Process {
    fn spawn(name: &str, args: &[&str], dir: &Path) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_almanac"))
            .args(args)
            .args(common::database_flags(dir, name))
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn almanac");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name} did not print its address"));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("{name} printed {line:?}"))
            .to_owned();
        Self { child, url }
    }

    /// SIGTERM, then a clean exit within 30 s (waiting without blocking the runtime,
    /// whose tasks close the test's connections when the server asks them to).
    async fn terminate(mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python of `ALMANAC_PYTHON` (or `python3`) when it has aiosmtpd; otherwise the
/// email part is skipped with a reason, unless `ALMANAC_REQUIRE_TOOLS=1`.
fn python_with_aiosmtpd() -> Option<String> {
    let python = std::env::var("ALMANAC_PYTHON").unwrap_or_else(|_| "python3".into());
    let present = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    tool_available(
        "python with aiosmtpd (the email part)",
        present,
        "pip install aiosmtpd",
    )
    .then_some(python)
}

/// `tests/clients/smtp_sink.py` requiring AUTH with `auth` (`USER:PASSWORD`).
struct SmtpSink {
    port: u16,
    child: Child,
    _stdin: ChildStdin,
    mails: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl SmtpSink {
    fn start(python: &str, auth: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/smtp_sink.py");
        let mut child = Command::new(python)
            .args([script, "--auth", auth])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP sink");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the sink prints its port").unwrap();
        let port = serde_json::from_str::<serde_json::Value>(&first).unwrap()["port"]
            .as_u64()
            .expect("a port") as u16;
        let mails = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&mails);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(mail) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(mail);
                }
            }
        });
        Self {
            port,
            child,
            _stdin: stdin,
            mails,
        }
    }

    async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        eventually(WAIT, &format!("{n} mails at the sink"), || {
            let got = self.mails.lock().unwrap().clone();
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

/// Every row of every table of the service schemas in the database at `url`, as text.
async fn postgres_dump(url: &str) -> Vec<u8> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_schema IN ('executor', 'scheduler') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list tables");
    assert!(!tables.is_empty(), "no tables in {url}");
    let mut dump = Vec::new();
    for (schema, table) in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM \"{schema}\".\"{table}\" t"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("read table");
        for row in rows {
            dump.extend_from_slice(row.as_bytes());
            dump.push(b'\n');
        }
    }
    dump
}
