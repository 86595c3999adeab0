//! The injected source of "now": every timestamp the executor records comes from a
//! `Clock`, so tests can control time and SQL never reads the time itself. On a database
//! shared by several executors the production clock is the database's (`DatabaseClock`):
//! replicas compare leases on one clock, whatever their machines' clocks say.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::error::ExecutorError;
use crate::store::ExecutorStore;

/// How often `DatabaseClock` samples the database's time.
pub const CLOCK_SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A sample whose round trip took longer than this is too imprecise to keep.
const MAX_SAMPLE_ROUND_TRIP: Duration = Duration::from_secs(1);

/// Tells the time, in integer milliseconds since the Unix epoch, UTC.
pub trait Clock: Send + Sync {
    /// Now.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// The database's clock, read without a round trip: the system clock plus the offset of
/// the database's `clock_timestamp()` measured by the latest sample (half the round trip
/// compensated). SQL still never reads the time: the service passes this clock's now.
#[derive(Debug, Default)]
pub struct DatabaseClock {
    offset_ms: AtomicI64,
}

impl Clock for DatabaseClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }
}

impl DatabaseClock {
    /// A clock over `store`'s database, sampled once; `None` when the database has no
    /// clock of its own to share (SQLite: the system clock is the clock).
    pub async fn open(store: &dyn ExecutorStore) -> Result<Option<Arc<Self>>, ExecutorError> {
        let clock = Self::default();
        match clock.sample(store, true).await? {
            false => Ok(None),
            true => Ok(Some(Arc::new(clock))),
        }
    }

    /// Measures the offset again (keeping the last one when this sample's round trip was
    /// too long, unless `first`); `false` when the database has no clock.
    async fn sample(&self, store: &dyn ExecutorStore, first: bool) -> Result<bool, ExecutorError> {
        let sent_ms = SystemClock.now_ms();
        let sent = Instant::now();
        let Some(database_ms) = store.database_now_ms().await? else {
            return Ok(false);
        };
        let round_trip = sent.elapsed();
        if first || round_trip <= MAX_SAMPLE_ROUND_TRIP {
            let offset = offset_ms(sent_ms, round_trip, database_ms);
            self.offset_ms.store(offset, Ordering::Relaxed);
            tracing::debug!(
                offset_ms = offset,
                round_trip_ms = round_trip.as_millis() as u64,
                "database clock sampled"
            );
        }
        Ok(true)
    }
}

/// The database's lead over the system clock, from a sample sent at `sent_ms` (system
/// time) that came back after `round_trip` with `database_ms`: the database read its
/// clock half-way, on average.
fn offset_ms(sent_ms: i64, round_trip: Duration, database_ms: i64) -> i64 {
    let midway = sent_ms + (round_trip.as_millis() as i64) / 2;
    database_ms - midway
}

impl Engine {
    /// Keeps `clock` in step with its database (a sample every `CLOCK_SAMPLE_EVERY`)
    /// until shutdown.
    pub fn spawn_clock_sync(self: &Arc<Self>, clock: Arc<DatabaseClock>) {
        let engine = Arc::clone(self);
        self.tasks.spawn(async move {
            let stop: CancellationToken = engine.shutdown.clone();
            // Bounded by shutdown.
            loop {
                tokio::select! {
                    () = tokio::time::sleep(CLOCK_SAMPLE_EVERY) => {}
                    () = stop.cancelled() => return,
                }
                if let Err(error) = clock.sample(engine.store.as_ref(), false).await {
                    tracing::warn!(%error, "cannot sample the database clock; keeping the last offset");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_compensates_half_the_round_trip() {
        // Sent at 1000 (system), answered after 40 ms with 5020: the database read its
        // clock at about 1020 (system), so it leads by 4000.
        assert_eq!(offset_ms(1_000, Duration::from_millis(40), 5_020), 4_000);
        assert_eq!(offset_ms(1_000, Duration::ZERO, 900), -100);
        let clock = DatabaseClock::default();
        clock.offset_ms.store(60_000, Ordering::Relaxed);
        let lead = clock.now_ms() - SystemClock.now_ms();
        assert!((59_990..=60_010).contains(&lead), "{lead}");
    }

    #[test]
    fn system_clock_is_after_2024() {
        assert!(SystemClock.now_ms() > 1_704_067_200_000);
    }
}
