-- migrate:up

-- One row per object with a lookup to do: the work queue. Many callbacks naming the
-- same object collapse into one row here (the merger keeps the newest receipt).
--
-- Scheduling uses ONE indexed column, due_at, and the database clock (now()), so that
-- replicas with skewed clocks agree on leases:
--   * an unclaimed row is due at due_at (now() when merged, later while backing off);
--   * claiming sets claim_token and moves due_at to the end of the lease, so a row whose
--     worker died becomes due again by itself when the lease runs out, with no sweeper.
-- claimed_received_at is the receipt the lookup in flight answers for. If received_at
-- moves past it while the lookup runs (a newer callback), completion releases the row
-- instead of deleting it, and the object is looked up exactly once more.
-- A result is applied only while claim_token still matches: a worker whose lease ran out
-- and was reclaimed by another cannot write a stale answer.
CREATE TABLE pending (
    object_id           bigint      PRIMARY KEY,
    received_at         timestamptz NOT NULL,
    due_at              timestamptz NOT NULL DEFAULT now(),
    attempts            integer     NOT NULL DEFAULT 0,
    claim_token         uuid,
    claimed_received_at timestamptz
) WITH (
    -- Every row is inserted, claimed (updated) and deleted within seconds: churn is the
    -- normal state. Vacuum on a fixed number of dead rows rather than a fraction of a
    -- table that is small, and leave room on each page for the claim update.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim query walks this index: ORDER BY due_at LIMIT n FOR UPDATE SKIP LOCKED.
CREATE INDEX pending_due_at_idx ON pending (due_at);

-- migrate:down
DROP TABLE pending;
