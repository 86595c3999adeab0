//! The chat channels: Slack and Discord incoming webhooks, and Microsoft Teams
//! Workflows webhooks. Each renders the message (title, text, fields) in its service's
//! documented shape, cut to the service's documented limits (an ellipsis, never a
//! refusal), and POSTs it to a URL from the action or, better, from a named secret.
//!
//! Text from templates can mention no one: Slack `mrkdwn` escapes `&`, `<`, `>` (so no
//! `<!channel>`), and Discord's `allowed_mentions` is empty (so no `@everyone`).

use almanac_proto::executor::v1::{
    ChatWebhookChannel, NotificationMessage, chat_webhook_channel::Target,
};
use serde_json::{Value, json};

use super::http::{self, UrlSource};
use super::text::{FieldLimits, fit_fields, truncate_bytes, truncate_chars};
use crate::actions::{ActionContext, ActionEnv, ActionError};

/// A chat service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Service {
    Slack,
    Discord,
    Teams,
}

impl Service {
    /// The channel's name in the action and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Teams => "teams",
        }
    }

    /// The body this service expects for `message`.
    pub fn body(self, message: &NotificationMessage) -> Value {
        match self {
            Self::Slack => slack(message),
            Self::Discord => discord(message),
            Self::Teams => teams(message),
        }
    }
}

/// Where a chat channel posts.
pub(super) fn url_source(channel: &ChatWebhookChannel) -> Option<UrlSource<'_>> {
    match channel.target.as_ref()? {
        Target::UrlSecret(name) => Some(UrlSource::Secret(name)),
        Target::Url(url) => Some(UrlSource::InlineCredential(url)),
    }
}

/// Posts the message to the service.
pub(super) async fn send(
    env: &ActionEnv,
    client: &reqwest::Client,
    ctx: &ActionContext,
    service: Service,
    channel: &ChatWebhookChannel,
    message: &NotificationMessage,
) -> Result<Value, ActionError> {
    let source = url_source(channel).ok_or_else(|| {
        ActionError::permanent(format!(
            "the {} channel needs one of url_secret, url",
            service.name()
        ))
    })?;
    let what = format!("{} webhook", service.name());
    let endpoint = http::endpoint(env, &what, source)?;
    let body = serde_json::to_vec(&service.body(message))
        .map_err(|e| ActionError::permanent(format!("the {what} body cannot be encoded: {e}")))?;
    let status = http::post_json(client, ctx, &endpoint, http::almanac_headers(ctx)?, body).await?;
    tracing::debug!(execution_id = %ctx.execution_id, channel = service.name(),
        status = status.as_u16(), "chat notification sent");
    Ok(json!({"channel": service.name(), "status": status.as_u16()}))
}

// Slack: an incoming webhook takes `text` (the notification fallback) and Block Kit
// `blocks` (docs.slack.dev/messaging/sending-messages-using-incoming-webhooks). Limits
// from docs.slack.dev/reference/block-kit: a message has at most 50 blocks; a header's
// plain_text at most 150 characters; a section's text at most 3000; a section at most
// 10 fields of at most 2000 characters each.
const SLACK_HEADER: usize = 150;
const SLACK_TEXT: usize = 3000;
const SLACK_FIELDS_PER_SECTION: usize = 10;
const SLACK_FIELD_NAME: usize = 200;
const SLACK_FIELD_VALUE: usize = 1790;

