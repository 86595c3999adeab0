//! Appending events and fanning them out. An event is committed to the store before
//! anyone sees it. Each committed event is also kept in its execution's short in-memory
//! list (`Live::recent`, the last `RECENT` events), then the seq signal moves; a watcher
//! takes the events that follow its cursor from that list while they are there without a
//! gap, and reads the store (in batches, after its cursor) otherwise — when it falls
//! behind, joins late, or on the periodic re-check — so a slow or reconnecting watcher
//! never loses or repeats one. An execution run by another replica has no signal here:
//! its watchers poll the event table (`WATCH_POLL`). A runner's writes are fenced by its
//! lease (`write`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::{Engine, EventStream, Live};
use crate::config::{EVENT_BATCH, WATCH_POLL, WATCH_RECHECK};
use crate::error::ExecutorError;
use crate::model::{Event, Transition};

impl Engine {
    /// Commits `transition` (its event and the row updates it implies), then tells the
    /// execution's watchers that the seq moved.
    pub(crate) async fn append(
        &self,
        execution_id: &str,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        let at_ms = self.clock.now_ms();
        let event = self.store.append(execution_id, at_ms, transition).await?;
        if let Some(live) = self.live(execution_id) {
            live.committed(&event);
        }
        tracing::debug!(execution_id, seq = event.seq, "event appended");
        Ok(event)
    }

    /// Holds `transition` back, to be committed by the runner's next write in the same
    /// transaction, before that write's own event. Nobody sees it until then. A runner
    /// stages only what its next write follows at once (a single-node execution's node
    /// result, then the execution's end): one transaction instead of two, and a crash
    /// between the two loses no more than a crash just before the first would have.
    pub(crate) fn stage(&self, live: &Live, transition: Transition) {
        let at_ms = self.clock.now_ms();
        lock(&live.staged).push((at_ms, transition));
    }

    /// Commits what the runner staged, if anything (a drive that ended on a store error
    /// left it there: the next drive commits it before it reads the execution back).
    pub(crate) async fn flush_staged(
        &self,
        live: &Live,
        execution_id: &str,
    ) -> Result<(), ExecutorError> {
        let staged = std::mem::take(&mut *lock(&live.staged));
        let Some((at_ms, last)) = staged.last().cloned() else {
            return Ok(());
        };
        let mut rest = staged;
        rest.pop();
        self.commit_as(live, execution_id, rest, at_ms, last)
            .await
            .map(|_| ())
    }

    /// A runner's write: commits what it staged and `transition`, only while the
    /// execution is held under the runner's lease, then signals its watchers. A lost lease
    /// (another replica adopted the execution) is `LeaseLost`, and marks the runner lost so
    /// that it stops at once.
    pub(crate) async fn write(
        &self,
        live: &Live,
        execution_id: &str,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        let at_ms = self.clock.now_ms();
        let staged = std::mem::take(&mut *lock(&live.staged));
        self.commit_as(live, execution_id, staged, at_ms, transition)
            .await
    }

