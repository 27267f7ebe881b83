-- Lock order, for every statement in this directory (it is what keeps them free of
-- deadlocks): a pending row is locked before the objects row with the same id; pending
-- rows are locked in ascending object_id or with SKIP LOCKED; expiry locks only with
-- SKIP LOCKED, so it never waits on anyone.

-- name: InsertCallbacks :copyfrom
-- The group commit: every callback that arrived while the previous commit was in
-- flight goes in one COPY, one transaction.
INSERT INTO inbox (callback_id, received_at, object_ids) VALUES ($1, $2, $3);

-- name: ReplayCallback :batchone
-- Spool replay. A callback may already be here (its commit succeeded but the reply was
-- lost, so it was spooled too): the unique callback id makes it count once. Returns
-- the id only when the row is new.
INSERT INTO inbox (callback_id, received_at, object_ids)
VALUES (@callback_id, @received_at, @object_ids)
ON CONFLICT (callback_id) DO NOTHING
RETURNING callback_id;

-- name: MarkSpoolReplayed :execrows
-- Recorded in the same transaction as the replayed rows: a spool file whose replay
-- committed but which was not yet removed when the process died is recognised and
-- removed without being replayed twice.
INSERT INTO spool_replays (segment_id) VALUES (@segment_id)
ON CONFLICT (segment_id) DO NOTHING;

-- name: ForgetSpoolReplays :execrows
DELETE FROM spool_replays WHERE replayed_at < @before;

-- name: MergeInbox :one
-- Drains up to @max_callbacks inbox rows into pending in one statement, all or
-- nothing: expands the ids, keeps the newest receipt per id, upserts in ascending id
-- order (the lock order), deletes the inbox rows. Many callbacks naming one object
-- become one pending row here: this is where coalescing happens, off the reply path.
--
-- The WHERE on the upsert skips receipts that are not newer: no dead tuple for them.
--
-- refreshed: an object that is online as of its latest lookup and is named by a newer
-- callback takes the newer receipt as last_seen now, not when its next lookup returns,
-- so the row cannot expire in between. It reads from upserted, whose rows are already
-- locked, so each objects row is locked after its pending row: the lock order holds.
WITH claimed AS (
    DELETE FROM inbox
    WHERE callback_id IN (
        SELECT i.callback_id FROM inbox i
        ORDER BY i.callback_id
        LIMIT @max_callbacks
        FOR UPDATE SKIP LOCKED
    )
    RETURNING received_at, object_ids
), merged AS (
    SELECT id, max(claimed.received_at) AS received_at
    FROM claimed, unnest(claimed.object_ids) AS id
    GROUP BY id
), upserted AS (
    INSERT INTO pending (object_id, received_at)
    SELECT merged.id, merged.received_at FROM merged
    ORDER BY merged.id
    ON CONFLICT (object_id) DO UPDATE
        SET received_at = excluded.received_at
        WHERE pending.received_at < excluded.received_at
    RETURNING object_id, received_at
), refreshed AS (
    UPDATE objects o
    SET last_seen = upserted.received_at
    FROM upserted
    WHERE o.id = upserted.object_id AND o.last_seen < upserted.received_at
    RETURNING o.id
)
SELECT (SELECT count(*) FROM claimed)::bigint   AS callbacks,
       (SELECT count(*) FROM merged)::bigint    AS ids,
       (SELECT count(*) FROM upserted)::bigint  AS changed,
       (SELECT count(*) FROM refreshed)::bigint AS refreshed;
