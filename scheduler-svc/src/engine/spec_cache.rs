//! Compiled specs by schedule, so the timer does not re-parse a cron expression on
//! every fire. Keyed by schedule id and version: any change recompiles.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::Schedule;
use crate::spec::{CompiledSpec, SpecError};

/// A cache of compiled specs.
#[derive(Default)]
pub struct SpecCache {
    compiled: Mutex<HashMap<String, (i64, CompiledSpec)>>,
}

impl SpecCache {
    /// The compiled spec of a schedule at its current version.
    pub fn get(&self, schedule: &Schedule) -> Result<CompiledSpec, SpecError> {
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((version, spec)) = map.get(&schedule.id)
            && *version == schedule.version
        {
            return Ok(spec.clone());
        }
        let spec = schedule.spec.compile()?;
        map.insert(schedule.id.clone(), (schedule.version, spec.clone()));
        Ok(spec)
    }

    /// Forgets a deleted schedule.
    pub fn remove(&self, id: &str) {
        self.compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}