    /// Commits `staged` and then `transition` in one transaction under the runner's lease;
    /// on a failure `staged` goes back, ahead of anything staged since, for a later write.
    async fn commit_as(
        &self,
        live: &Live,
        execution_id: &str,
        staged: Vec<(i64, Transition)>,
        at_ms: i64,
        transition: Transition,
    ) -> Result<Event, ExecutorError> {
        if live.lost.is_cancelled() {
            return Err(ExecutorError::LeaseLost(execution_id.to_owned()));
        }
        let result = if staged.is_empty() {
            self.store
                .append_as(execution_id, &live.lease, at_ms, transition)
                .await
                .map(|event| vec![event])
        } else {
            let mut all = staged.clone();
            all.push((at_ms, transition));
            self.store
                .append_all_as(execution_id, &live.lease, all)
                .await
        };
        if result.is_err() && !staged.is_empty() {
            let mut held = lock(&live.staged);
            let later = std::mem::replace(&mut *held, staged);
            held.extend(later);
        }
        match result.map(|mut events| {
            let last = events.pop();
            (events, last)
        }) {
            Ok((earlier, Some(event))) => {
                for staged in &earlier {
                    live.committed(staged);
                }
                live.committed(&event);
                tracing::debug!(execution_id, seq = event.seq, "event appended");
                Ok(event)
            }
            Ok((_, None)) => Err(ExecutorError::Corrupt(format!(
                "execution {execution_id}: an append returned no event"
            ))),
            Err(ExecutorError::LeaseLost(id)) => {
                tracing::warn!(
                    execution_id,
                    epoch = live.lease.epoch,
                    "execution lease lost: a write was refused, another replica adopted the execution; its runner here stops"
                );
                live.lost.cancel();
                Err(ExecutorError::LeaseLost(id))
            }
            Err(error) => Err(error),
        }
    }

    /// The events of an execution with `seq > after_seq`, live until `ExecutionFinished`
    /// (then the stream ends). When the executor shuts down the stream ends with
    /// `ShuttingDown` so that the client reconnects elsewhere or later.
    pub(crate) fn event_stream(
        self: &Arc<Self>,
        execution_id: String,
        after_seq: u64,
    ) -> EventStream {
        let live = self.live(&execution_id);
        let signal = live.as_ref().map(|l| l.seq.subscribe());
        let recent = live.as_ref().map(|l| Arc::clone(&l.recent));
        let watcher = Watcher {
            engine: Arc::clone(self),
            execution_id,
            cursor: after_seq,
            pending: VecDeque::new(),
            recent,
            recheck: false,
            signal,
            done: false,
        };
        Box::pin(futures::stream::unfold(watcher, |mut w| async move {
            let item = w.next().await?;
            Some((item, w))
        }))
    }
}

