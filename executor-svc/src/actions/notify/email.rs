//! The `email` channel: SMTP through a named profile of the executor's configuration
//! (`[smtp.<name>]`; the profile "" is "default"), with lettre on tokio and rustls.
//!
//! The egress guard applies here too: the executor resolves the profile's host itself,
//! checks every address, and connects to an allowed one, while TLS still verifies the
//! certificate for the host *name* (lettre's `TlsParameters` carry the name apart from
//! the address connected to). `starttls` requires the upgrade (a server that does not
//! offer STARTTLS is refused before any credentials or mail are sent), `tls` is TLS from
//! the first byte, `none` is plain text for local development.
//!
//! The mail: `From` the profile's sender, `To` and `Cc` the recipients, the subject (or
//! the title), a text body of the text followed by the fields as `name: value` lines,
//! and a `Message-ID` derived from the execution key and node, so a retried send is
//! recognisably the same mail.

use std::net::IpAddr;
use std::time::Duration;

use almanac_proto::executor::v1::{EmailChannel, NotificationMessage};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::http;
use crate::actions::{ActionContext, ActionEnv, ActionError};
use crate::secrets::{SmtpProfile, SmtpTls};

/// The profile an empty name means.
pub(super) const DEFAULT_PROFILE: &str = "default";
/// A subject when neither one nor a title is given.
const FALLBACK_SUBJECT: &str = "Almanac notification";
/// Addresses of one host tried at most.
const MAX_ADDRESSES: usize = 4;

/// The profile name an action's `profile` means.
pub(super) fn profile_name(profile: &str) -> &str {
    if profile.is_empty() {
        DEFAULT_PROFILE
    } else {
        profile
    }
}

/// Sends one mail.
pub(super) async fn send(
    env: &ActionEnv,
    ctx: &ActionContext,
    channel: &EmailChannel,
    message: &NotificationMessage,
) -> Result<Value, ActionError> {
    let name = profile_name(&channel.profile);
    let profile = env.config.smtp.get(name).ok_or_else(|| {
        ActionError::permanent(format!("this executor has no SMTP profile named {name:?}"))
    })?;
    let credentials = credentials(env, name, profile)?;
    let (mail, recipients) = build_mail(ctx, profile, channel, message)?;
    let timeout = http::timeout(ctx);
    let addresses = allowed_addresses(env, name, profile, timeout).await?;

    let mut last_error = None;
    for ip in addresses.into_iter().take(MAX_ADDRESSES) {
        let transport = transport(profile, ip, credentials.clone(), timeout)?;
        let sent = tokio::time::timeout(timeout, transport.send(mail.clone())).await;
        match sent {
            Err(_) => {
                return Err(ActionError::retryable(format!(
                    "the SMTP server of profile {name:?} did not answer within {} ms",
                    timeout.as_millis()
                )));
            }
            Ok(Ok(response)) => {
                let reply = std::iter::once(response.code().to_string())
                    .chain(response.message().map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join(" ");
                tracing::debug!(execution_id = %ctx.execution_id, profile = name,
                    recipients = recipients.len(), "email notification sent");
                return Ok(json!({
                    "channel": "email",
                    "status": u16::from(response.code()),
                    "profile": name,
                    "accepted": recipients,
                    "smtp_response": reply,
                }));
            }
            // Nothing was said at the SMTP level: another address of the host may do.
            Ok(Err(error)) if is_connection_failure(&error) => last_error = Some(error),
            Ok(Err(error)) => return Err(smtp_error(name, profile.tls, &error)),
        }
    }
    Err(match last_error {
        Some(error) => smtp_error(name, profile.tls, &error),
        None => ActionError::retryable(format!("the SMTP host of profile {name:?} has no address")),
    })
}

/// The login, when the profile has one: a username with its password secret.
fn credentials(
    env: &ActionEnv,
    name: &str,
    profile: &SmtpProfile,
) -> Result<Option<Credentials>, ActionError> {
    match (&profile.username, &profile.password_secret) {
        (None, None) => Ok(None),
        (Some(user), Some(secret)) => {
            let password = env.config.secrets.get(secret).ok_or_else(|| {
                ActionError::permanent(format!(
                    "SMTP profile {name:?} names password secret {secret:?}, which this executor does not have"
                ))
            })?;
            Ok(Some(Credentials::new(
                user.clone(),
                password.expose().to_owned(),
            )))
        }
        _ => Err(ActionError::permanent(format!(
            "SMTP profile {name:?} needs both username and password_secret, or neither"
        ))),
    }
}

/// The mail and its recipients (to, then cc), or a permanent error naming the bad
/// address.
fn build_mail(
    ctx: &ActionContext,
    profile: &SmtpProfile,
    channel: &EmailChannel,
    message: &NotificationMessage,
) -> Result<(Message, Vec<String>), ActionError> {
    let parse = |field: &str, raw: &str| -> Result<Mailbox, ActionError> {
        raw.trim().parse::<Mailbox>().map_err(|e| {
            ActionError::permanent(format!("{field} {raw:?} is not an email address: {e}"))
        })
    };
    let from = parse("the profile's sender", &profile.from)?;
    let subject = match (channel.subject.trim(), message.title.trim()) {
        ("", "") => FALLBACK_SUBJECT.to_owned(),
        ("", title) => title.to_owned(),
        (subject, _) => subject.to_owned(),
    };
    // A header is one line.
    let subject = subject.replace(['\r', '\n'], " ");
    let message_id = format!("<almanac.{}@{}>", mail_key(ctx), from.email.domain());
    let mut builder = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(message_id))
        .header(ContentType::TEXT_PLAIN);
    let mut recipients = Vec::new();
    for raw in &channel.to {
        let mailbox = parse("recipient", raw)?;
        recipients.push(mailbox.email.to_string());
        builder = builder.to(mailbox);
    }
    for raw in &channel.cc {
        let mailbox = parse("copy recipient", raw)?;
        recipients.push(mailbox.email.to_string());
        builder = builder.cc(mailbox);
    }
    let mail = builder
        .body(text_body(message))
        .map_err(|e| ActionError::permanent(format!("the mail cannot be built: {e}")))?;
    Ok((mail, recipients))
}

