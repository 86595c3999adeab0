-- run_task: the tasks of queues (one row per try of a node, leased to workers) and the
-- process groups of commands (recorded before they are waited on, so that a restart after
-- a crash kills what the crashed process left behind). Times are integer milliseconds
-- since the Unix epoch, UTC, passed in by the service.

-- One task per (execution, node, try of the retry policy): the id is derived from them,
-- so a resumed node attempt re-attaches to its task instead of creating another.
CREATE TABLE tasks (
    id                   TEXT    NOT NULL PRIMARY KEY, -- "{execution_id}/{node_id}/{try_number}"
    execution_id         TEXT    NOT NULL REFERENCES executions (id),
    node_id              TEXT    NOT NULL,
    try_number           INTEGER NOT NULL,
    queue                TEXT    NOT NULL,
    payload              TEXT    NOT NULL,             -- JSON object
    idempotency_key      TEXT    NOT NULL,
    origin               TEXT,                         -- JSON (proto3 JSON of Origin)
    deadline_ms          INTEGER,                      -- the execution's deadline
    status               TEXT    NOT NULL,             -- QUEUED LEASED COMPLETED FAILED CANCELLED TIMED_OUT
    deliveries           INTEGER NOT NULL DEFAULT 0,   -- leases given so far
    max_deliveries       INTEGER NOT NULL,
    lease_id             TEXT,                         -- the current (or last) lease
    worker_id            TEXT,                         -- who holds (or held) it
    lease_expires_ms     INTEGER,                      -- a heartbeat moves it
    heartbeat_timeout_ms INTEGER NOT NULL,
    schedule_to_start_ms INTEGER,                      -- NULL: no limit on waiting in the queue
    start_to_close_ms    INTEGER,                      -- NULL: no limit on one delivery
    created_ms           INTEGER NOT NULL,
    started_ms           INTEGER,                      -- first delivery
    leased_ms            INTEGER,                      -- current delivery
    close_deadline_ms    INTEGER,                      -- leased_ms + start_to_close_ms
    ended_ms             INTEGER,
    result               TEXT,                         -- JSON, when COMPLETED
    error                TEXT    NOT NULL DEFAULT '',
    retryable            INTEGER NOT NULL DEFAULT 0
);

-- Claims: the oldest available task of the polled queues.
CREATE INDEX tasks_by_queue ON tasks (queue, status, created_ms);
-- The start-up sweep: open tasks of executions that have finished.
CREATE INDEX tasks_by_status ON tasks (status, execution_id);

-- A command's process group while it runs. `start_time` is the leader's start time in
-- clock ticks after boot (/proc/<pid>/stat field 22) and `boot_id` the kernel's boot id:
-- together with the pgid they tell our group from a later one that reuses the number.
CREATE TABLE process_groups (
    pgid         INTEGER NOT NULL,
    start_time   INTEGER NOT NULL,
    boot_id      TEXT    NOT NULL,
    execution_id TEXT    NOT NULL,
    node_id      TEXT    NOT NULL,
    program      TEXT    NOT NULL,
    recorded_ms  INTEGER NOT NULL,
    PRIMARY KEY (pgid, start_time)
) WITHOUT ROWID;
