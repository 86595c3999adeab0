//! The PostgreSQL side of `LeaseStore`: each operation is one statement. Renewals and
//! releases name the leases by (id, epoch) through `unnest`, so a lease taken over since
//! is left alone; adoption claims with `FOR UPDATE SKIP LOCKED`, so replicas sweeping at
//! the same moment take different executions, and a renewal committed meanwhile is seen
//! when the row is locked (the claim re-checks its condition on the newest row).

use async_trait::async_trait;
use sqlx::Row;

use super::{PostgresStore, classify};
use crate::error::ExecutorError;
use crate::model::{CancelMode, ExecutionRecord};
use crate::store::leases::{AdoptScope, Adoption, LeaseStore, Renewed};
use crate::store::rows::{EXECUTION_COLUMNS, execution_from_row};

/// The ids and epochs of `leases`, as two arrays for `unnest`.
fn columns(leases: &[(String, u64)]) -> (Vec<&str>, Vec<i64>) {
    leases
        .iter()
        .map(|(id, epoch)| (id.as_str(), i64::try_from(*epoch).unwrap_or(i64::MAX)))
        .unzip()
}

fn cancel_mode(text: Option<String>) -> Result<Option<CancelMode>, ExecutorError> {
    text.map(|t| {
        CancelMode::parse(&t).ok_or_else(|| ExecutorError::Corrupt(format!("cancel mode {t:?}")))
    })
    .transpose()
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn renew_leases(
        &self,
        owner: &str,
        leases: &[(String, u64)],
        until_ms: i64,
    ) -> Result<Vec<Renewed>, ExecutorError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, epochs) = columns(leases);
        let rows = sqlx::query(
            "UPDATE executions AS e SET lease_until_ms = $3
             FROM unnest($1::text[], $2::bigint[]) AS l(id, epoch)
             WHERE e.id = l.id AND e.lease_epoch = l.epoch AND e.owner = $4
             RETURNING e.id, e.cancel_requested",
        )
        .bind(&ids)
        .bind(&epochs)
        .bind(until_ms)
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(Renewed {
                    execution_id: row.try_get("id").map_err(classify)?,
                    cancel_requested: cancel_mode(
                        row.try_get("cancel_requested").map_err(classify)?,
                    )?,
                })
            })
            .collect()
    }

    async fn adopt(&self, adoption: &Adoption) -> Result<Vec<ExecutionRecord>, ExecutorError> {
        // One text per scope, so that the expired case can use executions_by_lease.
        let scope = match adoption.scope {
            AdoptScope::Expired => "(lease_until_ms IS NULL OR lease_until_ms <= $2)",
            AdoptScope::ExpiredOrMine => {
                "(lease_until_ms IS NULL OR lease_until_ms <= $2 OR owner = $1)"
            }
            AdoptScope::All => "TRUE",
        };
        let sql = format!(
            "WITH claimed AS (
                 SELECT id AS claimed_id FROM executions
                 WHERE status IN ('PENDING', 'RUNNING') AND {scope}
                   AND ($4::text IS NULL OR id = $4) AND ($6::text IS NULL OR id > $6)
                 ORDER BY id LIMIT $5
                 FOR UPDATE SKIP LOCKED)
             UPDATE executions AS e
             SET owner = $1, lease_epoch = e.lease_epoch + 1, lease_until_ms = $3
             FROM claimed WHERE e.id = claimed.claimed_id
             RETURNING {EXECUTION_COLUMNS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&adoption.owner)
            .bind(adoption.now_ms)
            .bind(adoption.lease_until_ms)
            .bind(adoption.only.as_deref())
            .bind(i64::from(adoption.limit))
            .bind(adoption.after_id.as_deref())
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        let mut adopted = rows
            .iter()
            .map(execution_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        adopted.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(adopted)
    }

    async fn release_leases(
        &self,
        owner: &str,
        leases: &[(String, u64)],
    ) -> Result<(), ExecutorError> {
        if leases.is_empty() {
            return Ok(());
        }
        let (ids, epochs) = columns(leases);
        sqlx::query(
            "UPDATE executions AS e SET lease_until_ms = 0
             FROM unnest($1::text[], $2::bigint[]) AS l(id, epoch)
             WHERE e.id = l.id AND e.lease_epoch = l.epoch AND e.owner = $3",
        )
        .bind(&ids)
        .bind(&epochs)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn cancel_requests(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, CancelMode)>, ExecutorError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, cancel_requested FROM executions
             WHERE id = ANY($1) AND cancel_requested IS NOT NULL
               AND status IN ('PENDING', 'RUNNING')",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get("id").map_err(classify)?;
            if let Some(mode) = cancel_mode(row.try_get("cancel_requested").map_err(classify)?)? {
                found.push((id, mode));
            }
        }
        Ok(found)
    }

    async fn database_now_ms(&self) -> Result<Option<i64>, ExecutorError> {
        let now: i64 = sqlx::query_scalar(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(Some(now))
    }
}
