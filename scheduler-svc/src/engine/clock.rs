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
