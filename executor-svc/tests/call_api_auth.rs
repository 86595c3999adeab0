//! `call_api` credentials from the executor's named secrets: the target receives them
//! (bearer, basic, API-key header); no API answer, event, stored row or log line ever
//! holds a secret's value; a secret the executor lacks is refused before anything runs.

mod call_api_target;
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use almanac_executor::Config;
use almanac_executor::secrets::Secret;
use almanac_proto::executor::v1::{
    Action, ApiKeyAuth, BasicAuth, BearerAuth, CallApiAction, ExecutionStatus, GetExecutionRequest,
    HttpAuth, ValidateActionRequest, action::Kind, http_auth,
};
use base64::Engine as _;
use call_api_target::Api;
use common::*;

const TOKEN: &str = "tok-7c1e9b1f-bearer";
const PASSWORD: &str = "pw-53f0a1-basic";
const API_KEY: &str = "key-9e2d44-header";

/// Every log line of this test binary, at every level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_auth(url: String, auth: http_auth::Kind) -> Action {
    Action {
        kind: Some(Kind::CallApi(CallApiAction {
            url,
            auth: Some(HttpAuth { kind: Some(auth) }),
            ..Default::default()
        })),
    }
}

fn bearer(secret: &str) -> http_auth::Kind {
    http_auth::Kind::Bearer(BearerAuth {
        token_secret: secret.into(),
    })
}

fn basic(secret: &str) -> http_auth::Kind {
    http_auth::Kind::Basic(BasicAuth {
        username: "reporter".into(),
        password_secret: secret.into(),
    })
}

fn api_key(secret: &str) -> http_auth::Kind {
    http_auth::Kind::ApiKey(ApiKeyAuth {
        header: "X-Api-Key".into(),
        value_secret: secret.into(),
    })
}

async fn executor_with_secrets(dir: &std::path::Path) -> Executor {
    let mut config = Config::new(dir.join("executor.db"));
    let secrets = &mut config.actions.secrets;
    secrets.insert("api_token", Secret::new(TOKEN));
    secrets.insert("db_password", Secret::new(PASSWORD));
    secrets.insert("vendor_key", Secret::new(API_KEY));
    Executor::start_with(config).await
}

#[tokio::test]
async fn secrets_reach_the_target_and_never_an_answer_an_event_or_a_log() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = executor_with_secrets(dir.path()).await;
    let mut client = executor.client().await;
    let basic_value =
        base64::engine::general_purpose::STANDARD.encode(format!("reporter:{PASSWORD}"));

    let cases = [
        (
            "bearer",
            bearer("api_token"),
            "authorization",
            format!("Bearer {TOKEN}"),
        ),
        (
            "basic",
            basic("db_password"),
            "authorization",
            format!("Basic {basic_value}"),
        ),
        (
            "key",
            api_key("vendor_key"),
            "x-api-key",
            API_KEY.to_owned(),
        ),
    ];
    let mut exposed = String::new();
    for (name, auth, header, sent) in cases {
        let path = format!("/echo/{name}");
        let events = execute_all(
            &mut client,
            execute_request(name, with_auth(api.url(&path), auth)),
        )
        .await;
        let done = finished(&events);
        assert_eq!(
            done.status,
            ExecutionStatus::Succeeded as i32,
            "{}",
            done.error
        );
        let seen = api.seen_on(&path);
        assert_eq!(
            seen[0].headers[header], sent,
            "{name}: the target gets the credential"
        );

        // The target echoed the credential back: the result shows it redacted.
        let result = json(done.result.as_ref().unwrap());
        let echoed = result["body"][header].as_str().unwrap();
        assert!(echoed.contains("<redacted>"), "{name}: {echoed}");

        let execution = client
            .get_execution(GetExecutionRequest {
                execution_id: execution_id(&events),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        exposed.push_str(&serde_json::to_string(&execution).unwrap());
        exposed.push_str(&serde_json::to_string(&events).unwrap());
    }
    assert!(
        exposed.contains("api_token") && exposed.contains("vendor_key"),
        "names are kept"
    );
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("execution started"),
        "the logs were captured"
    );
    for secret in [TOKEN, PASSWORD, API_KEY, basic_value.as_str()] {
        assert!(
            !exposed.contains(secret),
            "{secret} appears in an API answer"
        );
        assert!(!logged.contains(secret), "{secret} appears in the logs");
    }
    executor.stop().await;
}

#[tokio::test]
async fn an_api_key_never_follows_a_redirect_to_another_origin() {
    let dir = tempfile::tempdir().unwrap();
    let first = Api::start().await;
    let other = Api::start().await;
    let executor = executor_with_secrets(dir.path()).await;
    let mut client = executor.client().await;
    let hop = |path: &str| first.url(&format!("/to?url={}", other.url(path)));

    let events = execute_all(
        &mut client,
        execute_request(
            "key-hop",
            with_auth(hop("/echo/key"), api_key("vendor_key")),
        ),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(!done.retryable);
    assert!(
        done.error
            .contains("the request carries an API key, which must not leave"),
        "{}",
        done.error
    );
    assert!(other.seen().is_empty(), "the other origin received nothing");

    // Authorization is dropped on such a hop, so a bearer request follows it without.
    let events = execute_all(
        &mut client,
        execute_request(
            "bearer-hop",
            with_auth(hop("/echo/bearer"), bearer("api_token")),
        ),
    )
    .await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    let seen = other.seen_on("/echo/bearer");
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("authorization"));
    executor.stop().await;
}

#[tokio::test]
async fn a_secret_the_executor_lacks_is_a_failed_precondition_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start().await;
    let executor = executor_with_secrets(dir.path()).await;
    let mut client = executor.client().await;

    for (auth, field) in [
        (bearer("nope"), "auth.bearer.token_secret"),
        (basic("nope"), "auth.basic.password_secret"),
        (api_key("nope"), "auth.api_key.value_secret"),
    ] {
        let action = with_auth(api.url("/echo/x"), auth);
        let status = client
            .execute(execute_request("missing", action.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let violations = almanac_proto::status::precondition_violations(&status);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, format!("action.call_api.{field}"));
        assert!(violations[0].description.contains("\"nope\""));

        let status = client
            .validate_action(ValidateActionRequest {
                action: Some(action),
                field_prefix: "schedule.action".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let violations = almanac_proto::status::precondition_violations(&status);
        assert_eq!(
            violations[0].field,
            format!("schedule.action.call_api.{field}")
        );
    }
    assert!(api.seen().is_empty(), "nothing was sent");
    executor.stop().await;
}
