//! Compiled specs, so the timer does not parse a cron expression on every fire. They are
//! kept by the spec itself, shared by every schedule with the same one: a scheduler
//! that restarts with 100 000 schedules of one expression parses it once, not 100 000
//! times (cron parsing was a fifth of the scheduler's CPU in W3's recovery,
//! `BENCHMARKS.md`). Each schedule's entry names the spec it was compiled from and is used
//! only while the stored spec is that one, so no change, delete or re-create can see a
//! stale one; a compiled spec no schedule uses any more is dropped.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

use crate::model::Schedule;
use crate::spec::{CompiledSpec, Spec, SpecError};

/// A cache of compiled specs.
#[derive(Default)]
pub struct SpecCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The spec each schedule was last planned with.
    by_schedule: HashMap<String, Spec>,
    /// Each spec in use, compiled, with how many schedules use it.
    by_spec: HashMap<Spec, (CompiledSpec, usize)>,
}

impl Inner {
    fn release(&mut self, spec: Spec) {
        if let Entry::Occupied(mut entry) = self.by_spec.entry(spec) {
            entry.get_mut().1 -= 1;
            if entry.get().1 == 0 {
                entry.remove();
            }
        }
    }
}

impl SpecCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled spec of a schedule as it is now.
    pub fn get(&self, schedule: &Schedule) -> Result<CompiledSpec, SpecError> {
        let mut inner = self.inner();
        if inner.by_schedule.get(&schedule.id) == Some(&schedule.spec)
            && let Some((compiled, _)) = inner.by_spec.get(&schedule.spec)
        {
            return Ok(compiled.clone());
        }
        let compiled = match inner.by_spec.get_mut(&schedule.spec) {
            Some((compiled, users)) => {
                *users += 1;
                compiled.clone()
            }
            None => {
                let compiled = schedule.spec.compile()?;
                inner
                    .by_spec
                    .insert(schedule.spec.clone(), (compiled.clone(), 1));
                compiled
            }
        };
        if let Some(old) = inner
            .by_schedule
            .insert(schedule.id.clone(), schedule.spec.clone())
        {
            inner.release(old);
        }
        Ok(compiled)
    }

    /// Forgets a deleted (or changed) schedule.
    pub fn remove(&self, id: &str) {
        let mut inner = self.inner();
        if let Some(old) = inner.by_schedule.remove(id) {
            inner.release(old);
        }
    }

    /// How many compiled specs are kept.
    #[cfg(test)]
    fn compiled(&self) -> usize {
        self.inner().by_spec.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Policy, ScheduleState};

    fn once(id: &str, at_ms: i64) -> Schedule {
        Schedule {
            id: id.into(),
            display_name: String::new(),
            description: String::new(),
            spec: Spec::Once { at_ms },
            action: Default::default(),
            policy: Policy::default(),
            state: ScheduleState::Active,
            pause: None,
            next_fire_ms: None,
            run_count: 0,
            version: 1,
            request_id: None,
            completion_reason: None,
            created_ms: 0,
            updated_ms: 0,
            consecutive_failures: 0,
            buffer_overruns: 0,
        }
    }

    #[test]
    fn a_schedule_recreated_under_the_same_id_and_version_gets_its_own_spec() {
        let cache = SpecCache::default();
        let first = cache.get(&once("x", 1_000)).unwrap();
        assert_eq!(first.next_at_or_after(0), Some(1_000));
        let second = cache.get(&once("x", 9_000)).unwrap();
        assert_eq!(second.next_at_or_after(0), Some(9_000));
        assert_eq!(cache.compiled(), 1, "the first spec has no user left");
    }

    #[test]
    fn schedules_with_one_spec_share_it_until_the_last_goes() {
        let cache = SpecCache::default();
        for id in ["a", "b", "c"] {
            assert_eq!(
                cache.get(&once(id, 5_000)).unwrap().next_at_or_after(0),
                Some(5_000)
            );
        }
        assert_eq!(
            cache.get(&once("d", 7_000)).unwrap().next_at_or_after(0),
            Some(7_000)
        );
        assert_eq!(cache.compiled(), 2);
        // Asking again changes nothing.
        cache.get(&once("a", 5_000)).unwrap();
        assert_eq!(cache.compiled(), 2);
        cache.remove("a");
        cache.remove("b");
        assert_eq!(cache.compiled(), 2, "c still uses the first spec");
        // A changed schedule moves to its new spec and leaves the old one.
        assert_eq!(
            cache.get(&once("c", 7_000)).unwrap().next_at_or_after(0),
            Some(7_000)
        );
        assert_eq!(cache.compiled(), 1);
        cache.remove("c");
        cache.remove("d");
        cache.remove("never-seen");
        assert_eq!(cache.compiled(), 0);
    }

    #[test]
    fn a_spec_that_does_not_compile_is_refused_and_not_kept() {
        let cache = SpecCache::default();
        let mut bad = once("x", 0);
        bad.spec = Spec::Cron {
            expression: "61 * * * *".into(),
            timezone: String::new(),
        };
        assert!(cache.get(&bad).is_err());
        assert_eq!(cache.compiled(), 0);
        assert!(cache.get(&once("x", 1_000)).is_ok());
        assert_eq!(cache.compiled(), 1);
    }
}
