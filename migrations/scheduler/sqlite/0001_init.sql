-- The scheduler's tables (DESIGN §4.3). Times are integer milliseconds, UTC; JSON
-- columns hold the spec, the policy and the action (canonical proto3 JSON).

CREATE TABLE schedules (
    id                TEXT PRIMARY KEY,
    display_name      TEXT NOT NULL DEFAULT '',
    description       TEXT NOT NULL DEFAULT '',
    spec              TEXT NOT NULL,
    action            TEXT NOT NULL,
    policy            TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('ACTIVE', 'PAUSED', 'COMPLETED')),
    pause_note        TEXT,
    pause_identity    TEXT,
    paused_ms         INTEGER,
    next_fire_ms      INTEGER,
    run_count         INTEGER NOT NULL DEFAULT 0,
    version           INTEGER NOT NULL,
    request_id        TEXT UNIQUE,
    completion_reason TEXT,
    created_ms        INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL
);

CREATE INDEX schedules_due ON schedules (next_fire_ms) WHERE state = 'ACTIVE';
CREATE INDEX schedules_state ON schedules (state, id);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    schedule_id       TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    nominal_ms        INTEGER NOT NULL,
    trigger           TEXT NOT NULL CHECK (trigger IN ('SCHEDULED', 'RECOVERY', 'MANUAL', 'BACKFILL')),
    status            TEXT NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    dispatch_after_ms INTEGER,
    started_ms        INTEGER,
    finished_ms       INTEGER,
    error             TEXT,
    result            TEXT,
    reason            TEXT,
    coalesced_into    TEXT,
    missed_first_ms   INTEGER,
    missed_last_ms    INTEGER,
    missed_count      INTEGER,
    request_id        TEXT,
    action            TEXT,
    created_ms        INTEGER NOT NULL
);

-- One fire, one row: the deduplication is this constraint, not a time window.
CREATE UNIQUE INDEX runs_fire ON runs (schedule_id, nominal_ms) WHERE trigger <> 'MANUAL';
CREATE UNIQUE INDEX runs_request ON runs (schedule_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX runs_by_schedule ON runs (schedule_id, nominal_ms DESC, id DESC);
CREATE INDEX runs_in_flight ON runs (schedule_id, status) WHERE status IN ('PENDING', 'RUNNING');

CREATE TABLE attempts (
    run_id        TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    execution_key TEXT NOT NULL UNIQUE,
    execution_id  TEXT,
    deadline_ms   INTEGER,
    last_seq      INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,
    error         TEXT,
    retryable     INTEGER NOT NULL DEFAULT 0,
    started_ms    INTEGER,
    finished_ms   INTEGER,
    PRIMARY KEY (run_id, number)
);
