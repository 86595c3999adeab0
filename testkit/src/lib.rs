//! Test support shared by Almanac's crates (a dev-dependency only).
//!
//! The PostgreSQL tests run against the cluster named by `ALMANAC_TEST_POSTGRES_URL`
//! (`scripts/test.sh` starts one with `scripts/pg-test-cluster.sh`). Each test gets a
//! database of its own, so tests run in parallel without seeing each other's rows.

use std::path::Path;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The variable choosing the backend of the services the end-to-end tests start:
/// `postgres`, or anything else (unset) for SQLite.
pub const BACKEND_VAR: &str = "ALMANAC_TEST_BACKEND";

/// Whether the end-to-end tests run their services on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var(BACKEND_VAR).is_ok_and(|v| v == "postgres")
}

/// The database of `service` for the test owning `dir`, on PostgreSQL when the tests run
/// there (`None` on SQLite). The first call creates it; later calls (a restarted service)
/// return the same URL, which is kept in `dir`.
pub fn postgres_database_for(dir: &Path, service: &str) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let file = dir.join(format!("{service}.postgres-url"));
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    // Callers may be inside a runtime (or not): create the database on a thread of its own.
    let url = std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(fresh_postgres_database())
    })
    .join()
    .expect("create the test database")
    .unwrap_or_else(|| panic!("{BACKEND_VAR}=postgres needs {POSTGRES_URL_VAR}"));
    std::fs::write(&file, &url).expect("remember the test database");
    Some(url)
}

/// The variable naming the test cluster, e.g. `postgres://postgres@127.0.0.1:25432/postgres`.
pub const POSTGRES_URL_VAR: &str = "ALMANAC_TEST_POSTGRES_URL";

/// Whether a missing tool must fail the test rather than skip it (`scripts/test.sh`
/// sets `ALMANAC_REQUIRE_TOOLS=1`).
pub fn tools_required() -> bool {
    std::env::var("ALMANAC_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

/// Creates an empty database on the test cluster and returns its URL; `None` (after
/// printing `SKIPPED: …`) when no cluster is configured, and a panic then under
/// `ALMANAC_REQUIRE_TOOLS=1`.
pub async fn fresh_postgres_database() -> Option<String> {
    let Ok(admin) = std::env::var(POSTGRES_URL_VAR) else {
        assert!(
            !tools_required(),
            "{POSTGRES_URL_VAR} is not set: run scripts/test.sh, or start a cluster with scripts/pg-test-cluster.sh"
        );
        println!(
            "SKIPPED: {POSTGRES_URL_VAR} is not set (scripts/pg-test-cluster.sh starts a cluster)"
        );
        return None;
    };
    let name = format!("almanac_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test cluster at {admin}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    conn.close().await.ok();
    Some(with_database(&admin, &name))
}

/// `url` with its database path replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(
            with_database("postgres://u@h:5/postgres?sslmode=disable", "x"),
            "postgres://u@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
