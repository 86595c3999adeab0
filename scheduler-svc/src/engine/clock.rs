//! The injected clock. Scheduling logic asks it for the time and sleeps on it, so tests
//! walk through DST changes and years of fires without sleeping (STYLE: time is injected).

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::watch;

/// A source of UTC time in whole milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Resolves at or after `deadline_ms`, or earlier: callers re-check the time.
    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()>;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The longest single sleep: a wall-clock jump is noticed within this.
const MAX_SLEEP_MS: i64 = 1_000;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()> {
        let wait = (deadline_ms - self.now_ms()).clamp(0, MAX_SLEEP_MS);
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(
            wait as u64,
        )))
    }
}

/// The database's clock (DESIGN §4.5): with PostgreSQL replicas, the time every replica
/// agrees on, so their leases and fires line up even when their hosts' clocks drift.
/// Reading the database for every `now_ms` would put a round trip on every decision, so
/// it keeps the offset between the database's `clock_timestamp()` and this host's clock,
/// measured every `SAMPLE_EVERY` (half the round trip compensated), and adds it to the
/// system time. SQL still never calls `now()`: the time is passed in as a parameter.
#[derive(Debug, Default)]
pub struct DatabaseClock {
    offset_ms: std::sync::atomic::AtomicI64,
}

/// How often `DatabaseClock` measures its offset.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl DatabaseClock {
    /// The database's clock if the store has one (`None` on SQLite), measured once now
    /// and then every `SAMPLE_EVERY` until `stop`.
    pub async fn start(
        store: Arc<dyn crate::store::SchedulerStore>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Option<Arc<Self>>, crate::store::StoreError> {
        let clock = Arc::new(Self::default());
        if !clock.sample(store.as_ref()).await? {
            return Ok(None);
        }
        let this = clock.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                    () = stop.cancelled() => return,
                }
                if let Err(e) = this.sample(store.as_ref()).await {
                    tracing::warn!(error = %e, "cannot read the database clock; keeping the last offset");
                }
            }
        });
        Ok(Some(clock))
    }

    /// Measures the offset; false if the store has no clock.
    async fn sample(
        &self,
        store: &dyn crate::store::SchedulerStore,
    ) -> Result<bool, crate::store::StoreError> {
        let before = SystemClock.now_ms();
        let Some(database_ms) = store.database_time_ms().await? else {
            return Ok(false);
        };
        let after = SystemClock.now_ms();
        let offset = database_ms - (before + after) / 2;
        let previous = self
            .offset_ms
            .swap(offset, std::sync::atomic::Ordering::Relaxed);
        if (offset - previous).abs() > 1_000 {
            tracing::warn!(
                offset_ms = offset,
                previous_ms = previous,
                "this host's clock and the database's differ; using the database's"
            );
        }
        Ok(true)
    }

    fn offset(&self) -> i64 {
        self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Clock for DatabaseClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.offset()
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()> {
        SystemClock.sleep_until(deadline_ms - self.offset())
    }
}

/// A clock that moves only when told to; sleepers wake when it passes their deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(now_ms)),
        }
    }

    /// Moves the clock to `ms` (never backwards).
    pub fn set(&self, ms: i64) {
        self.now.send_modify(|now| *now = (*now).max(ms));
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.now.send_modify(|now| *now += ms.max(0));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // An error means the clock is gone: nothing will ever wake us, so return.
            let _ = rx.wait_for(|now| *now >= deadline_ms).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_when_the_clock_passes_their_deadline() {
        let clock = ManualClock::new(1_000);
        let sleeper = tokio::spawn(clock.sleep_until(5_000));
        clock.advance(1_000);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.set(5_000);
        tokio::time::timeout(std::time::Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper woke")
            .unwrap();
        clock.set(10);
        assert_eq!(clock.now_ms(), 5_000, "the clock never goes backwards");
    }
}
