//! The action dispatch table (DESIGN §5.2): a registry maps each action kind's name to its
//! handler. A handler returns an output or an `ActionError` that says whether retrying can
//! help. Adding a kind is adding a handler; a kind without one is refused at `Execute`.

pub mod call_api;
pub mod egress;
pub mod http;
pub mod notify;
pub mod retry;
pub mod run_task;
pub mod templates;

use std::collections::HashMap;
use std::sync::Arc;

use almanac_proto::action::FieldViolation;
use almanac_proto::executor::v1::{Origin, action::Kind};

use self::egress::EgressPolicy;
use crate::config::ActionsConfig;
use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What a handler knows about the work it runs.
#[derive(Debug, Clone)]
pub struct ActionContext {
    /// The execution.
    pub execution_id: String,
    /// The execution's key: sent as `Idempotency-Key`, the same on every attempt.
    pub idempotency_key: String,
    /// The node being run ("action" for a single action).
    pub node_id: String,
    /// The node attempt, from 1 (resumes after a crash count too).
    pub attempt: u32,
    /// Which try of the action's retry policy this is, from 1. Unlike `attempt`, an
    /// attempt cut short by a crash does not use a try: resuming it keeps the number.
    pub try_number: u32,
    /// Where the work comes from (schedule id, run id, nominal time, run attempt).
    pub origin: Option<Origin>,
    /// When the execution must be over.
    pub deadline_ms: Option<i64>,
    /// Now, when the attempt starts (from the injected clock).
    pub now_ms: i64,
    /// Fires when this process gives the execution up without ending it: another replica
    /// adopted it. Work shared through the database (a queued task) is then left as it is
    /// for the adopter to re-attach to, not cancelled.
    pub handover: CancellationToken,
}

impl ActionContext {
    /// Milliseconds left before the deadline, if there is one (never negative).
    pub fn remaining_ms(&self) -> Option<i64> {
        self.deadline_ms.map(|d| (d - self.now_ms).max(0))
    }
}

/// Why an action failed, and whether trying again (with the same key) can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// What went wrong, for people.
    pub message: String,
    /// Whether a retry might succeed (a transient failure) or cannot (a permanent one).
    pub retryable: bool,
    /// How long the other side asked us to wait before trying again (`Retry-After`).
    pub retry_after_ms: Option<u64>,
}

impl ActionError {
    /// A failure that a retry may fix (connect errors, timeouts, 5xx, 408, 429).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            retry_after_ms: None,
        }
    }

    /// A transient failure whose other side named when to try again.
    pub fn retry_after(message: impl Into<String>, after_ms: Option<u64>) -> Self {
        Self {
            retry_after_ms: after_ms,
            ..Self::retryable(message)
        }
    }

    /// A failure that a retry cannot fix (bad configuration, 4xx).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            retry_after_ms: None,
        }
    }
}

/// Runs one kind of action.
#[async_trait]
pub trait ActionHandler: Send + Sync {
    /// The kind's name, as in `almanac_proto::action::kind_name`.
    fn kind(&self) -> &'static str;

    /// What this executor's configuration refuses in a well-formed action: a secret,
    /// profile or program it does not have, a destination its egress guard refuses.
    /// Paths are under `prefix` (e.g. `action.call_api`). Run at `Execute` and
    /// `ValidateAction`; an empty list means the action can run here.
    fn check(&self, action: &Kind, prefix: &str) -> Vec<FieldViolation> {
        let _ = (action, prefix);
        Vec::new()
    }

    /// Runs the action once. `cancel` fires when the work must stop (terminate, deadline,
    /// shutdown); the runner also stops polling the future then, so a handler only needs
    /// to watch `cancel` for clean-up that dropping the future cannot do.
    async fn run(
        &self,
        ctx: &ActionContext,
        action: &Kind,
        cancel: CancellationToken,
    ) -> Result<Value, ActionError>;
}

/// The dispatch table: action kind name → handler.
#[derive(Clone, Default)]
pub struct ActionRegistry {
    handlers: HashMap<&'static str, Arc<dyn ActionHandler>>,
}

impl std::fmt::Debug for ActionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<_> = self.handlers.keys().collect();
        kinds.sort();
        f.debug_struct("ActionRegistry")
            .field("kinds", &kinds)
            .finish()
    }
}

impl ActionRegistry {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The kinds that need only `env`. `server::run` adds `run_task` (see
    /// `run_task::RunTask`), which also needs the store.
    pub fn standard(env: &Arc<ActionEnv>) -> Self {
        let mut registry = Self::new();
        registry.register(Arc::new(call_api::CallApiHandler::new(env.clone())));
        registry.register(Arc::new(notify::NotifyHandler::new(env.clone())));
        registry
    }

    /// Adds (or replaces) the handler of its kind.
    pub fn register(&mut self, handler: Arc<dyn ActionHandler>) {
        self.handlers.insert(handler.kind(), handler);
    }

    /// The handler of a kind, if this executor has one.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn ActionHandler>> {
        self.handlers.get(kind).cloned()
    }
}

/// What handlers share: the configuration (secrets, SMTP profiles, allow-lists), the
/// egress guard, and the one HTTP client built with it.
#[derive(Debug)]
pub struct ActionEnv {
    /// Secrets, SMTP profiles, egress allow-list, allowed programs.
    pub config: ActionsConfig,
    /// The egress guard.
    pub egress: Arc<EgressPolicy>,
    /// The HTTP client every HTTP action uses (the guard is built into it).
    pub http: reqwest::Client,
}

impl ActionEnv {
    /// Builds the guard and the HTTP client from the configuration.
    pub fn new(config: ActionsConfig) -> Result<Arc<Self>, reqwest::Error> {
        let egress = Arc::new(EgressPolicy::new(config.egress.allow.clone()));
        let http = http::build_http_client(egress.clone())?;
        Ok(Arc::new(Self {
            config,
            egress,
            http,
        }))
    }

    /// A violation naming a secret this executor does not have, if `name` is one.
    pub fn missing_secret(&self, field: String, name: &str) -> Option<FieldViolation> {
        (!name.is_empty() && !self.config.secrets.contains(name)).then(|| {
            FieldViolation::new(field, format!("this executor has no secret named {name:?}"))
        })
    }
}
