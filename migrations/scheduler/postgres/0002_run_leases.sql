-- Owner leases on runs in flight (DESIGN §4.5): the replica that drives a run's dispatch
-- holds it until `lease_until_ms` and renews it by heartbeat; an expired lease lets
-- another replica adopt the run. `lease_epoch` grows with every take-over and fences the
-- ledger writes of a driver that lost the run.

ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until_ms BIGINT;
ALTER TABLE runs ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;

CREATE INDEX runs_leases ON runs (lease_until_ms) WHERE status IN ('PENDING', 'RUNNING');

-- The scheduler replicas alive: each renews its row with its leases. A replica that
-- starts while others are alive counts no fire as missed (they were firing).
CREATE TABLE replicas (
    id             TEXT PRIMARY KEY,
    alive_until_ms BIGINT NOT NULL
);
