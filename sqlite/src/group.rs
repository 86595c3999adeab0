//! Group commit: many small write transactions from concurrent tasks committed as one.
//!
//! A commit costs far more than the statements before it: every page the transaction
//! dirtied is appended to the WAL (and checksummed), and the WAL is later copied back
//! into the database file. A burst of fires appends the same few pages (the tail of the
//! events table, its indexes) once per event when each event is its own transaction, and
//! once per *batch* when they share one.
//!
//! How: a caller queues its work, then waits for the writer. Whoever gets the writer
//! (the *leader*) takes everything queued, runs each piece in a savepoint of one
//! transaction, commits, and hands each caller its result; callers whose work a leader
//! already committed find the queue without it and just read their result. Nobody waits
//! for a timer: with no contention a batch is the caller's own work, at the cost of one
//! savepoint. A piece that fails is rolled back to its savepoint alone; a failed commit
//! fails every piece of the batch. Work whose caller stopped waiting is not run.

use std::sync::{Arc, Mutex as StdMutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{Db, lock, step};

/// Pieces a leader takes at most into one transaction.
const MAX_BATCH: usize = 512;

/// A queued piece of work: runs inside the leader's transaction and returns what to do
/// once the commit's outcome is known.
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// The queue of work waiting for a leader.
#[derive(Default)]
pub(crate) struct Queue(StdMutex<Vec<Job>>);

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("waiting", &lock(&self.0).len())
            .finish()
    }
}

impl Db {
    /// Runs `f` in a write transaction it may share with other callers' work (group
    /// commit). `f` runs in its own savepoint: its `Err` undoes its own statements only.
    /// The result is returned once the shared transaction has committed; a failed commit
    /// is every caller's error.
    pub async fn write_grouped<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (reply, result) = oneshot::channel::<Result<T, E>>();
        let job: Job = Box::new(move |tx: &Connection| -> Completion {
            if reply.is_closed() {
                return Box::new(|_| {});
            }
            let out = in_savepoint(tx, f);
            Box::new(move |commit_error: Option<&rusqlite::Error>| {
                let out = match commit_error {
                    None => out,
                    Some(e) => Err(E::from(replicate(e))),
                };
                let _ = reply.send(out);
            })
        });
        lock(&self.queue.0).push(job);
        self.lead().await;
        match result.await {
            Ok(out) => out,
            // Only a panic inside a leader's batch drops a reply unsent.
            Err(_) => Err(E::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("the group commit holding this write failed".into()),
            ))),
        }
    }

    /// Takes the writer and commits everything queued, in batches, until the queue is
    /// empty (then this caller's own work is committed too).
    async fn lead(&self) {
        let conn = self.writer.lock().await;
        // Let the tasks ready to run on this worker queue their work first: the
        // transaction runs in place, so nothing else queues while it does.
        tokio::task::yield_now().await;
        loop {
            let batch: Vec<Job> = {
                let mut queue = lock(&self.queue.0);
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                return;
            }
            let mut completions = Vec::with_capacity(batch.len());
            let committed = (|| {
                step(&conn, "BEGIN IMMEDIATE")?;
                // Rolls back what a failed COMMIT (or a panicking piece) left open, before
                // the writer is handed on.
                let _open = OpenTransaction(&conn);
                for job in batch {
                    completions.push(job(&conn));
                }
                step(&conn, "COMMIT")
            })();
            let error = committed.err();
            for done in completions {
                done(error.as_ref());
            }
        }
    }
}

/// The leader's transaction while it is open: rolled back when dropped still open.
struct OpenTransaction<'c>(&'c Connection);

impl Drop for OpenTransaction<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() {
            let _ = step(self.0, "ROLLBACK");
        }
    }
}

/// Runs `f` between `SAVEPOINT` and `RELEASE`, rolling back to the savepoint on `Err`.
fn in_savepoint<T, E: From<rusqlite::Error>>(
    tx: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    step(tx, "SAVEPOINT grouped")?;
    match f(tx) {
        Ok(out) => {
            step(tx, "RELEASE grouped")?;
            Ok(out)
        }
        Err(e) => {
            step(tx, "ROLLBACK TO grouped")?;
            step(tx, "RELEASE grouped")?;
            Err(e)
        }
    }
}

/// A copy of a commit's error for each caller of the batch (the error is not `Clone`).
fn replicate(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

pub(crate) type SharedQueue = Arc<Queue>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::tests::db;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_grouped_writers_each_get_their_own_result() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(db(&dir).await);
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let db = Arc::clone(&db);
            tasks.push(tokio::spawn(async move {
                db.write_grouped(move |tx| {
                    tx.execute("INSERT INTO t VALUES (?1, ?2)", (format!("k{i}"), i))?;
                    Ok::<_, rusqlite::Error>(i * 2)
                })
                .await
            }));
        }
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap().unwrap(), i as i64 * 2);
        }
        let n: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 200);
    }

    #[tokio::test]
    async fn a_failing_piece_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir).await;
        db.write(|tx| tx.execute("INSERT INTO t VALUES ('taken', 0)", []))
            .await
            .unwrap();
        let (a, b, c) = tokio::join!(
            db.write_grouped(|tx| tx.execute("INSERT INTO t VALUES ('a', 1)", [])),
            db.write_grouped(|tx| {
                tx.execute("INSERT INTO t VALUES ('b', 2)", [])?;
                tx.execute("INSERT INTO t VALUES ('taken', 2)", [])
            }),
            db.write_grouped(|tx| tx.execute("INSERT INTO t VALUES ('c', 3)", [])),
        );
        assert!(a.is_ok() && c.is_ok());
        assert!(crate::is_unique_violation(&b.unwrap_err()));
        let keys: Vec<String> = db
            .read(|c| {
                let mut s = c.prepare("SELECT k FROM t ORDER BY k")?;
                s.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap();
        assert_eq!(
            keys,
            ["a", "c", "taken"],
            "b's first insert went with its savepoint"
        );
    }
}
