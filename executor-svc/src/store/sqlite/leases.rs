//! The SQLite side of `LeaseStore`. One process serves a SQLite file, so leases only keep
//! the contract both backends share (the conformance suite checks it): each operation is
//! one `BEGIN IMMEDIATE` transaction on the single writer, renewals and releases name
//! their leases by (id, epoch), and the clock is the process's own.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, query_all};
use crate::error::ExecutorError;
use crate::model::{CancelMode, ExecutionRecord};
use crate::store::leases::{AdoptScope, Adoption, LeaseStore, Renewed};
use crate::store::rows::{EXECUTION_COLUMNS, SqliteRow, execution_from_row};

fn epoch(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

fn cancel_mode(text: Option<String>) -> Result<Option<CancelMode>, ExecutorError> {
    text.map(|t| {
        CancelMode::parse(&t).ok_or_else(|| ExecutorError::Corrupt(format!("cancel mode {t:?}")))
    })
    .transpose()
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn renew_leases(
        &self,
        owner: &str,
        leases: &[(String, u64)],
        until_ms: i64,
    ) -> Result<Vec<Renewed>, ExecutorError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let mut statement = tx.prepare_cached(
                "UPDATE executions SET lease_until_ms = ?3
                 WHERE id = ?1 AND lease_epoch = ?2 AND owner = ?4
                 RETURNING id, cancel_requested",
            )?;
            let mut renewed = Vec::with_capacity(leases.len());
            for (id, lease_epoch) in leases {
                let row = statement
                    .query_row(params![id, epoch(*lease_epoch), until_ms, owner], |row| {
                        Ok((row.get::<_, String>("id")?, row.get("cancel_requested")?))
                    })
                    .optional()?;
                if let Some((execution_id, cancel)) = row {
                    renewed.push(Renewed {
                        execution_id,
                        cancel_requested: cancel_mode(cancel)?,
                    });
                }
            }
            Ok(renewed)
        })
        .await
    }

    async fn adopt(&self, adoption: &Adoption) -> Result<Vec<ExecutionRecord>, ExecutorError> {
        let scope = match adoption.scope {
            AdoptScope::Expired => "(lease_until_ms IS NULL OR lease_until_ms <= ?2)",
            AdoptScope::ExpiredOrMine => {
                "(lease_until_ms IS NULL OR lease_until_ms <= ?2 OR owner = ?1)"
            }
            AdoptScope::All => "1",
        };
        let sql = format!(
            "UPDATE executions
             SET owner = ?1, lease_epoch = lease_epoch + 1, lease_until_ms = ?3
             WHERE id IN (
                 SELECT id FROM executions
                 WHERE status IN ('PENDING', 'RUNNING') AND {scope}
                   AND (?4 IS NULL OR id = ?4) AND (?6 IS NULL OR id > ?6)
                 ORDER BY id LIMIT ?5)
             RETURNING {EXECUTION_COLUMNS}"
        );
        let mut adopted = self
            .write(|tx| {
                let params = params![
                    adoption.owner,
                    adoption.now_ms,
                    adoption.lease_until_ms,
                    adoption.only.as_deref(),
                    i64::from(adoption.limit),
                    adoption.after_id.as_deref(),
                ];
                query_all(tx, &sql, params, |row| {
                    execution_from_row(&SqliteRow::new(row))
                })
            })
            .await?;
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
        self.write(|tx| {
            let mut statement = tx.prepare_cached(
                "UPDATE executions SET lease_until_ms = 0
                 WHERE id = ?1 AND lease_epoch = ?2 AND owner = ?3",
            )?;
            for (id, lease_epoch) in leases {
                statement.execute(params![id, epoch(*lease_epoch), owner])?;
            }
            Ok(())
        })
        .await
    }

    async fn cancel_requests(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, CancelMode)>, ExecutorError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // A JSON array parameter stands for the list (json_each), as SQLite binds no arrays.
        let list = serde_json::to_string(ids)
            .map_err(|e| ExecutorError::Corrupt(format!("encode ids: {e}")))?;
        let rows: Vec<(String, Option<String>)> = self
            .read(|conn| {
                query_all(
                    conn,
                    "SELECT id, cancel_requested FROM executions
                     WHERE id IN (SELECT value FROM json_each(?1)) AND cancel_requested IS NOT NULL
                       AND status IN ('PENDING', 'RUNNING')",
                    [&list],
                    |row| Ok((row.get("id")?, row.get("cancel_requested")?)),
                )
            })
            .await?;
        let mut found = Vec::with_capacity(rows.len());
        for (id, mode) in rows {
            if let Some(mode) = cancel_mode(mode)? {
                found.push((id, mode));
            }
        }
        Ok(found)
    }

    async fn database_now_ms(&self) -> Result<Option<i64>, ExecutorError> {
        Ok(None)
    }
}
