//! Which backend a configuration names: `database_url` (`postgres://…` or
//! `postgresql://…`) selects PostgreSQL, anything else there is a start-up error naming
//! its scheme; without one, SQLite at `database_path`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::{ExecutorStore, PostgresStore, SqliteStore};
use crate::config::Config;
use crate::error::ServerError;

/// The database an executor uses.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (which may hold a password: never printed).
    Postgres(String),
}

impl Backend {
    /// The backend `config` names.
    pub fn from_config(config: &Config) -> Result<Self, ServerError> {
        let Some(url) = config.database_url.as_deref() else {
            return Ok(Self::Sqlite(config.database_path.clone()));
        };
        let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
        if scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(ServerError::DatabaseUrl {
                scheme: scheme.chars().take(32).collect(),
            })
        }
    }

    /// The backend's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Opens (creating and migrating as needed) the store. (It takes the backend by
    /// value: a future borrowing it is not provably `Send` through the migrators.)
    pub async fn open(self) -> Result<Arc<dyn ExecutorStore>, ServerError> {
        Ok(match self {
            Self::Sqlite(path) => Arc::new(SqliteStore::open(&path).await?),
            Self::Postgres(url) => Arc::new(PostgresStore::open(&url).await?),
        })
    }
}

/// Where the data lives, fit for a log line: the file, or the URL without its password.
impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({self})", self.kind())
    }
}

/// `url` without its password (and without its query, which may carry one too); a URL
/// that does not parse shows only its scheme.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(None);
            }
            parsed.set_query(None);
            parsed.to_string()
        }
        Err(_) => {
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            format!("{scheme}://(unparsable URL)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: Option<&str>) -> Config {
        let mut config = Config::new("/tmp/x.db");
        config.database_url = url.map(str::to_owned);
        config
    }

    #[test]
    fn the_url_scheme_selects_the_backend() {
        assert_eq!(
            Backend::from_config(&config(None)).unwrap(),
            Backend::Sqlite("/tmp/x.db".into())
        );
        for url in ["postgres://u@h/db", "postgresql://u@h/db"] {
            assert_eq!(
                Backend::from_config(&config(Some(url))).unwrap(),
                Backend::Postgres(url.into())
            );
        }
        let err = Backend::from_config(&config(Some("mysql://u:pw@h/db"))).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"mysql\""), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }

    #[test]
    fn logs_never_show_the_password() {
        let backend = Backend::Postgres("postgres://almanac:s3cret@db:5432/prod?password=x".into());
        assert_eq!(backend.to_string(), "postgres://almanac@db:5432/prod");
        assert!(!format!("{backend:?}").contains("s3cret"));
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert!(!redact_url("postgres://u:s3cret@[bad/db").contains("s3cret"));
    }
}
