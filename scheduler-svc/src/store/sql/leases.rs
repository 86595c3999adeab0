//! Owner leases on runs in flight (DESIGN §4.5). The replica whose dispatcher drives a
//! run holds its lease: the run's `owner`, taken until `lease_until_ms`, and held past
//! that while the owner is alive — its heartbeat renews one row, its own in `replicas`,
//! not a row per run it drives (tens of thousands of row versions every few seconds on
//! PostgreSQL, in W3's backlog). When both have expired, another replica may take the
//! run over. Every take-over bumps `lease_epoch`, and the ledger updates a driver sends
//! carry the epoch it took: a driver that lost the run (a frozen replica that wakes up)
//! finds its writes fenced off. On a store that serves one
//! scheduler per database (`exclusive`: SQLite) every lease is the caller's to take, so
//! a restart resumes at once.

use super::rows::col;
use super::{Conn, Dialect, ledger, params};
use crate::model::DispatchJob;
use crate::store::StoreError;

/// Takes the lease of an in-flight run for `owner` until `until_ms` when nobody holds it,
/// `owner` already does, it expired before `now_ms` and its owner is not alive then, or
/// the store is exclusive. Returns the new epoch, or `None` when the run is final, gone,
/// or another owner's.
pub async fn take(
    conn: &mut dyn Conn,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
    exclusive: bool,
) -> Result<Option<i64>, StoreError> {
    let row = conn
        .fetch_optional(
            "UPDATE runs SET owner = $1, lease_until_ms = $2, lease_epoch = lease_epoch + 1 \
             WHERE id = $3 AND status IN ('PENDING', 'RUNNING') \
             AND ($4 OR owner IS NULL OR owner = $1 OR (lease_until_ms < $5 AND NOT EXISTS (\
                  SELECT 1 FROM replicas WHERE id = runs.owner AND alive_until_ms >= $5))) \
             RETURNING lease_epoch",
            params![owner, until_ms, run_id, exclusive, now_ms],
        )
        .await?;
    row.map(|r| col::<i64>(&r, "lease_epoch")).transpose()
}

/// `take`, then the leased run's job read in the same transaction: `None` when the run
/// was not leased, `Some(None)` when it was but its row cannot be read.
pub async fn take_with_job(
    conn: &mut dyn Conn,
    run_id: &str,
    owner: &str,
    now_ms: i64,
    until_ms: i64,
    exclusive: bool,
) -> Result<Option<Option<DispatchJob>>, StoreError> {
    if take(conn, run_id, owner, now_ms, until_ms, exclusive)
        .await?
        .is_none()
    {
        return Ok(None);
    }
    match ledger::dispatch_job(conn, run_id).await {
        Ok(job) => Ok(Some(job)),
        Err(StoreError::Corrupt(_)) => Ok(Some(None)),
        Err(e) => Err(e),
    }
}

/// Records `owner` alive until `until_ms`, which holds every lease it has on a run in
/// flight until then: one row, however many runs it drives (and no row lock a ledger
/// writer could be waiting on).
pub async fn renew(conn: &mut dyn Conn, owner: &str, until_ms: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO replicas (id, alive_until_ms) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET alive_until_ms = excluded.alive_until_ms",
        params![owner, until_ms],
    )
    .await?;
    Ok(())
}

/// Expires every lease `owner` holds on a run in flight; how many.
pub async fn release(conn: &mut dyn Conn, owner: &str) -> Result<u64, StoreError> {
    conn.execute("DELETE FROM replicas WHERE id = $1", params![owner])
        .await?;
    conn.execute(
        "UPDATE runs SET lease_until_ms = 0 \
         WHERE owner = $1 AND status IN ('PENDING', 'RUNNING')",
        params![owner],
    )
    .await
}

/// How many replicas other than `owner` are alive at `now_ms`.
pub async fn live_peers(conn: &mut dyn Conn, owner: &str, now_ms: i64) -> Result<i64, StoreError> {
    let row = conn
        .fetch_optional(
            "SELECT COUNT(*) AS n FROM replicas WHERE id <> $1 AND alive_until_ms > $2",
            params![owner, now_ms],
        )
        .await?;
    row.map_or(Ok(0), |r| col::<i64>(&r, "n"))
}

/// In-flight runs `owner` may drive, oldest due first: its own, those whose lease
/// expired before `now_ms` with their owner not alive then, and those nobody took (their
/// writer died between commit and dispatch) once they were written before
/// `unowned_before_ms` — or at once when no other replica is alive to be their writer (a
/// lone scheduler restarting). Every one on an exclusive store.
pub async fn drivable(
    conn: &mut dyn Conn,
    owner: &str,
    now_ms: i64,
    unowned_before_ms: i64,
    exclusive: bool,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let rows = conn
        .fetch_all(
            "SELECT id FROM runs WHERE status IN ('PENDING', 'RUNNING') \
             AND ($1 OR owner = $2 OR (lease_until_ms < $3 AND NOT EXISTS ( \
                      SELECT 1 FROM replicas WHERE id = runs.owner AND alive_until_ms >= $3)) \
                  OR (owner IS NULL AND (created_ms < $4 OR NOT EXISTS ( \
                      SELECT 1 FROM replicas WHERE id <> $2 AND alive_until_ms > $3)))) \
             ORDER BY dispatch_after_ms, id LIMIT $5",
            params![exclusive, owner, now_ms, unowned_before_ms, limit],
        )
        .await?;
    rows.iter().map(|r| col(r, "id")).collect()
}

/// The epoch of a run's lease, locking the run's row on PostgreSQL so no take-over
/// commits between this check and the write it guards. `None` if the run is gone.
pub async fn epoch_for_update(
    conn: &mut dyn Conn,
    run_id: &str,
) -> Result<Option<i64>, StoreError> {
    let sql = match conn.dialect() {
        Dialect::Sqlite => "SELECT lease_epoch FROM runs WHERE id = $1",
        Dialect::Postgres => "SELECT lease_epoch FROM runs WHERE id = $1 FOR UPDATE",
    };
    let row = conn.fetch_optional(sql, params![run_id]).await?;
    row.map(|r| col::<i64>(&r, "lease_epoch")).transpose()
}

/// The database's own clock (`clock_timestamp()`) in milliseconds, on PostgreSQL: the
/// time replicas agree on. `None` on SQLite, whose one process keeps the system clock.
pub async fn database_time_ms(conn: &mut dyn Conn) -> Result<Option<i64>, StoreError> {
    if conn.dialect() == Dialect::Sqlite {
        return Ok(None);
    }
    let row = conn
        .fetch_optional(
            "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS ms",
            &[],
        )
        .await?;
    row.map(|r| col::<i64>(&r, "ms")).transpose()
}