fn slack(message: &NotificationMessage) -> Value {
    let mut blocks = Vec::new();
    if !message.title.trim().is_empty() {
        blocks.push(json!({
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": truncate_chars(&message.title, SLACK_HEADER),
                "emoji": true,
            },
        }));
    }
    if !message.text.trim().is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": slack_escaped(&message.text, SLACK_TEXT)},
        }));
    }
    let limits = FieldLimits {
        // 48 sections of 10 would fit in 50 blocks; a notification needs far fewer.
        max_count: 50,
        max_name: SLACK_FIELD_NAME,
        max_value: SLACK_FIELD_VALUE,
        budget: 12_000,
        bytes: false,
    };
    let fields: Vec<Value> = fit_fields(&message.fields, &limits)
        .into_iter()
        .map(|(name, value)| {
            json!({
                "type": "mrkdwn",
                "text": format!(
                    "*{}*\n{}",
                    slack_escaped(&name, SLACK_FIELD_NAME),
                    slack_escaped(&value, SLACK_FIELD_VALUE)
                ),
            })
        })
        .collect();
    for chunk in fields.chunks(SLACK_FIELDS_PER_SECTION) {
        blocks.push(json!({"type": "section", "fields": chunk}));
    }
    let fallback = match (message.title.trim(), message.text.trim()) {
        ("", text) => text.to_owned(),
        (title, "") => title.to_owned(),
        (title, text) => format!("{title}: {text}"),
    };
    json!({"text": slack_escaped(&fallback, SLACK_TEXT), "blocks": blocks})
}

/// Slack's `mrkdwn` control characters escaped (docs.slack.dev "Formatting text":
/// `&`, `<`, `>`), within `max` characters after escaping.
fn slack_escaped(text: &str, max: usize) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut room = max;
    // Each round shrinks the room by the overflow, so this ends; cutting before
    // escaping never splits an entity.
    loop {
        let escaped = escape(&truncate_chars(text, room));
        let len = escaped.chars().count();
        if len <= max || room == 0 {
            return escaped;
        }
        room = room.saturating_sub(len - max);
    }
}

// Discord: Execute Webhook (discord.com/developers/docs/resources/webhook#execute-webhook)
// with one embed; embed limits from the Message resource's "Embed Limits": title 256,
// description 4096, at most 25 fields, field name 256, field value 1024, and 6000
// characters in all. Field names and values must not be empty.
const DISCORD_TITLE: usize = 256;
const DISCORD_DESCRIPTION: usize = 4096;
const DISCORD_TOTAL: usize = 6000;

fn discord(message: &NotificationMessage) -> Value {
    let mut embed = serde_json::Map::new();
    let title = truncate_chars(message.title.trim(), DISCORD_TITLE);
    let description = truncate_chars(&message.text, DISCORD_DESCRIPTION);
    let used = title.chars().count() + description.chars().count();
    if !title.is_empty() {
        embed.insert("title".into(), json!(title));
    }
    if !description.trim().is_empty() {
        embed.insert("description".into(), json!(description));
    }
    let limits = FieldLimits {
        max_count: 25,
        max_name: 256,
        max_value: 1024,
        budget: DISCORD_TOTAL - used,
        bytes: false,
    };
    let fields: Vec<Value> = fit_fields(&message.fields, &limits)
        .into_iter()
        .map(|(name, value)| {
            let value = if value.trim().is_empty() {
                "-".to_owned()
            } else {
                value
            };
            json!({"name": name, "value": value, "inline": true})
        })
        .collect();
    if !fields.is_empty() {
        embed.insert("fields".into(), Value::Array(fields));
    }
    json!({
        "embeds": [Value::Object(embed)],
        "allowed_mentions": {"parse": []},
    })
}

// Teams: a Workflows ("Post to a channel when a webhook request is received") webhook
// takes a message with one Adaptive Card attachment (learn.microsoft.com, "Create
// incoming webhooks with Workflows for Microsoft Teams" and "Send Adaptive Cards using
// an Incoming Webhook"); Teams messages are at most 28 KB, so text and facts get byte
// budgets that keep the whole body under it.
const TEAMS_TITLE_BYTES: usize = 1_000;
const TEAMS_TEXT_BYTES: usize = 16_000;
const TEAMS_FACTS_BYTES: usize = 8_000;

