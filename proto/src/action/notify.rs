//! What makes a `send_notification` action well formed.

use super::{Problems, check_headers, check_url, is_template};
use crate::executor::v1::{
    ChatWebhookChannel, SendNotificationAction, chat_webhook_channel::Target,
    send_notification_action::Channel,
};

/// The most recipients of one email.
pub const MAX_RECIPIENTS: usize = 100;

pub(crate) fn check_notification(n: &SendNotificationAction, out: &mut Problems) {
    match &n.channel {
        None => out.bad(
            "",
            "a channel is required: one of webhook, slack, discord, teams, email",
        ),
        Some(Channel::Webhook(w)) => {
            check_url(out, "webhook.url", &w.url);
            out.required("webhook.signing_secret", &w.signing_secret);
            check_headers(out, "webhook.headers", &w.headers);
        }
        Some(Channel::Slack(c)) => check_chat(out, "slack", c),
        Some(Channel::Discord(c)) => check_chat(out, "discord", c),
        Some(Channel::Teams(c)) => check_chat(out, "teams", c),
        Some(Channel::Email(e)) => {
            if e.to.is_empty() {
                out.bad("email.to", "at least one recipient is required");
            }
            if e.to.len() + e.cc.len() > MAX_RECIPIENTS {
                out.bad(
                    "email.to",
                    format!("at most {MAX_RECIPIENTS} recipients in all"),
                );
            }
            for (field, list) in [("email.to", &e.to), ("email.cc", &e.cc)] {
                for address in list {
                    if !is_template(address) && !looks_like_address(address) {
                        out.bad(field, format!("{address:?} is not an email address"));
                    }
                }
            }
        }
    }
    match &n.message {
        None => out.bad("message", "a message with a title or a text is required"),
        Some(m) if m.title.trim().is_empty() && m.text.trim().is_empty() => {
            out.bad("message", "a message needs a title or a text")
        }
        Some(m) => {
            for f in &m.fields {
                if f.name.is_empty() {
                    out.bad("message.fields", "every field needs a name");
                }
            }
        }
    }
    out.retry("retry", n.retry.as_ref());
}

fn check_chat(out: &mut Problems, channel: &str, c: &ChatWebhookChannel) {
    match &c.target {
        None => out.bad(channel, "one of url_secret, url is required"),
        Some(Target::UrlSecret(s)) => out.required(&format!("{channel}.url_secret"), s),
        Some(Target::Url(u)) => check_url(out, &format!("{channel}.url"), u),
    }
}

/// A light shape check (`local@domain`, optionally as `Name <local@domain>`); the
/// executor parses addresses fully when it sends.
fn looks_like_address(a: &str) -> bool {
    let inner = match (a.find('<'), a.rfind('>')) {
        (Some(l), Some(r)) if l < r => &a[l + 1..r],
        _ => a,
    };
    let mut parts = inner.split('@');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(local), Some(domain), None) if !local.is_empty() && !domain.is_empty() && !domain.contains(' ')
    )
}
