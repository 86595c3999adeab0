//! The PostgreSQL side of `PipelineStore`. A new version is the latest plus one, read and
//! written under a transaction-scoped advisory lock on the pipeline's id (there may be no
//! row to lock yet), so two updates of one pipeline queue instead of taking the same
//! number; the primary key still decides two creates. A breaker counts a failure in one
//! upsert, so concurrent executions never lose a count.

use almanac_proto::executor::v1::Pipeline;
use almanac_proto::time::ms_to_timestamp;
use async_trait::async_trait;

use super::{PostgresStore, classify};
use crate::error::ExecutorError;
use crate::store::pipelines::{Breaker, PipelineStore};
use crate::store::rows::{StoreRow, breaker_from_row, decode_pipeline, encode_json};

#[async_trait]
impl PipelineStore for PostgresStore {
    async fn put_pipeline(
        &self,
        pipeline: &Pipeline,
        create: bool,
        expected_latest: Option<i64>,
        now_ms: i64,
    ) -> Result<Pipeline, ExecutorError> {
        transaction!(self, |tx| {
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('executor.pipelines/' || $1, 0))",
            )
            .bind(&pipeline.id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
            let latest: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM pipelines WHERE id = $1")
                    .bind(&pipeline.id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(classify)?;
            let version = match (create, latest) {
                (true, Some(_)) => {
                    return Err(ExecutorError::AlreadyExists(format!(
                        "pipeline {:?} already exists",
                        pipeline.id
                    )));
                }
                (true, None) => 1,
                (false, None) => {
                    return Err(ExecutorError::NotFound(format!(
                        "pipeline {:?}",
                        pipeline.id
                    )));
                }
                (false, Some(latest)) => {
                    if let Some(expected) = expected_latest.filter(|&e| e != latest) {
                        return Err(ExecutorError::Aborted(format!(
                            "pipeline {:?} is at version {latest}, the update expected {expected}",
                            pipeline.id
                        )));
                    }
                    latest + 1
                }
            };
            let mut stored = pipeline.clone();
            stored.version = version;
            stored.create_time = Some(ms_to_timestamp(now_ms));
            let inserted = sqlx::query(
                "INSERT INTO pipelines (id, version, definition, created_ms) VALUES ($1, $2, $3, $4)",
            )
            .bind(&stored.id)
            .bind(version)
            .bind(encode_json(&stored)?)
            .bind(now_ms)
            .execute(&mut *tx)
            .await;
            match inserted.map_err(classify) {
                Err(ExecutorError::AlreadyExists(_)) => Err(ExecutorError::AlreadyExists(format!(
                    "pipeline {:?} already exists",
                    pipeline.id
                ))),
                other => other.map(|_| stored),
            }
        })
    }

    async fn get_pipeline(
        &self,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<Pipeline>, ExecutorError> {
        let row = sqlx::query(
            "SELECT definition FROM pipelines WHERE id = $1 AND ($2::bigint IS NULL OR version = $2) \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        row.map(|r| decode_pipeline(&r.text("definition")?))
            .transpose()
    }

    async fn list_pipelines(
        &self,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Pipeline>, ExecutorError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (id) definition FROM pipelines \
             WHERE $1::text IS NULL OR id > $1 \
             ORDER BY id, version DESC LIMIT $2",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| decode_pipeline(&r.text("definition")?))
            .collect()
    }

    async fn delete_pipeline(&self, id: &str) -> Result<bool, ExecutorError> {
        transaction!(self, |tx| {
            let deleted = sqlx::query("DELETE FROM pipelines WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
            sqlx::query("DELETE FROM breakers WHERE pipeline_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            Ok(deleted > 0)
        })
    }

    async fn breaker(&self, pipeline_id: &str, node_id: &str) -> Result<Breaker, ExecutorError> {
        let row = sqlx::query(
            "SELECT consecutive_failures, opened_ms FROM breakers WHERE pipeline_id = $1 AND node_id = $2",
        )
        .bind(pipeline_id)
        .bind(node_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        row.as_ref()
            .map_or(Ok(Breaker::default()), breaker_from_row)
    }

    async fn record_breaker(
        &self,
        pipeline_id: &str,
        node_id: &str,
        failed: bool,
        threshold: u32,
        now_ms: i64,
    ) -> Result<Breaker, ExecutorError> {
        // The same rule as SQLite's read-then-write, in one atomic upsert: a success
        // closes (0, NULL); a failure counts (saturating at u32::MAX) and (re)opens at
        // `now` once the count reaches a threshold above 0.
        let row = sqlx::query(
            "INSERT INTO breakers AS b (pipeline_id, node_id, consecutive_failures, opened_ms)
             VALUES ($1, $2, CASE WHEN $3 THEN 1 ELSE 0 END,
                     CASE WHEN $3 AND $4 > 0 AND 1 >= $4 THEN $5 END)
             ON CONFLICT (pipeline_id, node_id) DO UPDATE SET
               consecutive_failures = CASE WHEN $3
                   THEN LEAST(b.consecutive_failures + 1, 4294967295) ELSE 0 END,
               opened_ms = CASE
                   WHEN NOT $3 THEN NULL
                   WHEN $4 > 0 AND LEAST(b.consecutive_failures + 1, 4294967295) >= $4 THEN $5
                   ELSE b.opened_ms END
             RETURNING consecutive_failures, opened_ms",
        )
        .bind(pipeline_id)
        .bind(node_id)
        .bind(failed)
        .bind(i64::from(threshold))
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        breaker_from_row(&row)
    }
}
