//! The `send_notification` action (DESIGN §5.2): one message (title, text, fields) sent
//! through one channel — a Standard Webhooks signed `webhook`, `slack`, `discord` or
//! `teams` webhooks, or `email` over SMTP — with the egress guard of every HTTP action
//! (no redirect followed) and the retry policy of the runner. Secrets (signing keys,
//! webhook URLs, SMTP passwords) are read at the moment they are used and never logged
//! nor returned: an error about a URL from a secret says "the slack webhook from secret X".

mod chat;
mod email;
mod http;
mod text;
mod webhook;

use std::sync::{Arc, Mutex};

use almanac_proto::action::{FieldViolation, is_template};
use almanac_proto::executor::v1::{
    ChatWebhookChannel, EmailChannel, SendNotificationAction, action::Kind,
    send_notification_action::Channel,
};
use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use self::chat::Service;
use self::http::UrlSource;
use super::http::{RedirectRules, build_guarded_client};
use super::{ActionContext, ActionEnv, ActionError, ActionHandler};

/// Runs `send_notification` actions.
#[derive(Debug)]
pub struct NotifyHandler {
    env: Arc<ActionEnv>,
    /// The HTTP client of notifications, built on first use: the executor's egress guard
    /// (resolver and redirect policy) with no redirect followed. Standard Webhooks
    /// counts a 3xx as a failure, and a followed 302 would turn the POST into a GET that
    /// "succeeds" without the message.
    client: Mutex<Option<reqwest::Client>>,
}

impl NotifyHandler {
    /// A handler using the environment's secrets, SMTP profiles and egress guard.
    pub fn new(env: Arc<ActionEnv>) -> Self {
        Self {
            env,
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<reqwest::Client, ActionError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let rules = RedirectRules {
            max_redirects: 0,
            same_origin_only: true,
        };
        let client = build_guarded_client(Arc::clone(&self.env.egress), rules).map_err(|e| {
            tracing::error!(error = %e, "cannot build the notification HTTP client");
            ActionError::permanent("the executor cannot build its HTTP client; see its log")
        })?;
        *slot = Some(client.clone());
        Ok(client)
    }
}

#[async_trait]
impl ActionHandler for NotifyHandler {
    fn kind(&self) -> &'static str {
        "send_notification"
    }

    fn check(&self, action: &Kind, prefix: &str) -> Vec<FieldViolation> {
        match action {
            Kind::SendNotification(n) => check(&self.env, n, prefix),
            _ => Vec::new(),
        }
    }

    async fn run(
        &self,
        ctx: &ActionContext,
        action: &Kind,
        _cancel: CancellationToken,
    ) -> Result<Value, ActionError> {
        let Kind::SendNotification(n) = action else {
            return Err(ActionError::permanent(
                "send_notification handler given another action kind",
            ));
        };
        let message = n.message.clone().unwrap_or_default();
        let env = self.env.as_ref();
        let (service, channel) = match &n.channel {
            None => {
                return Err(ActionError::permanent(
                    "a channel is required: one of webhook, slack, discord, teams, email",
                ));
            }
            Some(Channel::Email(e)) => return email::send(env, ctx, e, &message).await,
            Some(Channel::Webhook(w)) => {
                return webhook::send(env, &self.client()?, ctx, w, &message).await;
            }
            Some(Channel::Slack(c)) => (Service::Slack, c),
            Some(Channel::Discord(c)) => (Service::Discord, c),
            Some(Channel::Teams(c)) => (Service::Teams, c),
        };
        chat::send(env, &self.client()?, ctx, service, channel, &message).await
    }
}

/// What this executor's configuration refuses in a well-formed notification: a secret
/// it does not have or that is not usable (a signing key not in `whsec_` form, a URL
/// secret that is no http(s) URL), an SMTP profile it does not have, a destination whose
/// IP literal the egress guard refuses. Templated URLs are checked when they are sent.
fn check(env: &ActionEnv, n: &SendNotificationAction, prefix: &str) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    match &n.channel {
        None => {}
        Some(Channel::Webhook(w)) => {
            let field = format!("{prefix}.webhook.signing_secret");
            if let Some(missing) = env.missing_secret(field.clone(), &w.signing_secret) {
                out.push(missing);
            } else if let Some(secret) = env.config.secrets.get(&w.signing_secret)
                && let Err(problem) = webhook::signing_key(secret.expose())
            {
                out.push(FieldViolation::new(
                    field,
                    webhook::key_problem(&w.signing_secret, problem),
                ));
            }
            check_url(
                env,
                &mut out,
                &format!("{prefix}.webhook.url"),
                "webhook",
                UrlSource::Inline(&w.url),
            );
        }
        Some(Channel::Slack(c)) => check_chat(env, &mut out, prefix, Service::Slack, c),
        Some(Channel::Discord(c)) => check_chat(env, &mut out, prefix, Service::Discord, c),
        Some(Channel::Teams(c)) => check_chat(env, &mut out, prefix, Service::Teams, c),
        Some(Channel::Email(e)) => check_email(env, &mut out, e, prefix),
    }
    out
}

fn check_chat(
    env: &ActionEnv,
    out: &mut Vec<FieldViolation>,
    prefix: &str,
    service: Service,
    channel: &ChatWebhookChannel,
) {
    let name = service.name();
    let what = format!("{name} webhook");
    match chat::url_source(channel) {
        None => {}
        Some(UrlSource::Secret(secret)) => {
            let field = format!("{prefix}.{name}.url_secret");
            match env.missing_secret(field.clone(), secret) {
                Some(missing) => out.push(missing),
                None => check_url(env, out, &field, &what, UrlSource::Secret(secret)),
            }
        }
        Some(source) => check_url(env, out, &format!("{prefix}.{name}.url"), &what, source),
    }
}

fn check_url(
    env: &ActionEnv,
    out: &mut Vec<FieldViolation>,
    field: &str,
    what: &str,
    source: UrlSource<'_>,
) {
    if let UrlSource::Inline(url) | UrlSource::InlineCredential(url) = source
        && (is_template(url) || http::parse_http_url(url).is_err())
    {
        // Templates are checked once rendered; malformed URLs are the structural
        // validation's to report.
        return;
    }
    if let Err(error) = http::endpoint(env, what, source) {
        out.push(FieldViolation::new(field, error.message));
    }
}

fn check_email(env: &ActionEnv, out: &mut Vec<FieldViolation>, e: &EmailChannel, prefix: &str) {
    let field = format!("{prefix}.email.profile");
    let name = email::profile_name(&e.profile);
    let Some(profile) = env.config.smtp.get(name) else {
        out.push(FieldViolation::new(
            field,
            format!("this executor has no SMTP profile named {name:?}"),
        ));
        return;
    };
    match (&profile.username, &profile.password_secret) {
        (Some(_), Some(secret)) if !env.config.secrets.contains(secret) => {
            out.push(FieldViolation::new(
                &field,
                format!(
                    "SMTP profile {name:?} names password secret {secret:?}, which this executor does not have"
                ),
            ))
        }
        (Some(_), None) | (None, Some(_)) => out.push(FieldViolation::new(
            &field,
            format!("SMTP profile {name:?} needs both username and password_secret, or neither"),
        )),
        _ => {}
    }
    let host = profile.host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && let Err(refusal) = env.egress.check_ip(ip)
    {
        out.push(FieldViolation::new(
            field,
            format!("the SMTP server of profile {name:?}: {refusal}"),
        ));
    }
}
