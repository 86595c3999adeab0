//! The flags that describe *when* (`--cron`, `--every`, `--at`) and *what* (`--url` and
//! friends), their value parsers, and their translation into `ScheduleSpec` and `Action`.
//! Only what cannot be represented is refused here; everything else goes to the server,
//! which validates it and names each bad field.

use std::collections::BTreeMap;
use std::time::Duration;

use almanac_proto::executor::v1::{Action, CallApiAction, action, call_api_action};
use almanac_proto::scheduler::v1::{CronSpec, IntervalSpec, OnceSpec, ScheduleSpec, schedule_spec};
use clap::Args;
use pbjson_types::Timestamp;

/// When a schedule fires: exactly one of `--cron`, `--every`, `--at` (the enclosing
/// command declares the group `when` that makes them exclusive).
#[derive(Debug, Clone, Default, Args)]
pub struct SpecArgs {
    /// A crontab expression: 5 fields, 6 with seconds first, or a macro like @hourly.
    #[arg(long, value_name = "EXPR", group = "when")]
    pub cron: Option<String>,
    /// The cron expression's IANA time zone, e.g. Europe/Paris (default UTC).
    // `requires` alone is not enough: clap lets a requirement slide when the required arg
    // conflicts with one present, and the `when` group makes --cron conflict with --every.
    #[arg(long, value_name = "ZONE", requires = "cron", conflicts_with_all = ["every", "at"])]
    pub tz: Option<String>,
    /// A fixed rate, e.g. 30s or 5m, anchored at the Unix epoch.
    #[arg(long, value_name = "DURATION", group = "when", value_parser = humantime::parse_duration)]
    pub every: Option<Duration>,
    /// Shift an interval's fires by this much, e.g. 10s.
    #[arg(long, value_name = "DURATION", requires = "every", conflicts_with_all = ["cron", "at"],
          value_parser = humantime::parse_duration)]
    pub offset: Option<Duration>,
    /// Fire once at this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339", group = "when", value_parser = parse_rfc3339)]
    pub at: Option<Timestamp>,
}

impl SpecArgs {
    /// The spec the flags describe, if any.
    pub fn to_spec(&self) -> Option<ScheduleSpec> {
        let kind = if let Some(expression) = &self.cron {
            schedule_spec::Kind::Cron(CronSpec {
                expression: expression.clone(),
                timezone: self.tz.clone().unwrap_or_default(),
            })
        } else if let Some(every) = self.every {
            schedule_spec::Kind::Interval(IntervalSpec {
                every: Some(every.into()),
                offset: self.offset.map(Into::into),
            })
        } else if let Some(at) = &self.at {
            schedule_spec::Kind::Once(OnceSpec { at: Some(*at) })
        } else {
            return None;
        };
        Some(ScheduleSpec { kind: Some(kind) })
    }
}

/// What each fire does: one HTTP call (`call_api`).
#[derive(Debug, Clone, Default, Args)]
pub struct ActionArgs {
    /// Call this absolute http:// or https:// URL.
    #[arg(long, required_unless_present = "file")]
    pub url: Option<String>,
    /// HTTP method (default GET).
    #[arg(long, requires = "url")]
    pub method: Option<String>,
    /// An extra request header, 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "url", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// A JSON request body, sent with Content-Type: application/json.
    #[arg(long, value_name = "JSON", requires = "url", value_parser = parse_json)]
    pub json_body: Option<pbjson_types::Value>,
    /// Time allowed for the whole HTTP request, e.g. 10s (default 30s).
    #[arg(long, value_name = "DURATION", requires = "url", value_parser = humantime::parse_duration)]
    pub http_timeout: Option<Duration>,
    /// An HTTP status that counts as success (repeatable; default any 2xx).
    #[arg(long = "accept", value_name = "STATUS", requires = "url")]
    pub accepted_statuses: Vec<u32>,
}

impl ActionArgs {
    /// The `call_api` action the flags describe, if a URL was given.
    pub fn to_action(&self) -> Option<Action> {
        let url = self.url.clone()?;
        let headers: BTreeMap<String, String> = self.headers.iter().cloned().collect();
        Some(Action {
            kind: Some(action::Kind::CallApi(CallApiAction {
                method: self.method.clone().unwrap_or_default(),
                url,
                headers: headers.into_iter().collect(),
                body: self.json_body.clone().map(call_api_action::Body::JsonBody),
                timeout: self.http_timeout.map(Into::into),
                accepted_statuses: self.accepted_statuses.clone(),
                ..Default::default()
            })),
        })
    }
}

/// An RFC 3339 instant, e.g. `2026-03-08T07:00:00Z`.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc).into())
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-03-08T07:00:00Z"))
}

/// An IANA time zone known to this build.
pub fn parse_tz(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("unknown IANA time zone {s:?}; e.g. Europe/Paris"))
}

/// `Name: value`; the name and value are trimmed.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected 'Name: value', got {s:?}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("header {s:?} has no name"));
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// Any JSON value, e.g. `{"hello":"world"}`.
pub fn parse_json(s: &str) -> Result<pbjson_types::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_at_the_first_colon_and_trim() {
        let check = |input: &str, expected: Option<(&str, &str)>| {
            let got = parse_header(input).ok();
            let expected = expected.map(|(n, v)| (n.to_owned(), v.to_owned()));
            assert_eq!(got, expected, "{input}");
        };
        check("X-Token: abc", Some(("X-Token", "abc")));
        check(
            "Accept:application/json",
            Some(("Accept", "application/json")),
        );
        check("X-Url: http://a:1/b", Some(("X-Url", "http://a:1/b")));
        check("no colon", None);
        check(": value", None);
    }

    #[test]
    fn instants_are_read_in_any_offset_and_kept_in_utc() {
        let ts = parse_rfc3339("2026-03-08T03:00:00-04:00").unwrap();
        assert_eq!(almanac_proto::time::timestamp_to_ms(&ts), 1_772_953_200_000);
        assert!(parse_rfc3339("2026-03-08").is_err());
    }

    #[test]
    fn flags_become_a_call_api_action_with_a_json_body() {
        let args = ActionArgs {
            url: Some("http://127.0.0.1:9/hook".into()),
            method: Some("POST".into()),
            headers: vec![("X-A".into(), "1".into())],
            json_body: Some(parse_json(r#"{"hello":"world"}"#).unwrap()),
            http_timeout: Some(Duration::from_millis(1500)),
            accepted_statuses: vec![202],
        };
        let json = serde_json::to_value(args.to_action().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"callApi": {
                "method": "POST", "url": "http://127.0.0.1:9/hook", "headers": {"X-A": "1"},
                "jsonBody": {"hello": "world"}, "timeout": "1.500s", "acceptedStatuses": [202]
            }})
        );
    }

    #[test]
    fn an_interval_spec_carries_its_offset() {
        let args = SpecArgs {
            every: Some(Duration::from_secs(60)),
            offset: Some(Duration::from_secs(5)),
            ..SpecArgs::default()
        };
        let json = serde_json::to_value(args.to_spec().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"interval": {"every": "60s", "offset": "5s"}})
        );
    }
}
