//! The executor's configuration: what `server::run` needs to know, and the fixed limits
//! that later issues will make configurable.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::secrets::{Secrets, SmtpProfile};
use std::time::Duration;

/// How long `server::run` waits, after the shutdown signal, for in-flight event writes.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 256;

/// `ListExecutions` page size when none is asked for.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// `ListExecutions` page sizes above this are clamped to it.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// How many events a watcher reads from the store at once.
pub const EVENT_BATCH: u32 = 256;

/// How often a watcher re-reads the store even without a signal, so that no stream ever
/// depends on the in-memory notification alone.
pub const WATCH_RECHECK: Duration = Duration::from_secs(1);

/// How often a watcher of an execution that this process does not run (another replica
/// does, or nobody yet) reads the store for new events.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// The execution lease when the configuration does not say.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// The shortest execution lease accepted.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// Parses a lease TTL flag: a humantime duration of at least `MIN_LEASE_TTL`.
pub fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if ttl < MIN_LEASE_TTL {
        return Err(format!(
            "the lease TTL must be at least {}",
            humantime::format_duration(MIN_LEASE_TTL)
        ));
    }
    Ok(ttl)
}

/// The executor's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite file path (created with its parent directory if missing), used when
    /// `database_url` is `None`.
    pub database_path: PathBuf,
    /// A PostgreSQL database (`postgres://…` or `postgresql://…`; its tables go in the
    /// schema `executor`) instead of the SQLite file; any other scheme is a start-up error.
    pub database_url: Option<String>,
    /// How many executions may run their actions at once
    /// (`DEFAULT_MAX_CONCURRENT_EXECUTIONS`).
    pub max_concurrent_executions: usize,
    /// What actions may use: secrets, SMTP profiles, networks, programs.
    pub actions: ActionsConfig,
    /// Finished executions are deleted this long after they finished. It must exceed the
    /// longest time the scheduler may stay down: a scheduler re-sends the attempts it had
    /// in flight, and a pruned key would run again.
    pub retention: Duration,
    /// This process's name among the executors sharing a database: it owns the leases of
    /// the executions it runs. A stable id (a StatefulSet pod's name) lets a restarted
    /// process take its executions back at once; the default is a fresh UUIDv7.
    pub replica_id: String,
    /// How long an execution's lease lasts without renewal (renewed every third of it;
    /// at least `MIN_LEASE_TTL`). After a crash, other replicas adopt the process's
    /// executions once it has passed.
    pub lease_ttl: Duration,
}

/// How many executions run their actions at once when the configuration does not say:
/// Temporal's workers default to 1 000 concurrent activities. An execution waiting for
/// a permit has not begun its node, so a burst larger than this begins its nodes in
/// commits of their own instead of with its executions (BENCHMARKS.md: 1 000 instead of
/// 256 cost ~0.9× the CPU per fire at a burst of 1 000). Each running `call_api` may
/// hold a socket: the executor raises its open-file limit at start
/// (`server::raise_open_files_limit`).
pub const DEFAULT_MAX_CONCURRENT_EXECUTIONS: usize = 1000;

/// How long finished executions are kept when the configuration does not say.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest retention accepted.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);

