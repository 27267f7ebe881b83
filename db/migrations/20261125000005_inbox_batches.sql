-- migrate:up

-- First of all, lock the old table against writers: during a rolling upgrade, replicas
-- of the old version still insert into inbox. Without the lock, a callback they commit
-- after the copy below took its snapshot and before DROP TABLE is acknowledged and then
-- dropped with the table. With it, their inserts wait for this transaction and then
-- fail (the table is gone), and an old replica spools what it could not commit, as in
-- any database outage. The lock is held only for the copy: milliseconds for the few
-- rows a running service leaves unmerged.
LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE;

-- One inbox row per group commit instead of one per callback.
--
-- Measured on the 2-core machine (64 senders, 200 ids each, merging paused): one row per
-- callback with the ids as bigint[] took 6.2k callbacks/s with commits of 4.5 ms; one row
-- per commit holding all of its callbacks in a compact bytea took 9.1k/s with commits of
-- 2.4 ms and a third less Postgres CPU. A bigint[] costs Postgres a function call per
-- element to receive and its 8 bytes each to store and log; the bytea is copied as it is.
-- Per row, the heap tuple, the primary key entry, and later the delete and its vacuum
-- are paid once per commit, not once per callback.
--
-- data is the batch in the service's encoding (internal/store/batch.go): for each
-- callback its id, its receipt time and its ids, sorted and delta-coded as varints
-- (about one byte per id for ids that close together). Postgres never looks inside it:
-- the merger decodes batches in Go and upserts the distinct ids into pending.
--
-- batch_id is minted per commit (UUIDv7, so inserts land at the right edge of the
-- index). received_at is the oldest receipt in the batch, for the inbox age metric.
-- callbacks and ids are counts, so that the merger can bound the ids it takes in one pass
-- without decoding.
--
-- STORAGE EXTERNAL: never try to compress (varints barely compress, and trying costs
-- more CPU than it saves: 190 vs 270 us per 2 kB insert). toast_tuple_target 8160: keep
-- batches of up to ~8 kB in the heap page rather than in TOAST chunks (a batch of 40
-- callbacks of 200 ids from 0..99 is ~5 kB); 120 vs 190 us per insert.
--
-- The merger drains this table in batch_id order and deletes what it merged, so it stays
-- near empty; vacuum it aggressively so the claim scan never wades through dead tuples.
CREATE TABLE inbox_batches (
    batch_id    uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL,
    callbacks   integer     NOT NULL CHECK (callbacks >= 0),
    ids         integer     NOT NULL CHECK (ids >= 0),
    data        bytea       NOT NULL
) WITH (
    toast_tuple_target = 8160,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE inbox_batches ALTER COLUMN data SET STORAGE EXTERNAL;

-- A batch the merger cannot decode (a bug, or a hand edit) is moved here in the merge's
-- own transaction, with the reason, instead of failing every pass behind it: the rest
-- of the inbox keeps flowing, and the callbacks in it are kept for a human, not
-- dropped. The service never reads this table; callback_inbox_batches_quarantined_total
-- counts what lands in it.
CREATE TABLE inbox_quarantine (
    batch_id       uuid        PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    callbacks      integer     NOT NULL,
    ids            integer     NOT NULL,
    data           bytea       NOT NULL,
    error          text        NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);

-- Callbacks accepted by an older version and not merged yet become one batch each, in
-- encoding version 0 (one callback, fixed-width fields: what SQL can build). The
-- callback id becomes the batch id. Nothing accepted is dropped by an upgrade.
INSERT INTO inbox_batches (batch_id, received_at, callbacks, ids, data)
SELECT i.callback_id, i.received_at, 1, cardinality(i.object_ids),
       '\x00'::bytea
       || uuid_send(i.callback_id)
       || int8send((extract(epoch FROM i.received_at) * 1000000)::bigint)
       || coalesce((SELECT string_agg(int8send(u.id), ''::bytea ORDER BY u.ord)
                    FROM unnest(i.object_ids) WITH ORDINALITY AS u(id, ord)), ''::bytea)
FROM inbox i;

DROP TABLE inbox;

-- migrate:down

-- Only an empty inbox can go back: the old layout cannot be built from batches in SQL.
-- Stop intake and let the merger drain the inbox first; this refuses rather than drops.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM inbox_batches) THEN
        RAISE EXCEPTION 'inbox_batches is not empty: let the service merge it before migrating down';
    END IF;
END
$$;
DROP TABLE inbox_quarantine;
DROP TABLE inbox_batches;
CREATE TABLE inbox (
    callback_id uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL,
    object_ids  bigint[]    NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
