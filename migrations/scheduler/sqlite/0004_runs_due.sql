-- Runs in flight by the time they may be sent: recovery and the dispatcher's backlog
-- read the oldest first, a bounded page at a time, without sorting every run in flight.
CREATE INDEX runs_due ON runs (dispatch_after_ms, id) WHERE status IN ('PENDING', 'RUNNING');