impl Config {
    /// A configuration with the SQLite database at `database_path` and the defaults
    /// otherwise (set `database_url` for PostgreSQL):
    /// no secrets, no SMTP profile, no private network, no program.
    pub fn new(database_path: impl Into<PathBuf>) -> Self {
        Self {
            database_path: database_path.into(),
            database_url: None,
            max_concurrent_executions: DEFAULT_MAX_CONCURRENT_EXECUTIONS,
            actions: ActionsConfig::default(),
            retention: DEFAULT_RETENTION,
            replica_id: uuid::Uuid::now_v7().to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// The part of the configuration actions see, as read from an optional TOML file
/// (`--config`) plus `ALMANAC_SECRET_<NAME>` environment variables:
///
/// ```toml
/// [secrets]
/// slack_url = "https://hooks.slack.com/services/…"
///
/// [smtp.default]
/// host = "smtp.example.com"
/// tls = "starttls"          # or "tls", or "none" (local development only)
/// username = "almanac"
/// password_secret = "smtp_password"
/// from = "Almanac <almanac@example.com>"
///
/// [egress]
/// allow = ["10.20.0.0/16"]  # networks the egress guard lets through
///
/// [commands]
/// allow = ["/usr/local/bin/backup"]  # programs run_task commands may start
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    /// Named secrets.
    pub secrets: Secrets,
    /// Named SMTP profiles.
    pub smtp: BTreeMap<String, SmtpProfile>,
    /// The egress guard's allow-list.
    pub egress: EgressConfig,
    /// The programs commands may run.
    pub commands: CommandsConfig,
}

/// Networks the egress guard lets through although they are private, loopback, ….
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// CIDR blocks, e.g. `10.0.0.0/8` or `::1/128`.
    pub allow: Vec<ipnet::IpNet>,
}

/// Programs `run_task` commands may start: each an absolute path, matched exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Absolute paths of allowed programs.
    pub allow: Vec<PathBuf>,
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid configuration in {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl ActionsConfig {
    /// The configuration of a process: the file, if one is given, plus every
    /// `ALMANAC_SECRET_<NAME>` environment variable as a secret.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.secrets.extend_from_env(std::env::vars());
        Ok(config)
    }

    /// Lets loopback through the egress guard (`almanac dev` does, and says so).
    pub fn allow_loopback(&mut self) {
        for net in ["127.0.0.0/8", "::1/128"] {
            let net: ipnet::IpNet = net.parse().expect("a valid network");
            if !self.egress.allow.contains(&net) {
                self.egress.allow.push(net);
            }
        }
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// Cross-references: every secret a profile names exists, programs are absolute.
    fn check(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        for (name, profile) in &self.smtp {
            if let Some(secret) = &profile.password_secret
                && !self.secrets.contains(secret)
            {
                return Err(invalid(format!(
                    "smtp.{name}.password_secret names {secret:?}, which is not a secret"
                )));
            }
        }
        for program in &self.commands.allow {
            if !program.is_absolute() {
                return Err(invalid(format!(
                    "commands.allow: {} is not an absolute path",
                    program.display()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_configuration_parses() {
        let text = r#"
            [secrets]
            smtp_password = "pw"
            [smtp.default]
            host = "127.0.0.1"
            port = 2525
            tls = "none"
            username = "u"
            password_secret = "smtp_password"
            from = "Almanac <almanac@example.com>"
            [egress]
            allow = ["127.0.0.0/8", "::1/128"]
            [commands]
            allow = ["/bin/echo"]
        "#;
        let c = ActionsConfig::from_toml(text, "test.toml").unwrap();
        assert_eq!(c.smtp["default"].port(), 2525);
        assert_eq!(c.egress.allow.len(), 2);
        assert_eq!(c.commands.allow, [PathBuf::from("/bin/echo")]);
        assert!(!format!("{c:?}").contains("\"pw\""), "secrets never print");
    }

    #[test]
    fn lease_ttls_below_a_second_are_refused() {
        assert_eq!(parse_lease_ttl("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_lease_ttl("1s"), Ok(MIN_LEASE_TTL));
        assert!(
            parse_lease_ttl("900ms")
                .unwrap_err()
                .contains("at least 1s")
        );
        assert!(parse_lease_ttl("soon").is_err());
        assert_ne!(Config::new("a").replica_id, Config::new("a").replica_id);
    }

    #[test]
    fn broken_references_and_unknown_keys_are_refused() {
        let bad_ref = r#"
            [smtp.default]
            host = "h"
            from = "a@b"
            password_secret = "missing"
        "#;
        assert!(
            ActionsConfig::from_toml(bad_ref, "t")
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        assert!(ActionsConfig::from_toml("[egress]\nallow = [\"not a net\"]", "t").is_err());
        assert!(ActionsConfig::from_toml("[commands]\nallow = [\"echo\"]", "t").is_err());
        assert!(ActionsConfig::from_toml("surprise = 1", "t").is_err());
    }
}
