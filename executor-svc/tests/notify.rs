//! `send_notification` end to end against real servers on loopback: a webhook receiver
//! that verifies Standard Webhooks signatures with its own implementation of the
//! reference algorithm, a chat target that records Slack/Discord/Teams bodies, and a real
//! SMTP server (aiosmtpd, started by the test) that reads the mail back.

mod common;
#[path = "notify/support.rs"]
mod support;

use almanac_executor::config::ActionsConfig;
use almanac_executor::secrets::{Secret, SmtpProfile, SmtpTls};
use almanac_proto::executor::v1::execution_event::Kind as EventKind;
use almanac_proto::executor::v1::{ExecutionStatus, Origin, RetryPolicy};
use almanac_proto::time::{ms_to_duration, ms_to_timestamp};
use common::*;
use serde_json::json;
use support::*;

#[tokio::test]
async fn webhook_is_signed_per_standard_webhooks_and_the_receiver_verifies_it() {
    let receiver = Receiver::start(KEY_BYTES, vec![]).await;
    let (_dir, executor) = start(actions(&[])).await;
    let mut client = executor.client().await;

    let mut request = execute_request("nightly/7", webhook(&receiver.url("/hook"), "hook_key"));
    request.origin = Some(Origin {
        schedule_id: "nightly".into(),
        run_id: "run-7".into(),
        nominal_time: Some(ms_to_timestamp(1_793_000_000_000)),
        attempt: 1,
    });
    let events = execute_all(&mut client, request).await;
    let done = finished(&events);
    assert_eq!(
        done.status,
        ExecutionStatus::Succeeded as i32,
        "{}",
        done.error
    );

    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let hit = &got[0];
    assert_eq!(hit.verified, Ok(()), "the receiver verifies the signature");
    let output = json(done.result.as_ref().unwrap());
    assert_eq!(output["channel"], "webhook");
    assert_eq!(output["status"], 200);
    assert_eq!(output["webhook_id"], hit.headers["webhook-id"].as_str());
    assert!(hit.headers["webhook-id"].starts_with("msg_"));
    assert!(hit.headers["content-type"].starts_with("application/json"));
    assert_eq!(hit.headers["idempotency-key"], "nightly/7");
    assert_eq!(hit.headers["x-almanac-schedule-id"], "nightly");
    assert_eq!(hit.headers["x-extra"], "yes");

    let body: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(body["type"], "almanac.notification");
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    let data = &body["data"];
    assert_eq!(data["title"], "Nightly export");
    assert_eq!(data["text"], "12 rows & <b>done</b>");
    assert_eq!(
        data["fields"],
        json!([{"name": "rows", "value": "12"}, {"name": "took", "value": "3s"}])
    );
    assert_eq!(data["schedule_id"], "nightly");
    assert_eq!(data["run_id"], "run-7");
    assert_eq!(data["nominal_time"], "2026-10-26T07:33:20.000Z");
    assert_eq!(data["execution_id"], execution_id(&events).as_str());

    // The check can fail: another key, a changed body, an old timestamp.
    let now = chrono::Utc::now().timestamp();
    assert!(verify(b"another key entirely", &hit.headers, &hit.body, now).is_err());
    let mut tampered = hit.body.clone();
    tampered.push(b' ');
    assert!(verify(KEY_BYTES, &hit.headers, &tampered, now).is_err());
    assert!(verify(KEY_BYTES, &hit.headers, &hit.body, now + 600).is_err());
    executor.stop().await;
}

#[tokio::test]
async fn a_receiver_with_another_key_rejects_the_webhook_and_the_execution_fails() {
    let receiver = Receiver::start(b"the receiver's own key", vec![]).await;
    let (_dir, executor) = start(actions(&[])).await;
    let mut client = executor.client().await;
    let events = execute_all(
        &mut client,
        execute_request("wrong-key", webhook(&receiver.url("/hook"), "hook_key")),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(done.error.contains("401"), "{}", done.error);
    assert!(!done.retryable);
    assert!(receiver.received()[0].verified.is_err());
    executor.stop().await;
}

#[tokio::test]
async fn a_retried_webhook_keeps_its_webhook_id_and_is_signed_again() {
    let receiver = Receiver::start(KEY_BYTES, vec![503]).await;
    let (_dir, executor) = start(actions(&[])).await;
    let mut client = executor.client().await;
    let mut action = webhook(&receiver.url("/hook"), "hook_key");
    set_retry(&mut action, quick_retry(3));
    let events = execute_all(&mut client, execute_request("retry-me", action)).await;
    let done = finished(&events);
    assert_eq!(
        done.status,
        ExecutionStatus::Succeeded as i32,
        "{}",
        done.error
    );
    assert!(kinds(&events).contains(&"NodeRetrying"));

    let got = receiver.received();
    assert_eq!(got.len(), 2, "503 once, then 200");
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    assert!(got.iter().all(|h| h.verified.is_ok()));
    executor.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured() {
    let receiver = Receiver::start(KEY_BYTES, vec![429]).await;
    let (_dir, executor) = start(actions(&[])).await;
    let mut client = executor.client().await;
    let mut action = webhook(&receiver.url("/hook"), "hook_key");
    set_retry(&mut action, quick_retry(2));
    let events = execute_all(&mut client, execute_request("slow-down", action)).await;
    assert_eq!(finished(&events).status, ExecutionStatus::Succeeded as i32);
    let backoff = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(EventKind::NodeRetrying(r)) => r.backoff,
            _ => None,
        })
        .expect("a NodeRetrying event");
    assert!(
        backoff.seconds >= 1,
        "Retry-After: 1 is honoured: {backoff:?}"
    );
    executor.stop().await;
}

