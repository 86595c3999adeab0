//! The SQLite side of `PipelineStore`: a new version is the latest plus one, read and
//! written in one writer transaction, so two updates never take the same number.

use almanac_proto::executor::v1::Pipeline;
use almanac_proto::time::ms_to_timestamp;
use async_trait::async_trait;

use super::{SqliteStore, classify};
use crate::error::ExecutorError;
use crate::store::pipelines::{Breaker, PipelineStore};
use crate::store::rows::{StoreRow, breaker_from_row, decode_pipeline, encode_json};

#[async_trait]
impl PipelineStore for SqliteStore {
    async fn put_pipeline(
        &self,
        pipeline: &Pipeline,
        create: bool,
        expected_latest: Option<i64>,
        now_ms: i64,
    ) -> Result<Pipeline, ExecutorError> {
        let mut tx = self.begin_write().await?;
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM pipelines WHERE id = ?1")
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
        sqlx::query(
            "INSERT INTO pipelines (id, version, definition, created_ms) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(&stored.id)
        .bind(version)
        .bind(encode_json(&stored)?)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(stored)
    }

    async fn get_pipeline(
        &self,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<Pipeline>, ExecutorError> {
        let row = sqlx::query(
            "SELECT definition FROM pipelines WHERE id = ?1 AND (?2 IS NULL OR version = ?2) \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(id)
        .bind(version)
        .fetch_optional(&self.readers)
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
            "SELECT p.definition FROM pipelines p \
             JOIN (SELECT id, MAX(version) AS version FROM pipelines \
                   WHERE ?1 IS NULL OR id > ?1 GROUP BY id) latest \
               ON latest.id = p.id AND latest.version = p.version \
             ORDER BY p.id LIMIT ?2",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| decode_pipeline(&r.text("definition")?))
            .collect()
    }

    async fn delete_pipeline(&self, id: &str) -> Result<bool, ExecutorError> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM pipelines WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
        sqlx::query("DELETE FROM breakers WHERE pipeline_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(deleted > 0)
    }

    async fn breaker(&self, pipeline_id: &str, node_id: &str) -> Result<Breaker, ExecutorError> {
        let row = sqlx::query(
            "SELECT consecutive_failures, opened_ms FROM breakers WHERE pipeline_id = ?1 AND node_id = ?2",
        )
        .bind(pipeline_id)
        .bind(node_id)
        .fetch_optional(&self.readers)
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
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT consecutive_failures, opened_ms FROM breakers WHERE pipeline_id = ?1 AND node_id = ?2",
        )
        .bind(pipeline_id)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(classify)?;
        let before = row
            .as_ref()
            .map_or(Ok(Breaker::default()), breaker_from_row)?;
        let after = if failed {
            let failures = before.consecutive_failures.saturating_add(1);
            Breaker {
                consecutive_failures: failures,
                opened_ms: if threshold > 0 && failures >= threshold {
                    Some(now_ms)
                } else {
                    before.opened_ms
                },
            }
        } else {
            Breaker::default()
        };
        sqlx::query(
            "INSERT INTO breakers (pipeline_id, node_id, consecutive_failures, opened_ms) \
             VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (pipeline_id, node_id) DO UPDATE SET \
               consecutive_failures = excluded.consecutive_failures, opened_ms = excluded.opened_ms",
        )
        .bind(pipeline_id)
        .bind(node_id)
        .bind(i64::from(after.consecutive_failures))
        .bind(after.opened_ms)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(after)
    }
}