fn teams(message: &NotificationMessage) -> Value {
    let mut body = Vec::new();
    if !message.title.trim().is_empty() {
        body.push(json!({
            "type": "TextBlock",
            "text": truncate_bytes(&message.title, TEAMS_TITLE_BYTES),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": true,
        }));
    }
    if !message.text.trim().is_empty() {
        body.push(json!({
            "type": "TextBlock",
            "text": truncate_bytes(&message.text, TEAMS_TEXT_BYTES),
            "wrap": true,
        }));
    }
    let limits = FieldLimits {
        max_count: 50,
        max_name: 256,
        max_value: 1_000,
        budget: TEAMS_FACTS_BYTES,
        bytes: true,
    };
    let facts: Vec<Value> = fit_fields(&message.fields, &limits)
        .into_iter()
        .map(|(title, value)| json!({"title": title, "value": value}))
        .collect();
    if !facts.is_empty() {
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
            },
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::MessageField;

    fn message(title: &str, text: &str, fields: usize, value: &str) -> NotificationMessage {
        NotificationMessage {
            title: title.into(),
            text: text.into(),
            fields: (0..fields)
                .map(|i| MessageField {
                    name: format!("field {i}"),
                    value: value.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn slack_limits_are_respected_and_mrkdwn_is_escaped() {
        let m = message(
            &"T".repeat(400),
            &"<!channel> & ".repeat(1000),
            23,
            &"v".repeat(5000),
        );
        let body = slack(&m);
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        let header = blocks[0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), SLACK_HEADER);
        assert!(header.ends_with('…'));
        let text = blocks[1]["text"]["text"].as_str().unwrap();
        assert!(text.chars().count() <= SLACK_TEXT);
        assert!(text.starts_with("&lt;!channel&gt; &amp; ") && !text.contains('<'));
        // Long values spend the fields' budget: the rest is summarised.
        let last = blocks.last().unwrap()["fields"].as_array().unwrap();
        let last = last.last().unwrap()["text"].as_str().unwrap();
        assert!(last.contains("more fields"), "{last}");
        for b in &blocks[2..] {
            for f in b["fields"].as_array().unwrap() {
                assert!(f["text"].as_str().unwrap().chars().count() <= 2000);
            }
        }
        assert!(blocks.len() <= 50);
        assert!(body["text"].as_str().unwrap().chars().count() <= SLACK_TEXT);
    }

    #[test]
    fn slack_fields_go_ten_to_a_section() {
        let body = slack(&message("", "text", 23, "v"));
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "section");
        let sections: Vec<usize> = blocks[1..]
            .iter()
            .map(|b| b["fields"].as_array().unwrap().len())
            .collect();
        assert_eq!(sections, [10, 10, 3]);
        assert_eq!(blocks[1]["fields"][0]["text"], "*field 0*\nv");
        assert_eq!(body["text"], "text");
    }

    #[test]
    fn discord_limits_are_respected_and_mentions_disabled() {
        let m = message(&"T".repeat(300), &"d".repeat(5000), 40, &"v".repeat(2000));
        let body = discord(&m);
        let embed = &body["embeds"][0];
        assert_eq!(embed["title"].as_str().unwrap().chars().count(), 256);
        assert_eq!(embed["description"].as_str().unwrap().chars().count(), 4096);
        let fields = embed["fields"].as_array().unwrap();
        assert!(fields.len() <= 25);
        let mut total = 256 + 4096;
        for f in fields {
            let (n, v) = (f["name"].as_str().unwrap(), f["value"].as_str().unwrap());
            assert!(n.chars().count() <= 256 && v.chars().count() <= 1024);
            assert!(!v.is_empty());
            total += n.chars().count() + v.chars().count();
        }
        assert!(total <= DISCORD_TOTAL, "{total}");
        assert_eq!(body["allowed_mentions"], json!({"parse": []}));
    }

    #[test]
    fn teams_card_has_the_documented_shape_and_stays_under_28_kb() {
        let m = message("Title", &"é".repeat(30_000), 200, &"x".repeat(3000));
        let body = teams(&m);
        assert_eq!(body["type"], "message");
        let attachment = &body["attachments"][0];
        assert_eq!(
            attachment["contentType"],
            "application/vnd.microsoft.card.adaptive"
        );
        assert_eq!(attachment["contentUrl"], Value::Null);
        let card = &attachment["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["version"], "1.4");
        assert_eq!(card["body"][0]["weight"], "Bolder");
        assert_eq!(card["body"][1]["wrap"], true);
        assert_eq!(card["body"][2]["type"], "FactSet");
        assert!(serde_json::to_vec(&body).unwrap().len() < 28 * 1024);
    }
}
