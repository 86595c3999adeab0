//! The first layer of retries (DESIGN §4.4): inside one execution, a transient failure of
//! an action is tried again with the same Idempotency-Key after an exponential backoff,
//! longer when the other side asked for it (`Retry-After`), up to the policy's tries.

use almanac_proto::executor::v1::{RetryPolicy, action::Kind};
use almanac_proto::time::duration_to_ms;

/// Tries in all when a policy does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The first wait when a policy does not say.
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 1_000;
/// The longest computed wait when a policy does not say.
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 60_000;
/// The growth of the wait when a policy does not say.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;
/// A `Retry-After` longer than this is not waited for: the try counts as the last.
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

/// A retry policy with its defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    /// The wait before the second try.
    pub initial_ms: u64,
    /// The longest computed wait.
    pub max_ms: u64,
    /// Each wait is the previous one times this.
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::from_policy(None)
    }
}

impl Backoff {
    /// The policy of an action, defaults filled in.
    pub fn from_policy(policy: Option<&RetryPolicy>) -> Self {
        let ms = |d: Option<&pbjson_types::Duration>, default: u64| {
            d.and_then(duration_to_ms)
                .filter(|&ms| ms > 0)
                .map_or(default, |ms| ms as u64)
        };
        let p = policy.cloned().unwrap_or_default();
        Self {
            max_attempts: if p.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                p.max_attempts
            },
            initial_ms: ms(p.initial_backoff.as_ref(), DEFAULT_INITIAL_BACKOFF_MS),
            max_ms: ms(p.max_backoff.as_ref(), DEFAULT_MAX_BACKOFF_MS),
            multiplier: if p.multiplier >= 1.0 {
                p.multiplier
            } else {
                DEFAULT_MULTIPLIER
            },
        }
    }

    /// The policy of whichever kind of action this is.
    pub fn for_action(kind: &Kind) -> Self {
        let policy = match kind {
            Kind::CallApi(a) => a.retry.as_ref(),
            Kind::SendNotification(a) => a.retry.as_ref(),
            Kind::RunTask(a) => a.retry.as_ref(),
            Kind::ExecutePipeline(_) => None,
        };
        Self::from_policy(policy)
    }

    /// The wait before try `next_try` (2 for the first retry), or `None` when the tries
    /// are used up or the other side asked for a wait too long to honour.
    pub fn delay_before(&self, next_try: u32, retry_after_ms: Option<u64>) -> Option<u64> {
        if next_try < 2 || next_try > self.max_attempts {
            return None;
        }
        if retry_after_ms.is_some_and(|ms| ms > MAX_RETRY_AFTER_MS) {
            return None;
        }
        let exponent = (next_try - 2).min(64) as i32;
        let computed = (self.initial_ms as f64) * self.multiplier.powi(exponent);
        let computed = computed.min(self.max_ms as f64) as u64;
        Some(computed.max(retry_after_ms.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::time::ms_to_duration;

    #[test]
    fn waits_grow_to_their_cap_and_stop_after_the_last_try() {
        let b = Backoff::from_policy(Some(&RetryPolicy {
            max_attempts: 5,
            initial_backoff: Some(ms_to_duration(100)),
            max_backoff: Some(ms_to_duration(250)),
            multiplier: 2.0,
        }));
        let waits: Vec<_> = (2..=6).map(|n| b.delay_before(n, None)).collect();
        assert_eq!(waits, [Some(100), Some(200), Some(250), Some(250), None]);
    }

    #[test]
    fn retry_after_lengthens_a_wait_and_an_absurd_one_ends_the_retries() {
        let b = Backoff::default();
        assert_eq!(b.delay_before(2, Some(5_000)), Some(5_000));
        assert_eq!(b.delay_before(2, Some(10)), Some(1_000));
        assert_eq!(b.delay_before(2, Some(MAX_RETRY_AFTER_MS + 1)), None);
    }

    #[test]
    fn defaults_are_three_tries_one_second_doubling() {
        let b = Backoff::from_policy(None);
        assert_eq!((b.max_attempts, b.initial_ms, b.max_ms), (3, 1_000, 60_000));
        assert_eq!(b.delay_before(3, None), Some(2_000));
        assert_eq!(b.delay_before(4, None), None);
        let no_retry = Backoff::from_policy(Some(&RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }));
        assert_eq!(no_retry.delay_before(2, None), None);
    }
}
