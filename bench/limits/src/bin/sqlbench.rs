//! The store's commit rate on this machine, as the services configure SQLite (WAL,
//! synchronous=NORMAL, `BEGIN IMMEDIATE`): one insert per transaction, N inserts in one
//! transaction, and point selects, through sqlx-sqlite and through rusqlite.
//!
//! Usage: `sqlbench [--n 5000] [--dir DIR]`; one JSON line per case on stdout.

use std::path::Path;
use std::time::Instant;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Executor};

const CREATE: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)";
const INSERT: &str = "INSERT INTO t (a, b) VALUES (?1, ?2)";
const SELECT: &str = "SELECT b FROM t WHERE id = ?1";

/// /proc counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second.
const USER_HZ: f64 = 100.0;

/// This process's user + system CPU seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / USER_HZ
}

/// Prints one JSON line for `n` operations of `case` begun at `started` / `cpu0`.
fn measure(library: &str, case: &str, unit: &str, n: usize, started: Instant, cpu0: f64) {
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "{{\"library\": \"{library}\", \"case\": \"{case}\", \"n\": {n}, \"per_s\": {:.0}, \
         \"unit\": \"{unit}\", \"wall_us\": {:.2}, \"cpu_us\": {:.2}}}",
        n as f64 / wall,
        wall * 1e6 / n as f64,
        cpu * 1e6 / n as f64
    );
}

async fn with_sqlx(path: &Path, n: usize) -> Result<(), sqlx::Error> {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let mut c = sqlx::SqliteConnection::connect_with(&opts).await?;
    c.execute(CREATE).await?;

    let (t, u) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let mut tx = c.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(INSERT)
            .bind(format!("row-{i}"))
            .bind(i as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    measure("sqlx", "1 insert per transaction", "txn", n, t, u);

    let (t, u) = (Instant::now(), cpu_seconds());
    let mut tx = c.begin_with("BEGIN IMMEDIATE").await?;
    for i in 0..n {
        sqlx::query(INSERT)
            .bind(format!("row-{i}"))
            .bind(i as i64)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    measure("sqlx", "n inserts in 1 transaction", "row", n, t, u);

    let (t, u) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let _: (i64,) = sqlx::query_as(SELECT)
            .bind((i + 1) as i64)
            .fetch_one(&mut c)
            .await?;
    }
    measure("sqlx", "point select", "query", n, t, u);
    c.close().await
}

fn with_rusqlite(path: &Path, n: usize) -> rusqlite::Result<()> {
    let mut r = rusqlite::Connection::open(path)?;
    r.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
    r.execute_batch(CREATE)?;

    let (t, u) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let tx = r.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.prepare_cached(INSERT)?
            .execute(rusqlite::params![format!("row-{i}"), i as i64])?;
        tx.commit()?;
    }
    measure("rusqlite", "1 insert per transaction", "txn", n, t, u);

    let (t, u) = (Instant::now(), cpu_seconds());
    let tx = r.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for i in 0..n {
        tx.prepare_cached(INSERT)?
            .execute(rusqlite::params![format!("row-{i}"), i as i64])?;
    }
    tx.commit()?;
    measure("rusqlite", "n inserts in 1 transaction", "row", n, t, u);

    let (t, u) = (Instant::now(), cpu_seconds());
    for i in 0..n {
        let _: i64 = r
            .prepare_cached(SELECT)?
            .query_row([(i + 1) as i64], |row| row.get(0))?;
    }
    measure("rusqlite", "point select", "query", n, t, u);
    Ok(())
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = arg("--n").map_or(Ok(5000), |v| v.parse())?;
    let base = arg("--dir").map_or_else(std::env::temp_dir, Into::into);
    let dir = base.join(format!("sqlbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = async {
        with_sqlx(&dir.join("sqlx.db"), n).await?;
        with_rusqlite(&dir.join("rusqlite.db"), n)?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    std::fs::remove_dir_all(&dir)?;
    result
}
