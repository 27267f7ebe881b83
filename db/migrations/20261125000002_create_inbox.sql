-- migrate:up

-- One row per accepted callback: the cheapest durable write (MEASURED.md), and the
-- only write on the reply path. A 2xx means the callback is in a committed row here
-- (or in an fsynced spool record that will be replayed into a row here).
--
-- callback_id is minted by the service when the request arrives (UUIDv7, so that
-- inserts land at the right edge of the index). It makes spool replay idempotent:
-- replay inserts with ON CONFLICT (callback_id) DO NOTHING.
--
-- The merger drains this table in callback_id order and deletes what it merged, so the
-- table stays near empty; vacuum it aggressively so the claim scan never wades through
-- dead tuples.
CREATE TABLE inbox (
    callback_id uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL,
    object_ids  bigint[]    NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

-- migrate:down
DROP TABLE inbox;
