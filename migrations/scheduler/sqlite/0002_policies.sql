-- The policies of DESIGN §4.4: failures in a row and buffer overruns per schedule,
-- cancellation requests on runs, and the on_failure / on_recovery notification a run
-- owes (sent through the executor under the key "{run_id}/on_failure" or
-- "{run_id}/on_recovery"; PENDING until the executor says how it ended).

ALTER TABLE schedules ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE schedules ADD COLUMN buffer_overruns INTEGER NOT NULL DEFAULT 0;

ALTER TABLE runs ADD COLUMN cancel_requested TEXT;
ALTER TABLE runs ADD COLUMN notification TEXT;
ALTER TABLE runs ADD COLUMN notification_status TEXT;
ALTER TABLE runs ADD COLUMN notification_error TEXT;

CREATE INDEX runs_buffered ON runs (schedule_id, nominal_ms) WHERE status = 'BUFFERED';
CREATE INDEX runs_notifications ON runs (id) WHERE notification_status = 'PENDING';
