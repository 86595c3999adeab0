//! The store conformance suite: ONE set of tests that every backend must pass. Each test
//! written with `conformance!` expands into a module with two tests, `sqlite` (a file in
//! a tempdir) and `postgres` (a fresh database on the cluster named by
//! `ALMANAC_TEST_POSTGRES_URL`; it returns early, printing SKIPPED, when none is set).

use std::sync::Arc;

use super::{Backend, ExecutorStore};

/// Where one test's store lives; `open` may be called again to reopen the same data.
pub(super) struct Harness {
    backend: Backend,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub(super) async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::Sqlite(dir.path().join("nested/executor.db"));
        Self { backend, _dir: dir }
    }

    pub(super) async fn postgres() -> Option<Self> {
        let url = almanac_testkit::fresh_postgres_database().await?;
        Some(Self {
            backend: Backend::Postgres(url),
            _dir: tempfile::tempdir().unwrap(),
        })
    }

    /// Opens (and migrates) the store; again for a reopen.
    pub(super) async fn open(&self) -> Arc<dyn ExecutorStore> {
        self.backend.clone().open().await.unwrap()
    }
}

/// `conformance! { async fn name(h) { … } … }`: each test, once per backend.
macro_rules! conformance {
    ($(async fn $name:ident($h:ident) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::store::conformance::Harness;

            async fn run($h: Harness) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                run(Harness::sqlite().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(harness) = Harness::postgres().await {
                    run(harness).await;
                }
            }
        }
    )*};
}

// After the macro, which they use.
mod executions;
mod leases;
mod pipelines;
mod tasks;
