-- Execution leases (DESIGN §8): the process running an execution owns it under a lease
-- that its heartbeat renews; `lease_epoch` grows by one at every take-over, and every
-- write a runner makes carries the epoch it holds, so a runner that lost its execution
-- cannot write to it any more (fencing). SQLite serves one process, which takes every
-- unfinished execution at start-up; the columns are the same as on PostgreSQL so both
-- backends share the store's contract.

ALTER TABLE executions ADD COLUMN owner TEXT;              -- the replica id holding the lease
ALTER TABLE executions ADD COLUMN lease_until_ms INTEGER;  -- NULL or past: anyone may adopt it
ALTER TABLE executions ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
