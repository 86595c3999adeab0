//! Compiled specs by schedule, so the timer does not re-parse a cron expression on
//! every fire. An entry is used only while the stored spec is the one it was compiled
//! from, so no change, delete or re-create can see a stale one.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::Schedule;
use crate::spec::{CompiledSpec, Spec, SpecError};

/// A cache of compiled specs.
#[derive(Default)]
pub struct SpecCache {
    compiled: Mutex<HashMap<String, (Spec, CompiledSpec)>>,
}

impl SpecCache {
    /// The compiled spec of a schedule as it is now.
    pub fn get(&self, schedule: &Schedule) -> Result<CompiledSpec, SpecError> {
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((spec, compiled)) = map.get(&schedule.id)
            && *spec == schedule.spec
        {
            return Ok(compiled.clone());
        }
        let compiled = schedule.spec.compile()?;
        map.insert(
            schedule.id.clone(),
            (schedule.spec.clone(), compiled.clone()),
        );
        Ok(compiled)
    }

    /// Forgets a deleted schedule.
    pub fn remove(&self, id: &str) {
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
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
    }
}
