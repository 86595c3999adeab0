-- The executor's tables (PostgreSQL), in the schema `executor` (the service sets
-- search_path; its migration history lives there too). The same tables as the SQLite
-- migrations 0001-0003, in one file: this backend has no history before them. Times are
-- BIGINT milliseconds since the Unix epoch, UTC, always passed in by the service (SQL never
-- calls now()). JSON columns hold text, as in SQLite, so both backends share the row
-- codecs. Ids compare and sort bytewise (COLLATE "C"), as SQLite's TEXT does, so pages
-- and "newest first" do not depend on the database's locale.

-- One row per execution, stored under a unique idempotency key: the unique constraint
-- decides concurrent creates of one key.
CREATE TABLE executions (
    id               TEXT COLLATE "C" NOT NULL PRIMARY KEY, -- UUIDv7: sorts by creation time
    idempotency_key  TEXT    NOT NULL UNIQUE,
    fingerprint      TEXT    NOT NULL,             -- sha256 (hex) of the request's action, deadline, origin
    action           TEXT    NOT NULL,             -- JSON (proto3 JSON of almanac.executor.v1.Action)
    origin           TEXT,                         -- JSON (proto3 JSON of Origin), NULL when absent
    schedule_id      TEXT COLLATE "C" NOT NULL DEFAULT '', -- copied from origin, for filtering
    deadline_ms      BIGINT,
    status           TEXT    NOT NULL,             -- PENDING RUNNING SUCCEEDED FAILED TIMED_OUT CANCELLED
    result           TEXT,                         -- JSON
    error            TEXT    NOT NULL DEFAULT '',
    retryable        BOOLEAN NOT NULL DEFAULT FALSE,
    cancel_requested TEXT,                         -- NULL, GRACEFUL or TERMINATE
    cancel_reason    TEXT    NOT NULL DEFAULT '',
    created_ms       BIGINT  NOT NULL,
    started_ms       BIGINT,
    finished_ms      BIGINT,
    last_seq         BIGINT  NOT NULL DEFAULT 0,   -- appends lock this row, so seqs stay dense
    pipeline         TEXT                          -- JSON: the definition a pipeline execution runs
);

CREATE INDEX executions_by_status ON executions (status, id);
CREATE INDEX executions_by_schedule ON executions (schedule_id, id);
-- Retention finds finished executions by their finish time.
CREATE INDEX executions_finished ON executions (finished_ms) WHERE finished_ms IS NOT NULL;

-- The append-only event log: a dense seq from 1 per execution.
CREATE TABLE events (
    execution_id TEXT COLLATE "C" NOT NULL REFERENCES executions (id),
    seq          BIGINT  NOT NULL,
    at_ms        BIGINT  NOT NULL,
    payload      TEXT    NOT NULL,                 -- JSON
    PRIMARY KEY (execution_id, seq)
);

-- One row per node attempt (a single action is the one node "action").
CREATE TABLE node_runs (
    execution_id TEXT COLLATE "C" NOT NULL REFERENCES executions (id),
    node_id      TEXT    NOT NULL,
    attempt      BIGINT  NOT NULL,
    kind         TEXT    NOT NULL,
    status       TEXT    NOT NULL,                 -- PENDING RUNNING SUCCEEDED FAILED SKIPPED CANCELLED TIMED_OUT
    input        TEXT,                             -- JSON
    output       TEXT,                             -- JSON
    error        TEXT    NOT NULL DEFAULT '',
    retryable    BOOLEAN NOT NULL DEFAULT FALSE,
    started_ms   BIGINT,
    finished_ms  BIGINT,
    PRIMARY KEY (execution_id, node_id, attempt)
);

-- run_task: one task per (execution, node, try of the retry policy); the id is derived
-- from them, so a resumed node attempt re-attaches to its task. Claims pick the oldest
-- available task with FOR UPDATE SKIP LOCKED, so several executors share a queue.
CREATE TABLE tasks (
    id                   TEXT COLLATE "C" NOT NULL PRIMARY KEY, -- "{execution_id}/{node_id}/{try_number}"
    execution_id         TEXT COLLATE "C" NOT NULL REFERENCES executions (id),
    node_id              TEXT    NOT NULL,
    try_number           BIGINT  NOT NULL,
    queue                TEXT    NOT NULL,
    payload              TEXT    NOT NULL,             -- JSON object
    idempotency_key      TEXT    NOT NULL,
    origin               TEXT,                         -- JSON (proto3 JSON of Origin)
    deadline_ms          BIGINT,                       -- the execution's deadline
    status               TEXT    NOT NULL,             -- QUEUED LEASED COMPLETED FAILED CANCELLED TIMED_OUT
    deliveries           BIGINT  NOT NULL DEFAULT 0,   -- leases given so far
    max_deliveries       BIGINT  NOT NULL,
    lease_id             TEXT,                         -- the current (or last) lease
    worker_id            TEXT,                         -- who holds (or held) it
    lease_expires_ms     BIGINT,                       -- a heartbeat moves it
    heartbeat_timeout_ms BIGINT  NOT NULL,
    schedule_to_start_ms BIGINT,                       -- NULL: no limit on waiting in the queue
    start_to_close_ms    BIGINT,                       -- NULL: no limit on one delivery
    created_ms           BIGINT  NOT NULL,
    started_ms           BIGINT,                       -- first delivery
    leased_ms            BIGINT,                       -- current delivery
    close_deadline_ms    BIGINT,                       -- leased_ms + start_to_close_ms
    ended_ms             BIGINT,
    result               TEXT,                         -- JSON, when COMPLETED
    error                TEXT    NOT NULL DEFAULT '',
    retryable            BOOLEAN NOT NULL DEFAULT FALSE
);

-- Claims: the oldest available task of the polled queues.
CREATE INDEX tasks_by_queue ON tasks (queue, status, created_ms);
-- The start-up sweep: open tasks of executions that have finished.
CREATE INDEX tasks_by_status ON tasks (status, execution_id);
-- Retention deletes the tasks of an execution.
CREATE INDEX tasks_by_execution ON tasks (execution_id);

-- A command's process group while it runs (see the SQLite migration 0002): the pgid, the
-- leader's start time in clock ticks after boot and the kernel's boot id.
CREATE TABLE process_groups (
    pgid         INTEGER NOT NULL,
    start_time   BIGINT  NOT NULL,
    boot_id      TEXT    NOT NULL,
    execution_id TEXT    NOT NULL,
    node_id      TEXT    NOT NULL,
    program      TEXT    NOT NULL,
    recorded_ms  BIGINT  NOT NULL,
    PRIMARY KEY (pgid, start_time)
);

-- Pipelines (DESIGN §5.3): every version of every definition.
CREATE TABLE pipelines (
    id         TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    definition TEXT   NOT NULL,                    -- JSON (proto3 JSON of Pipeline)
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (id, version)
);

-- The circuit breakers of pipeline nodes; a failure counts in one upsert.
CREATE TABLE breakers (
    pipeline_id          TEXT   NOT NULL,
    node_id              TEXT   NOT NULL,
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    opened_ms            BIGINT,
    PRIMARY KEY (pipeline_id, node_id)
);
