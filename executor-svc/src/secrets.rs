//! Named secrets and SMTP profiles from the executor's configuration (DESIGN invariant 7):
//! actions refer to them by name; their values never leave this process through an API,
//! a stored row or a log line. `Secret`'s `Debug` and `Display` print a placeholder.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// A secret value. Read it with [`Secret::expose`] at the one place it is sent.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The prefix of environment variables that define secrets: `ALMANAC_SECRET_<NAME>`.
pub const SECRET_ENV_PREFIX: &str = "ALMANAC_SECRET_";

/// Named secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secrets(BTreeMap<String, Secret>);

impl Secrets {
    /// A secret by name.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    /// Whether a secret of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Adds (or replaces) a secret.
    pub fn insert(&mut self, name: impl Into<String>, value: Secret) {
        self.0.insert(name.into(), value);
    }

    /// The names, for messages (never the values).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Adds every `ALMANAC_SECRET_<NAME>=value` of an environment; `<NAME>` is kept as is.
    pub fn extend_from_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (key, value) in vars {
            if let Some(name) = key.strip_prefix(SECRET_ENV_PREFIX)
                && !name.is_empty()
            {
                self.insert(name, Secret::new(value));
            }
        }
    }
}

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text upgraded with STARTTLS (required), port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte, port 465 by default.
    Tls,
    /// No encryption: for local development only.
    None,
}

/// A named SMTP profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpProfile {
    /// The server's host name or address.
    pub host: String,
    /// The port; default by `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is secured.
    #[serde(default)]
    pub tls: SmtpTls,
    /// The user to authenticate as, if any.
    #[serde(default)]
    pub username: Option<String>,
    /// The name of the secret holding the password.
    #[serde(default)]
    pub password_secret: Option<String>,
    /// The sender, e.g. `Almanac <almanac@example.com>`.
    pub from: String,
}

impl SmtpProfile {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
        let mut all = Secrets::default();
        all.insert("token", s);
        assert!(!format!("{all:?}").contains("hunter2"));
    }

    #[test]
    fn environment_variables_with_the_prefix_become_secrets() {
        let mut all = Secrets::default();
        all.extend_from_env([
            (
                "ALMANAC_SECRET_slack_url".to_string(),
                "https://hooks".to_string(),
            ),
            ("ALMANAC_SECRET_".to_string(), "ignored".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        assert_eq!(all.names().collect::<Vec<_>>(), ["slack_url"]);
        assert_eq!(all.get("slack_url").unwrap().expose(), "https://hooks");
    }
}