#[tokio::test]
async fn signing_secrets_that_are_missing_or_not_whsec_are_refused_at_execute() {
    let (_dir, executor) = start(actions(&[("plain_key", "just-a-password")])).await;
    let mut client = executor.client().await;
    for (secret, expected) in [
        ("nope", "no secret named \"nope\""),
        ("plain_key", "whsec_"),
    ] {
        let status = client
            .execute(execute_request(
                secret,
                webhook("https://hooks.example.com/x", secret),
            ))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let message = status.message();
        assert!(
            message.contains("action.send_notification.webhook.signing_secret"),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains("just-a-password"), "{message}");
    }
    executor.stop().await;
}

#[tokio::test]
async fn slack_discord_and_teams_receive_their_documented_shapes() {
    let target = Target::start().await;
    let secret_url = target.url("/ok");
    let (_dir, executor) = start(actions(&[("slack_url", &secret_url)])).await;
    let mut client = executor.client().await;

    let cases = [
        ("slack", chat("slack", ChatUrl::Secret("slack_url"))),
        (
            "discord",
            chat("discord", ChatUrl::Inline(&target.url("/ok"))),
        ),
        ("teams", chat("teams", ChatUrl::Inline(&target.url("/ok")))),
    ];
    for (i, (name, action)) in cases.into_iter().enumerate() {
        let events = execute_all(&mut client, execute_request(name, action)).await;
        let done = finished(&events);
        assert_eq!(
            done.status,
            ExecutionStatus::Succeeded as i32,
            "{name}: {}",
            done.error
        );
        let output = json(done.result.as_ref().unwrap());
        assert_eq!(output, json!({"channel": name, "status": 200}));
        let got = target.wait_for_requests(i + 1).await;
        let body: serde_json::Value = serde_json::from_str(&got[i].body).unwrap();
        assert_eq!(got[i].method, "POST");
        assert!(got[i].headers["content-type"].starts_with("application/json"));
        match name {
            "slack" => assert_slack(&body),
            "discord" => assert_discord(&body),
            _ => assert_teams(&body),
        }
    }
    // Nothing about the secret URL leaks into the execution's input or output.
    let execution = get_execution(&mut client, "slack").await;
    assert!(!format!("{execution:?}").contains(&secret_url));
    executor.stop().await;
}

