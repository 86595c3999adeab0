//! The pipeline use cases: create, read, list, update (a new version), delete and
//! validate definitions. Validation reports every problem at once (DESIGN §5.3); what
//! only this executor's configuration decides (secrets, programs) is asked of the action
//! handlers, as for a single action.

use almanac_proto::action::FieldViolation;
use almanac_proto::executor::v1::{Action, Pipeline, action, node::Kind};

use super::Engine;
use crate::error::ExecutorError;
use crate::pipeline::validate::validate;

/// `ListPipelines` page size when none is asked for, and the most it may be.
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1_000;
/// The longest pipeline id.
const MAX_ID_LEN: usize = 128;

/// The fields an update may take from the request.
pub const UPDATABLE: &[&str] = &[
    "display_name",
    "description",
    "nodes",
    "edges",
    "default_retry",
    "timeout",
    "max_parallelism",
];

fn check_id(id: &str, field: &str) -> Result<(), ExecutorError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ExecutorError::invalid(
            field,
            format!("{id:?} is not a pipeline id: 1-{MAX_ID_LEN} letters, digits, '-', '_' or '.'"),
        ))
    }
}

impl Engine {
    /// Every problem of a definition, structural first, then what this executor's
    /// configuration refuses (named secrets, allowed programs, …).
    pub fn pipeline_problems(
        &self,
        pipeline: &Pipeline,
    ) -> (Vec<FieldViolation>, Vec<FieldViolation>) {
        let invalid = validate(pipeline);
        let mut refused = Vec::new();
        if invalid.is_empty() {
            for node in &pipeline.nodes {
                let action = match &node.kind {
                    Some(Kind::Action(a)) => a.clone(),
                    Some(Kind::Task(t)) => Action {
                        kind: Some(action::Kind::RunTask(t.clone())),
                    },
                    _ => continue,
                };
                let Some(kind) = action.kind.as_ref() else {
                    continue;
                };
                let name = almanac_proto::action::kind_name(kind);
                let field = match &node.kind {
                    Some(Kind::Task(_)) => format!("pipeline.nodes[{}].task", node.id),
                    _ => format!("pipeline.nodes[{}].action.{name}", node.id),
                };
                match self.registry.get(name) {
                    None => refused.push(FieldViolation::new(
                        field,
                        format!("this executor has no handler for {name} actions"),
                    )),
                    Some(handler) => refused.extend(handler.check(kind, &field)),
                }
            }
        }
        (invalid, refused)
    }

    fn require_valid(&self, pipeline: &Pipeline) -> Result<(), ExecutorError> {
        let (invalid, refused) = self.pipeline_problems(pipeline);
        if !invalid.is_empty() {
            return Err(ExecutorError::InvalidArgument(invalid));
        }
        if !refused.is_empty() {
            return Err(ExecutorError::FailedPrecondition(refused));
        }
        Ok(())
    }

    /// Stores a new pipeline at version 1.
    pub async fn create_pipeline(
        &self,
        id: String,
        mut pipeline: Pipeline,
    ) -> Result<Pipeline, ExecutorError> {
        let id = if id.is_empty() {
            pipeline.id.clone()
        } else {
            id
        };
        check_id(&id, "pipeline_id")?;
        pipeline.id = id;
        self.require_valid(&pipeline)?;
        let stored = self
            .store
            .put_pipeline(&pipeline, true, None, self.clock.now_ms())
            .await?;
        tracing::info!(pipeline_id = %stored.id, version = stored.version, "pipeline created");
        Ok(stored)
    }

    /// One version (0: the latest).
    pub async fn get_pipeline(&self, id: &str, version: i64) -> Result<Pipeline, ExecutorError> {
        let wanted = (version > 0).then_some(version);
        self.store.get_pipeline(id, wanted).await?.ok_or_else(|| {
            ExecutorError::NotFound(match wanted {
                Some(v) => format!("pipeline {id:?} version {v}"),
                None => format!("pipeline {id:?}"),
            })
        })
    }

    /// A page of pipelines (latest versions) by id.
    pub async fn list_pipelines(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Pipeline>, String), ExecutorError> {
        let limit = match page_size {
            n if n <= 0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let bytes = hex::decode(page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ExecutorError::invalid("page_token", "malformed page token"))?;
            Some(bytes)
        };
        let mut page = self
            .store
            .list_pipelines(after.as_deref(), limit + 1)
            .await?;
        let next = if page.len() > limit as usize {
            page.truncate(limit as usize);
            page.last().map(|p| hex::encode(&p.id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok((page, next))
    }

    /// Stores a new version: the latest with the fields named by `mask` (all when
    /// empty) taken from `pipeline`.
    pub async fn update_pipeline(
        &self,
        pipeline: Pipeline,
        mask: &[String],
        expected_version: i64,
    ) -> Result<Pipeline, ExecutorError> {
        check_id(&pipeline.id, "pipeline.id")?;
        let unknown: Vec<FieldViolation> = mask
            .iter()
            .filter(|p| !UPDATABLE.contains(&p.as_str()))
            .map(|p| {
                FieldViolation::new(
                    "update_mask",
                    format!(
                        "{p:?} cannot be updated; updatable: {}",
                        UPDATABLE.join(", ")
                    ),
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(ExecutorError::InvalidArgument(unknown));
        }
        let mut next = self.get_pipeline(&pipeline.id, 0).await?;
        let all = mask.is_empty();
        let wants = |field: &str| all || mask.iter().any(|m| m == field);
        if wants("display_name") {
            next.display_name = pipeline.display_name.clone();
        }
        if wants("description") {
            next.description = pipeline.description.clone();
        }
        if wants("nodes") {
            next.nodes = pipeline.nodes.clone();
        }
        if wants("edges") {
            next.edges = pipeline.edges.clone();
        }
        if wants("default_retry") {
            next.default_retry = pipeline.default_retry;
        }
        if wants("timeout") {
            next.timeout = pipeline.timeout;
        }
        if wants("max_parallelism") {
            next.max_parallelism = pipeline.max_parallelism;
        }
        self.require_valid(&next)?;
        let expected = (expected_version > 0).then_some(expected_version);
        let stored = self
            .store
            .put_pipeline(&next, false, expected, self.clock.now_ms())
            .await?;
        tracing::info!(pipeline_id = %stored.id, version = stored.version, "pipeline updated");
        Ok(stored)
    }

    /// Deletes every version; executions already started keep their copy.
    pub async fn delete_pipeline(&self, id: &str) -> Result<(), ExecutorError> {
        if self.store.delete_pipeline(id).await? {
            tracing::info!(pipeline_id = %id, "pipeline deleted");
            Ok(())
        } else {
            Err(ExecutorError::NotFound(format!("pipeline {id:?}")))
        }
    }
}
