-- The executor's tables (SQLite). Times are integer milliseconds since the Unix epoch, UTC,
-- always passed in by the service (never computed by SQL). JSON columns hold text.

-- One row per execution, stored under a unique idempotency key.
CREATE TABLE executions (
    id               TEXT    NOT NULL PRIMARY KEY, -- UUIDv7: sorts by creation time
    idempotency_key  TEXT    NOT NULL UNIQUE,
    fingerprint      TEXT    NOT NULL,             -- sha256 (hex) of the request's action, deadline, origin
    action           TEXT    NOT NULL,             -- JSON (proto3 JSON of almanac.executor.v1.Action)
    origin           TEXT,                         -- JSON (proto3 JSON of Origin), NULL when absent
    schedule_id      TEXT    NOT NULL DEFAULT '',  -- copied from origin, for filtering
    deadline_ms      INTEGER,
    status           TEXT    NOT NULL,             -- PENDING RUNNING SUCCEEDED FAILED TIMED_OUT CANCELLED
    result           TEXT,                         -- JSON
    error            TEXT    NOT NULL DEFAULT '',
    retryable        INTEGER NOT NULL DEFAULT 0,
    cancel_requested TEXT,                         -- NULL, GRACEFUL or TERMINATE
    cancel_reason    TEXT    NOT NULL DEFAULT '',
    created_ms       INTEGER NOT NULL,
    started_ms       INTEGER,
    finished_ms      INTEGER,
    last_seq         INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX executions_by_status ON executions (status, id);
CREATE INDEX executions_by_schedule ON executions (schedule_id, id);

-- The append-only event log: a dense seq from 1 per execution.
CREATE TABLE events (
    execution_id TEXT    NOT NULL REFERENCES executions (id),
    seq          INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL,
    payload      TEXT    NOT NULL,                 -- JSON
    PRIMARY KEY (execution_id, seq)
) WITHOUT ROWID;

-- One row per node attempt (a single action is the one node "action").
CREATE TABLE node_runs (
    execution_id TEXT    NOT NULL REFERENCES executions (id),
    node_id      TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    status       TEXT    NOT NULL,                 -- PENDING RUNNING SUCCEEDED FAILED SKIPPED CANCELLED TIMED_OUT
    input        TEXT,                             -- JSON
    output       TEXT,                             -- JSON
    error        TEXT    NOT NULL DEFAULT '',
    retryable    INTEGER NOT NULL DEFAULT 0,
    started_ms   INTEGER,
    finished_ms  INTEGER,
    PRIMARY KEY (execution_id, node_id, attempt)
) WITHOUT ROWID;
