//! The six overlap policies of DESIGN §4.4 (Temporal's set), as one pure decision: what a
//! new run does given what its schedule has in flight and waiting — start, wait
//! (BUFFERED), start while the runs in flight are terminated, wait while they are asked
//! to cancel, or be SKIPPED (an overrun when a buffer is full).

use crate::model::{CancelMode, Overlap};

/// What a schedule has in flight, read from the ledger under its lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Runs PENDING or RUNNING.
    pub running: Vec<String>,
    /// How many runs are BUFFERED.
    pub buffered: u32,
}

impl InFlight {
    fn idle(&self) -> bool {
        self.running.is_empty() && self.buffered == 0
    }
}

/// What a new run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Start now.
    Start,
    /// Start now; the runs in flight are terminated.
    StartTerminating(Vec<String>),
    /// Wait (BUFFERED) until the runs in flight end.
    Buffer,
    /// Wait until the runs in flight, asked to cancel gracefully, end.
    BufferCancelling(Vec<String>),
    /// Do not run: SKIPPED with this reason; `overrun` when a buffer was full.
    Skip { reason: String, overrun: bool },
}

/// The decision for one new run.
pub fn decide(policy: Overlap, max_buffered: u32, state: &InFlight) -> Decision {
    if state.idle() {
        return Decision::Start;
    }
    let in_flight = || {
        state
            .running
            .first()
            .map_or_else(|| "a buffered run".to_owned(), |id| format!("run {id}"))
    };
    match policy {
        Overlap::AllowAll => Decision::Start,
        Overlap::Skip => Decision::Skip {
            reason: format!("overlap policy SKIP: {} was in flight", in_flight()),
            overrun: false,
        },
        Overlap::BufferOne if state.buffered == 0 => Decision::Buffer,
        Overlap::BufferOne => Decision::Skip {
            reason: "overlap policy BUFFER_ONE: a run was already waiting".into(),
            overrun: true,
        },
        Overlap::BufferAll if state.buffered < max_buffered => Decision::Buffer,
        Overlap::BufferAll => Decision::Skip {
            reason: format!("overlap policy BUFFER_ALL: the buffer was full ({max_buffered} runs waiting)"),
            overrun: true,
        },
        Overlap::CancelOther if state.buffered == 0 => Decision::BufferCancelling(state.running.clone()),
        Overlap::CancelOther => Decision::Skip {
            reason: "overlap policy CANCEL_OTHER: a run was already waiting for the cancelled one to end".into(),
            overrun: true,
        },
        Overlap::TerminateOther => Decision::StartTerminating(state.running.clone()),
    }
}

/// Applies a decision to the in-flight state the next decision sees, returning the
/// cancellations it asks for.
pub fn apply(
    decision: &Decision,
    new_run: &str,
    state: &mut InFlight,
) -> Vec<(String, CancelMode)> {
    match decision {
        Decision::Start => {
            state.running.push(new_run.to_owned());
            Vec::new()
        }
        Decision::StartTerminating(ids) => {
            state.running = vec![new_run.to_owned()];
            ids.iter()
                .map(|id| (id.clone(), CancelMode::Terminate))
                .collect()
        }
        Decision::Buffer => {
            state.buffered += 1;
            Vec::new()
        }
        Decision::BufferCancelling(ids) => {
            state.buffered += 1;
            ids.iter()
                .map(|id| (id.clone(), CancelMode::Graceful))
                .collect()
        }
        Decision::Skip { .. } => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> InFlight {
        InFlight {
            running: vec!["r1".into()],
            buffered: 0,
        }
    }

    #[test]
    fn an_idle_schedule_starts_whatever_the_policy() {
        for p in [
            Overlap::Skip,
            Overlap::BufferOne,
            Overlap::BufferAll,
            Overlap::CancelOther,
            Overlap::TerminateOther,
            Overlap::AllowAll,
        ] {
            assert_eq!(decide(p, 5, &InFlight::default()), Decision::Start, "{p:?}");
        }
    }

    #[test]
    fn each_policy_decides_its_way_while_a_run_is_in_flight() {
        assert!(matches!(
            decide(Overlap::Skip, 5, &busy()),
            Decision::Skip { overrun: false, .. }
        ));
        assert_eq!(decide(Overlap::AllowAll, 5, &busy()), Decision::Start);
        assert_eq!(decide(Overlap::BufferOne, 5, &busy()), Decision::Buffer);
        assert_eq!(decide(Overlap::BufferAll, 5, &busy()), Decision::Buffer);
        assert_eq!(
            decide(Overlap::CancelOther, 5, &busy()),
            Decision::BufferCancelling(vec!["r1".into()])
        );
        assert_eq!(
            decide(Overlap::TerminateOther, 5, &busy()),
            Decision::StartTerminating(vec!["r1".into()])
        );
    }

    #[test]
    fn buffers_are_bounded_and_overruns_counted() {
        let mut state = busy();
        let mut overruns = 0;
        for i in 0..5 {
            let d = decide(Overlap::BufferAll, 3, &state);
            if let Decision::Skip { overrun: true, .. } = d {
                overruns += 1;
            }
            apply(&d, &format!("n{i}"), &mut state);
        }
        assert_eq!((state.buffered, overruns), (3, 2));
        let mut state = busy();
        let first = decide(Overlap::BufferOne, 3, &state);
        apply(&first, "a", &mut state);
        assert!(matches!(
            decide(Overlap::BufferOne, 3, &state),
            Decision::Skip { overrun: true, .. }
        ));
    }

    #[test]
    fn cancel_other_asks_gracefully_and_terminate_other_cuts() {
        let mut state = busy();
        let asks = apply(&decide(Overlap::CancelOther, 1, &state), "n", &mut state);
        assert_eq!(asks, [("r1".to_owned(), CancelMode::Graceful)]);
        let mut state = busy();
        let asks = apply(&decide(Overlap::TerminateOther, 1, &state), "n", &mut state);
        assert_eq!(asks, [("r1".to_owned(), CancelMode::Terminate)]);
        assert_eq!(state.running, ["n"]);
    }
}
