-- The scheduler's tables on PostgreSQL (DESIGN §4.3, §8), in the schema `scheduler`
-- (the store sets search_path). The same columns as SQLite's 0001 and 0002 together:
-- times are BIGINT milliseconds, UTC; JSON columns are TEXT holding canonical proto3
-- JSON, as on SQLite. Keys are COLLATE "C" so ids sort byte by byte, as on SQLite, and
-- pagination by id gives the same pages on both backends.

CREATE TABLE schedules (
    id                   TEXT COLLATE "C" PRIMARY KEY,
    display_name         TEXT NOT NULL DEFAULT '',
    description          TEXT NOT NULL DEFAULT '',
    spec                 TEXT NOT NULL,
    action               TEXT NOT NULL,
    policy               TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('ACTIVE', 'PAUSED', 'COMPLETED')),
    pause_note           TEXT,
    pause_identity       TEXT,
    paused_ms            BIGINT,
    next_fire_ms         BIGINT,
    run_count            BIGINT NOT NULL DEFAULT 0,
    version              BIGINT NOT NULL,
    request_id           TEXT UNIQUE,
    completion_reason    TEXT,
    created_ms           BIGINT NOT NULL,
    updated_ms           BIGINT NOT NULL,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    buffer_overruns      BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX schedules_due ON schedules (next_fire_ms) WHERE state = 'ACTIVE';
CREATE INDEX schedules_state ON schedules (state, id);

CREATE TABLE runs (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    schedule_id         TEXT COLLATE "C" NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    nominal_ms          BIGINT NOT NULL,
    trigger             TEXT NOT NULL CHECK (trigger IN ('SCHEDULED', 'RECOVERY', 'MANUAL', 'BACKFILL')),
    status              TEXT NOT NULL,
    attempt             BIGINT NOT NULL DEFAULT 0,
    dispatch_after_ms   BIGINT,
    started_ms          BIGINT,
    finished_ms         BIGINT,
    error               TEXT,
    result              TEXT,
    reason              TEXT,
    coalesced_into      TEXT,
    missed_first_ms     BIGINT,
    missed_last_ms      BIGINT,
    missed_count        BIGINT,
    request_id          TEXT,
    action              TEXT,
    created_ms          BIGINT NOT NULL,
    cancel_requested    TEXT,
    notification        TEXT,
    notification_status TEXT,
    notification_error  TEXT
);

-- One fire, one row: the deduplication is this constraint, not a time window. Two
-- writers of one fire race on it and the loser's INSERT … ON CONFLICT DO NOTHING writes
-- nothing.
CREATE UNIQUE INDEX runs_fire ON runs (schedule_id, nominal_ms) WHERE trigger <> 'MANUAL';
CREATE UNIQUE INDEX runs_request ON runs (schedule_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX runs_by_schedule ON runs (schedule_id, nominal_ms DESC, id DESC);
CREATE INDEX runs_in_flight ON runs (schedule_id, status) WHERE status IN ('PENDING', 'RUNNING');
CREATE INDEX runs_buffered ON runs (schedule_id, nominal_ms) WHERE status = 'BUFFERED';
CREATE INDEX runs_notifications ON runs (id) WHERE notification_status = 'PENDING';

CREATE TABLE attempts (
    run_id        TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    number        BIGINT NOT NULL,
    execution_key TEXT NOT NULL UNIQUE,
    execution_id  TEXT,
    deadline_ms   BIGINT,
    last_seq      BIGINT NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,
    error         TEXT,
    retryable     BOOLEAN NOT NULL DEFAULT FALSE,
    started_ms    BIGINT,
    finished_ms   BIGINT,
    PRIMARY KEY (run_id, number)
);
