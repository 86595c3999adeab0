//! The executor's one error type (`ExecutorError`), used by the engine, the store and the
//! actions' callers, and `ServerError` for what stops `server::run`; both carry a
//! database driver's own error as a `DatabaseError`. Mapping to `tonic::Status` happens in
//! one place only: `grpc/status.rs`.

use almanac_proto::action::FieldViolation;

/// Everything that can go wrong while serving a request or running an execution.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The request is malformed; every problem is named with its field.
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The request is well formed but this executor's configuration refuses it (a
    /// secret, SMTP profile or allow-listed program it does not have).
    #[error("refused by this executor's configuration: {}", join(.0))]
    FailedPrecondition(Vec<FieldViolation>),
    /// Optimistic concurrency: the stored version is not the one the request expected.
    #[error("{0}")]
    Aborted(String),
    /// No such execution.
    #[error("{0} not found")]
    NotFound(String),
    /// The idempotency key is taken by a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// An event was offered to an execution that has already finished (an engine bug or a
    /// lost race that the caller resolves by reading the execution again).
    #[error("execution {0} has already finished")]
    AlreadyFinished(String),
    /// The execution is no longer held under the lease a runner wrote with: another
    /// replica adopted it (its lease had expired). The runner stops at once.
    #[error("execution {0} is run by another replica now (its lease was lost)")]
    LeaseLost(String),
    /// A worker's call does not fit its task's state: the lease expired or was
    /// superseded, or the task has ended (the message says which).
    #[error("{0}")]
    TaskPrecondition(String),
    /// The executor is shutting down and takes no new work.
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// The database cannot be reached or is busy past its timeout.
    #[error("the database is unavailable: {0}")]
    StoreUnavailable(#[source] DatabaseError),
    /// Any other database error.
    #[error("database error: {0}")]
    Store(#[source] DatabaseError),
    /// A stored row could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// A database error as its backend's driver reported it, kept whole for the logs (the
/// store has already classified it into an `ExecutorError` variant).
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// From sqlx: the PostgreSQL backend, and both backends' migrations.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// From rusqlite: the SQLite backend.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The store was closed (the executor is stopping) and takes no more statements.
    #[error("the store is closed")]
    Closed,
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ExecutorError {
    /// One violation of one field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

/// What stops `server::run` from starting or finishing cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration file is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database file or its directory could not be created.
    #[error("cannot prepare the database path {path}: {source}")]
    DatabasePath {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--database-url` names a backend this executor does not have.
    #[error(
        "unsupported database URL scheme {scheme:?}: use postgres:// or postgresql://, or --database for SQLite"
    )]
    DatabaseUrl {
        /// The scheme of the URL (or the URL's start when it has none).
        scheme: String,
    },
    /// The database could not be opened.
    #[error("cannot open the database: {0}")]
    Open(#[source] DatabaseError),
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store failed while resuming executions.
    #[error("cannot resume executions: {0}")]
    Resume(#[source] ExecutorError),
    /// The HTTP client for actions could not be built.
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The reflection service could not read the descriptor sets.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}
