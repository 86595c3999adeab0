-- Pipelines (DESIGN §5.3): every version of every definition, the circuit breakers of
-- pipeline nodes (their state survives a restart), and the definition an execution runs,
-- fixed when it starts so that updates and deletes never change a running execution.

CREATE TABLE pipelines (
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    definition TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (id, version)
);

CREATE TABLE breakers (
    pipeline_id          TEXT NOT NULL,
    node_id              TEXT NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    opened_ms            INTEGER,
    PRIMARY KEY (pipeline_id, node_id)
);

ALTER TABLE executions ADD COLUMN pipeline TEXT;

-- Retention finds finished executions by their finish time.
CREATE INDEX executions_finished ON executions (finished_ms) WHERE finished_ms IS NOT NULL;