struct Watcher {
    engine: Arc<Engine>,
    execution_id: String,
    /// The seq of the last event handed out.
    cursor: u64,
    /// Events read, not yet handed out.
    pending: VecDeque<Event>,
    /// The list of the last events of the execution's runner in this process, if it
    /// runs here (kept after the runner's end; the signal is not).
    recent: Option<Arc<Mutex<VecDeque<Event>>>>,
    /// The last wait ended by the periodic re-check, not by a signal.
    recheck: bool,
    /// Moves when the execution's runner (in this process) commits an event.
    signal: Option<watch::Receiver<u64>>,
    done: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<Event, ExecutorError>> {
        // Bounded: each turn either returns, or waits at least until a signal or the
        // periodic re-check, and the stream ends when the execution does.
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.cursor = event.seq;
                if event.is_final() {
                    self.done = true;
                    self.pending.clear();
                }
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if self.engine.shutdown.is_cancelled() {
                self.done = true;
                return Some(Err(ExecutorError::ShuttingDown));
            }
            if let Some(signal) = &mut self.signal {
                signal.borrow_and_update();
            }
            // The periodic re-check asks the store: an event appended through another
            // replica (a worker's progress) reaches the list only with a later one.
            let from_memory = if std::mem::take(&mut self.recheck) {
                None
            } else {
                self.take_recent()
            };
            if from_memory == Some(true) {
                continue;
            }
            match self.read_unless(from_memory == Some(false)).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            if self.done {
                return None;
            }
            self.wait().await;
        }
    }

    /// Takes the events after the cursor from the runner's in-memory list: `Some(true)`
    /// when there were some, `Some(false)` when the list shows nothing after the cursor
    /// yet, `None` when it cannot tell (no runner here, the list does not reach back to
    /// the cursor, or the runner ended before the execution did): then the store answers.
    fn take_recent(&mut self) -> Option<bool> {
        let list = Arc::clone(self.recent.as_ref()?);
        let recent = list.lock().unwrap_or_else(|e| e.into_inner());
        if self.signal.is_none() && !recent.back().is_some_and(Event::is_final) {
            // The runner stopped short of the end (shutdown, a lost lease): whatever
            // comes next is appended elsewhere.
            drop(recent);
            self.recent = None;
            return None;
        }
        let want = self.cursor + 1;
        if recent.back().is_some_and(|e| e.is_final() && e.seq < want) {
            // The execution ended at or before the cursor.
            self.done = true;
            return Some(false);
        }
        if recent.front()?.seq > want {
            return None;
        }
        let mut next = want;
        for event in recent.iter().filter(|e| e.seq >= want) {
            if event.seq != next {
                break;
            }
            self.pending.push_back(event.clone());
            next += 1;
        }
        if next > want {
            Some(true)
        } else if recent.back().is_some_and(|e| e.seq < want) {
            Some(false)
        } else {
            None
        }
    }

    /// `read`, unless the runner's list already showed nothing new (`Ok(false)`).
    async fn read_unless(&mut self, nothing_new: bool) -> Result<bool, ExecutorError> {
        if nothing_new {
            return Ok(false);
        }
        self.read().await
    }

    /// Reads the next batch; `Ok(true)` when there is something to hand out. With
    /// nothing new, ends the stream if the execution finished at or before the cursor
    /// (a watcher that asked for `after_seq` past the end).
    async fn read(&mut self) -> Result<bool, ExecutorError> {
        let store = &self.engine.store;
        let events = store
            .events_after(&self.execution_id, self.cursor, EVENT_BATCH)
            .await?;
        if !events.is_empty() {
            self.pending.extend(events);
            return Ok(true);
        }
        match store.get_execution(&self.execution_id).await? {
            None => Err(ExecutorError::NotFound(format!(
                "execution {}",
                self.execution_id
            ))),
            Some(r) if r.status.is_finished() && r.last_seq <= self.cursor => {
                self.done = true;
                Ok(false)
            }
            Some(r) => {
                if self.signal.is_none() {
                    // Nobody runs it here: if nobody runs it anywhere (its runner's start
                    // was lost), this watcher has it adopted rather than wait forever.
                    self.engine.adopt_if_orphaned(&r).await?;
                    self.follow_runner();
                }
                Ok(false)
            }
        }
    }

    /// Follows the execution's runner in this process, if one has started since.
    fn follow_runner(&mut self) {
        if let Some(live) = self.engine.live(&self.execution_id) {
            self.signal = Some(live.seq.subscribe());
            self.recent = Some(Arc::clone(&live.recent));
        }
    }

    async fn wait(&mut self) {
        let shutdown = self.engine.shutdown.clone();
        match &mut self.signal {
            Some(signal) => {
                tokio::select! {
                    changed = signal.changed() => {
                        // The runner ended (its sender is gone): rely on re-reads only.
                        if changed.is_err() {
                            self.signal = None;
                        }
                    }
                    () = tokio::time::sleep(WATCH_RECHECK) => self.recheck = true,
                    () = shutdown.cancelled() => {}
                }
            }
            None => {
                // Not run here (or no longer): another replica may be appending.
                tokio::select! {
                    () = tokio::time::sleep(WATCH_POLL) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
}

/// Locks `mutex`, through a poisoning (its data are plain lists).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many committed events an execution's runner keeps for local watchers.
const RECENT: usize = 64;

impl Live {
    /// Records an event this process committed, then tells the watchers.
    pub(super) fn committed(&self, event: &Event) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            // Concurrent nodes commit in seq order but may get here in another.
            let at = recent.partition_point(|e| e.seq < event.seq);
            if recent.get(at).is_none_or(|e| e.seq != event.seq) {
                recent.insert(at, event.clone());
            }
            while recent.len() > RECENT {
                recent.pop_front();
            }
        }
        self.seq.send_replace(event.seq);
    }
}
