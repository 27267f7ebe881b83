-- migrate:up

-- One row per inbox batch the merger has taken, written in the merge's own transaction.
-- A batch can be made durable twice: its commit timed out but committed, so the
-- committer spooled it as well, under the same batch_id. Spool replay skips a batch_id
-- found here, so the spooled copy is not merged a second time (which would look its
-- objects up again and, with two replicas, could bring back a row with an old last_seen).
--
-- How long an id must be remembered, and why deleting by batch_id is enough: see
-- Store.ForgetMergedBatches (internal/store/inbox.go). Rows are deleted by primary key
-- range (batch ids are UUIDv7, minted before the batch's write), so no second index.
-- Inserted and deleted at the merge rate: vacuum it as eagerly as inbox_batches.
CREATE TABLE merged_batches (
    batch_id  uuid        PRIMARY KEY,
    merged_at timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000
);

-- migrate:down
DROP TABLE merged_batches;
