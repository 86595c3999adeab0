//! The SQLite side of `PipelineStore`: a new version is the latest plus one, read and
//! written in one writer transaction, so two updates never take the same number.

use almanac_proto::executor::v1::Pipeline;
use almanac_proto::time::ms_to_timestamp;
use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{SqliteStore, query_all, query_opt};
use crate::error::ExecutorError;
use crate::store::pipelines::{Breaker, PipelineStore};
use crate::store::rows::{SqliteRow, StoreRow, breaker_from_row, decode_pipeline, encode_json};

/// A node's breaker as stored, or closed and clean.
fn fetch_breaker(
    conn: &Connection,
    pipeline_id: &str,
    node_id: &str,
) -> Result<Breaker, ExecutorError> {
    let found = query_opt(
        conn,
        "SELECT consecutive_failures, opened_ms FROM breakers WHERE pipeline_id = ?1 AND node_id = ?2",
        [pipeline_id, node_id],
        |row| breaker_from_row(&SqliteRow::new(row)),
    )?;
    Ok(found.unwrap_or_default())
}

#[async_trait]
impl PipelineStore for SqliteStore {
    async fn put_pipeline(
        &self,
        pipeline: &Pipeline,
        create: bool,
        expected_latest: Option<i64>,
        now_ms: i64,
    ) -> Result<Pipeline, ExecutorError> {
        self.write(|tx| {
            let latest: Option<i64> = tx
                .prepare_cached("SELECT MAX(version) FROM pipelines WHERE id = ?1")?
                .query_row([&pipeline.id], |row| row.get(0))?;
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
            tx.prepare_cached(
                "INSERT INTO pipelines (id, version, definition, created_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![stored.id, version, encode_json(&stored)?, now_ms])?;
            Ok(stored)
        })
        .await
    }

    async fn get_pipeline(
        &self,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<Pipeline>, ExecutorError> {
        self.read(|conn| {
            query_opt(
                conn,
                "SELECT definition FROM pipelines WHERE id = ?1 AND (?2 IS NULL OR version = ?2) \
                 ORDER BY version DESC LIMIT 1",
                params![id, version],
                |row| decode_pipeline(&SqliteRow::new(row).text("definition")?),
            )
        })
        .await
    }

    async fn list_pipelines(
        &self,
        after_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Pipeline>, ExecutorError> {
        self.read(|conn| {
            query_all(
                conn,
                "SELECT p.definition FROM pipelines p \
                 JOIN (SELECT id, MAX(version) AS version FROM pipelines \
                       WHERE ?1 IS NULL OR id > ?1 GROUP BY id) latest \
                   ON latest.id = p.id AND latest.version = p.version \
                 ORDER BY p.id LIMIT ?2",
                params![after_id, i64::from(limit)],
                |row| decode_pipeline(&SqliteRow::new(row).text("definition")?),
            )
        })
        .await
    }

    async fn delete_pipeline(&self, id: &str) -> Result<bool, ExecutorError> {
        self.write(|tx| {
            let deleted = tx
                .prepare_cached("DELETE FROM pipelines WHERE id = ?1")?
                .execute([id])?;
            tx.prepare_cached("DELETE FROM breakers WHERE pipeline_id = ?1")?
                .execute([id])?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn breaker(&self, pipeline_id: &str, node_id: &str) -> Result<Breaker, ExecutorError> {
        self.read(|conn| fetch_breaker(conn, pipeline_id, node_id))
            .await
    }

    async fn record_breaker(
        &self,
        pipeline_id: &str,
        node_id: &str,
        failed: bool,
        threshold: u32,
        now_ms: i64,
    ) -> Result<Breaker, ExecutorError> {
        self.write(|tx| {
            let before = fetch_breaker(tx, pipeline_id, node_id)?;
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
            tx.prepare_cached(
                "INSERT INTO breakers (pipeline_id, node_id, consecutive_failures, opened_ms) \
                 VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (pipeline_id, node_id) DO UPDATE SET \
                   consecutive_failures = excluded.consecutive_failures, opened_ms = excluded.opened_ms",
            )?
            .execute(params![
                pipeline_id,
                node_id,
                i64::from(after.consecutive_failures),
                after.opened_ms
            ])?;
            Ok(after)
        })
        .await
    }
}