#[tokio::test]
async fn a_chat_target_answering_404_fails_at_once_without_quoting_a_secret_url() {
    let echo = Echo::start().await;
    let secret_url = echo.url("/services/T000/B000/s3cr3t-token");
    let (_dir, executor) = start(actions(&[("slack_url", &secret_url)])).await;
    let mut client = executor.client().await;
    let events = execute_all(
        &mut client,
        execute_request("gone", chat("slack", ChatUrl::Secret("slack_url"))),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(!done.retryable);
    assert!(!kinds(&events).contains(&"NodeRetrying"));
    assert!(done.error.contains("404"), "{}", done.error);
    assert!(
        done.error
            .contains("the slack webhook from secret \"slack_url\""),
        "{}",
        done.error
    );
    // The target's page quoted the path; the message does not.
    assert!(!done.error.contains("s3cr3t-token"), "{}", done.error);
    assert!(done.error.contains("Cannot POST"), "{}", done.error);

    // A chat webhook URL written in the action is a credential too: its origin only.
    let inline = echo.url("/api/webhooks/42/inline-token");
    let events = execute_all(
        &mut client,
        execute_request("gone-inline", chat("discord", ChatUrl::Inline(&inline))),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    let origin = echo.url("");
    assert!(
        done.error.contains(&format!(
            "the discord webhook at {origin} answered HTTP 404"
        )),
        "{}",
        done.error
    );
    assert!(!done.error.contains("inline-token"), "{}", done.error);
    executor.stop().await;
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let echo = Echo::start().await;
    let (_dir, executor) = start(actions(&[])).await;
    let mut client = executor.client().await;
    let events = execute_all(
        &mut client,
        execute_request("moved", webhook(&echo.url("/moved"), "hook_key")),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(!done.retryable);
    assert!(done.error.contains("redirect"), "{}", done.error);
    assert_eq!(echo.paths(), ["/moved"], "the redirect is not followed");
    executor.stop().await;
}

#[tokio::test]
async fn literal_ips_the_guard_refuses_are_refused_before_anything_is_sent() {
    let target = Target::start().await;
    let mut config = ActionsConfig::default();
    config.secrets.insert("hook_key", Secret::new(key_secret()));
    config
        .secrets
        .insert("metadata_url", Secret::new("http://169.254.169.254/latest"));
    let (_dir, executor) = start(config).await;
    let mut client = executor.client().await;

    let status = client
        .execute(execute_request(
            "loop",
            webhook(&target.url("/ok"), "hook_key"),
        ))
        .await
        .expect_err("loopback is refused without an allow-list");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("action.send_notification.webhook.url")
    );
    assert!(
        status.message().contains("loopback"),
        "{}",
        status.message()
    );

    let status = client
        .execute(execute_request(
            "meta",
            chat("discord", ChatUrl::Secret("metadata_url")),
        ))
        .await
        .expect_err("metadata is refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let message = status.message();
    assert!(message.contains("action.send_notification.discord.url_secret"));
    assert!(message.contains("cloud metadata"), "{message}");
    assert!(!message.contains("169.254.169.254"), "{message}");
    assert!(target.requests().is_empty());
    executor.stop().await;
}

#[tokio::test]
async fn email_is_delivered_over_smtp_to_every_recipient() {
    let Some(sink) = SmtpSink::start(&["--auth", "almanac:smtp-pw"]) else {
        return;
    };
    let mut config = actions(&[("smtp_password", "smtp-pw"), ("wrong_password", "nope")]);
    let mut login = profile(sink.port, SmtpTls::None);
    login.username = Some("almanac".into());
    login.password_secret = Some("smtp_password".into());
    config.smtp.insert("default".into(), login.clone());
    login.password_secret = Some("wrong_password".into());
    config.smtp.insert("wrong".into(), login);
    let (_dir, executor) = start(config).await;
    let mut client = executor.client().await;

    let events = execute_all(
        &mut client,
        execute_request(
            "mail-1",
            email(
                "",
                &["ops@example.com", "Dev Team <dev@example.com>"],
                &["boss@example.com"],
            ),
        ),
    )
    .await;
    let done = finished(&events);
    assert_eq!(
        done.status,
        ExecutionStatus::Succeeded as i32,
        "{}",
        done.error
    );
    let output = json(done.result.as_ref().unwrap());
    assert_eq!(output["channel"], "email");
    assert_eq!(output["status"], 250);
    assert_eq!(
        output["accepted"],
        json!(["ops@example.com", "dev@example.com", "boss@example.com"])
    );
    assert!(output["smtp_response"].as_str().unwrap().starts_with("250"));

    let mails = sink.wait_for(1).await;
    let mail = &mails[0];
    assert_eq!(
        mail["login"], "almanac",
        "the profile's credentials were used"
    );
    assert_eq!(mail["mail_from"], "almanac@example.com");
    let mut rcpts: Vec<&str> = mail["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["boss@example.com", "dev@example.com", "ops@example.com"]
    );
    let data = mail["data"].as_str().unwrap();
    assert!(data.contains("Subject: Nightly export"), "{data}");
    assert!(
        data.contains("From: Almanac <almanac@example.com>"),
        "{data}"
    );
    assert!(data.contains("Cc: boss@example.com"), "{data}");
    assert!(data.contains("Message-ID: <almanac."), "{data}");
    assert!(data.contains("12 rows & <b>done</b>"), "{data}");
    assert!(data.contains("rows: 12\r\ntook: 3s"), "{data}");

    // A rejected login is a 5xx reply: final, and the password is not in the message.
    let events = execute_all(
        &mut client,
        execute_request("mail-2", email("wrong", &["ops@example.com"], &[])),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(!done.retryable, "{}", done.error);
    assert!(done.error.contains("535"), "{}", done.error);
    assert!(!done.error.contains("nope"), "{}", done.error);
    assert_eq!(sink.received().len(), 1);
    executor.stop().await;
}

#[tokio::test]
async fn a_deferred_mail_is_retried_as_the_same_message() {
    let Some(sink) = SmtpSink::start(&["--defer-first"]) else {
        return;
    };
    let mut config = actions(&[]);
    config
        .smtp
        .insert("default".into(), profile(sink.port, SmtpTls::None));
    let (_dir, executor) = start(config).await;
    let mut client = executor.client().await;
    let mut action = email("", &["ops@example.com"], &[]);
    set_retry(&mut action, quick_retry(3));
    let events = execute_all(&mut client, execute_request("mail-later", action)).await;
    let done = finished(&events);
    assert_eq!(
        done.status,
        ExecutionStatus::Succeeded as i32,
        "{}",
        done.error
    );
    assert!(kinds(&events).contains(&"NodeRetrying"), "451 is transient");
    let mails = sink.wait_for(2).await;
    assert_eq!(mails[0]["deferred"], true);
    let message_id = |mail: &serde_json::Value| {
        let data = mail["data"].as_str().unwrap();
        data.lines()
            .find(|l| l.starts_with("Message-ID:"))
            .map(str::to_owned)
            .expect("a Message-ID")
    };
    assert_eq!(message_id(&mails[0]), message_id(&mails[1]));
    executor.stop().await;
}

#[tokio::test]
async fn starttls_is_required_when_configured_and_a_server_without_it_is_refused() {
    let Some(sink) = SmtpSink::start(&[]) else {
        return;
    };
    let mut config = actions(&[]);
    config
        .smtp
        .insert("strict".into(), profile(sink.port, SmtpTls::Starttls));
    config
        .smtp
        .insert("wrapped".into(), profile(sink.port, SmtpTls::Tls));
    let (_dir, executor) = start(config).await;
    let mut client = executor.client().await;
    let events = execute_all(
        &mut client,
        execute_request("mail-tls", email("strict", &["ops@example.com"], &[])),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    // A server that does not offer STARTTLS will not start offering it: permanent.
    assert!(!done.retryable);
    assert!(
        done.error.contains("requires STARTTLS") && done.error.contains("nothing was sent"),
        "{}",
        done.error
    );
    assert!(sink.received().is_empty(), "no mail travels in clear text");

    // Implicit TLS speaks TLS from the first byte: a plain-text server is refused too.
    let events = execute_all(
        &mut client,
        execute_request("mail-wrapped", email("wrapped", &["ops@example.com"], &[])),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(
        !done.retryable,
        "a failed handshake is final: {}",
        done.error
    );
    assert!(!kinds(&events).contains(&"NodeRetrying"));
    assert!(
        done.error.contains("SMTP profile \"wrapped\""),
        "{}",
        done.error
    );
    assert!(sink.received().is_empty());
    executor.stop().await;
}

#[tokio::test]
async fn smtp_profiles_and_hosts_are_checked_against_the_configuration_and_the_guard() {
    let mut config = ActionsConfig::default();
    config
        .smtp
        .insert("literal".into(), profile(2525, SmtpTls::None));
    let mut named = profile(2525, SmtpTls::None);
    named.host = "localhost".into();
    config.smtp.insert("named".into(), named);
    let (_dir, executor) = start(config).await;
    let mut client = executor.client().await;

    for (name, expected) in [
        ("missing", "no SMTP profile named \"missing\""),
        ("literal", "loopback"),
    ] {
        let status = client
            .execute(execute_request(name, email(name, &["a@example.com"], &[])))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains("action.send_notification.email.profile")
        );
        assert!(status.message().contains(expected), "{}", status.message());
    }
    // A name is resolved by the executor and every address checked before connecting.
    let events = execute_all(
        &mut client,
        execute_request("named", email("named", &["a@example.com"], &[])),
    )
    .await;
    let done = finished(&events);
    assert_eq!(done.status, ExecutionStatus::Failed as i32);
    assert!(!done.retryable);
    assert!(done.error.contains("refused"), "{}", done.error);
    executor.stop().await;
}

fn profile(port: u16, tls: SmtpTls) -> SmtpProfile {
    SmtpProfile {
        host: "127.0.0.1".into(),
        port: Some(port),
        tls,
        username: None,
        password_secret: None,
        from: "Almanac <almanac@example.com>".into(),
    }
}

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Some(ms_to_duration(50)),
        max_backoff: Some(ms_to_duration(100)),
        multiplier: 0.0,
    }
}
