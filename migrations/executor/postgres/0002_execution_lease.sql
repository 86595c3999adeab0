-- Execution leases (DESIGN §8): several executors share one database. The replica
-- running an execution owns it under a lease that its heartbeat renews; an unfinished
-- execution whose lease expired is adopted by another replica, which bumps
-- `lease_epoch`. Every write a runner makes carries the epoch it holds and applies only
-- while the row still has it (fencing), so a replica that froze past its lease cannot
-- write after the adopter. Times are BIGINT milliseconds from the service's clock.

ALTER TABLE executions ADD COLUMN owner TEXT;             -- the replica id holding the lease
ALTER TABLE executions ADD COLUMN lease_until_ms BIGINT;  -- NULL or past: anyone may adopt it
ALTER TABLE executions ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;

-- The adoption sweep: unfinished executions by lease expiry.
CREATE INDEX executions_by_lease ON executions (lease_until_ms)
    WHERE status IN ('PENDING', 'RUNNING');