/// The text, then one `name: value` line per field.
pub(super) fn text_body(message: &NotificationMessage) -> String {
    let mut body = message.text.clone();
    if !message.fields.is_empty() {
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        for field in &message.fields {
            body.push_str(&format!("{}: {}\n", field.name, field.value));
        }
    }
    body
}

/// 32 hex digits, the same for every try of one notification.
fn mail_key(ctx: &ActionContext) -> String {
    let mut hash = Sha256::new();
    hash.update(b"email\0");
    hash.update(ctx.idempotency_key.as_bytes());
    hash.update([0]);
    hash.update(ctx.node_id.as_bytes());
    hex::encode(&hash.finalize()[..16])
}

/// The profile host's addresses that the egress guard allows, in resolver order.
async fn allowed_addresses(
    env: &ActionEnv,
    name: &str,
    profile: &SmtpProfile,
    timeout: Duration,
) -> Result<Vec<IpAddr>, ActionError> {
    let host = profile.host.trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let lookup = tokio::net::lookup_host((host, profile.port()));
            match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                Ok(Err(e)) => {
                    return Err(ActionError::retryable(format!(
                        "cannot resolve the SMTP host {host:?} of profile {name:?}: {e}"
                    )));
                }
                Err(_) => {
                    return Err(ActionError::retryable(format!(
                        "resolving the SMTP host {host:?} of profile {name:?} timed out"
                    )));
                }
            }
        }
    };
    let mut allowed = Vec::new();
    let mut refusal = None;
    for ip in resolved {
        match env.egress.check_ip(ip) {
            Ok(()) if !allowed.contains(&ip) => allowed.push(ip),
            Ok(()) => {}
            Err(e) => refusal = refusal.or(Some(e)),
        }
    }
    match (allowed.is_empty(), refusal) {
        (true, Some(refusal)) => Err(ActionError::permanent(format!(
            "the SMTP server of profile {name:?}: {refusal}"
        ))),
        (true, None) => Err(ActionError::retryable(format!(
            "the SMTP host {host:?} of profile {name:?} resolved to no address"
        ))),
        (false, _) => Ok(allowed),
    }
}

/// A transport to one address, verifying TLS for the profile's host name.
fn transport(
    profile: &SmtpProfile,
    ip: IpAddr,
    credentials: Option<Credentials>,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, ActionError> {
    let host = profile.host.trim_start_matches('[').trim_end_matches(']');
    let tls_parameters = || {
        TlsParameters::new(host.to_owned())
            .map_err(|e| ActionError::permanent(format!("TLS cannot be set up for {host:?}: {e}")))
    };
    let tls = match profile.tls {
        SmtpTls::Starttls => Tls::Required(tls_parameters()?),
        SmtpTls::Tls => Tls::Wrapper(tls_parameters()?),
        SmtpTls::None => Tls::None,
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(ip.to_string())
        .port(profile.port())
        .tls(tls)
        .timeout(Some(timeout));
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials);
    }
    Ok(builder.build())
}

/// No SMTP reply, TLS or client problem: the connection itself failed.
fn is_connection_failure(error: &lettre::transport::smtp::Error) -> bool {
    !(error.is_permanent()
        || error.is_transient()
        || error.is_client()
        || error.is_tls()
        || error.is_response()
        || tls_failed(error))
}

/// Whether rustls refused the session (a server that does not speak TLS, a certificate
/// that does not verify): lettre reports a failed handshake as a connection error, but
/// another try meets the same server. rustls' error hides inside an `io::Error`, whose
/// `source()` skips it, so each level is also opened with `get_ref`.
fn tls_failed(error: &lettre::transport::smtp::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    for _ in 0..16 {
        let Some(e) = source else { return false };
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// SMTP failures: 4xx replies, timeouts and broken connections are worth retrying;
/// 5xx replies, TLS failures (handshake, certificate) and a server without the
/// STARTTLS the profile requires are not (another try meets the same server).
fn smtp_error(profile: &str, tls: SmtpTls, error: &lettre::transport::smtp::Error) -> ActionError {
    let message = if error.is_client() {
        // lettre's own wording ("internal client error") hides what happened.
        let detail =
            std::error::Error::source(error).map_or_else(|| error.to_string(), ToString::to_string);
        if tls == SmtpTls::Starttls && detail.contains("STARTTLS") {
            format!(
                "SMTP profile {profile:?} requires STARTTLS (tls = \"starttls\"), which the server does not offer: nothing was sent"
            )
        } else {
            format!("SMTP profile {profile:?}: {detail}")
        }
    } else {
        format!("SMTP profile {profile:?}: {error}")
    };
    if error.is_permanent()
        || error.is_tls()
        || tls_failed(error)
        || error.is_client()
        || error.is_response()
    {
        ActionError::permanent(message)
    } else {
        ActionError::retryable(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::MessageField;

    #[test]
    fn the_body_is_the_text_then_the_fields_as_lines() {
        let m = NotificationMessage {
            title: "t".into(),
            text: "Done.".into(),
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
        };
        assert_eq!(text_body(&m), "Done.\n\nrows: 12\ntook: 3s\n");
        assert_eq!(profile_name(""), "default");
        assert_eq!(profile_name("ops"), "ops");
    }
}
