-- Lock order, for every statement in this directory (it is what keeps them free of
-- deadlocks): a pending row is locked before the objects row with the same id; pending
-- rows are locked in ascending object_id or with SKIP LOCKED; expiry locks only with
-- SKIP LOCKED, so it never waits on anyone.

-- name: InsertBatch :exec
-- The group commit: every callback that arrived while the previous commit was in
-- flight, in one row (encoded by internal/store/batch.go), one transaction. Spool
-- replay uses it too.
INSERT INTO inbox_batches (batch_id, received_at, callbacks, ids, data)
VALUES (@batch_id, @received_at, @callbacks, @ids, @data);

-- name: InsertReplayedBatch :execrows
-- Spool replay of a batch under the id the committer minted for it. A copy of the batch
-- may be in the inbox already (the commit that timed out did commit): then it is not
-- inserted again. It may also have been merged already: then merged_batches names it.
-- One gap is left to DropMergedReplays: a merger that took the inbox copy and has not
-- committed yet. Its delete makes this insert wait on the primary key and, once it
-- commits, succeed, while NOT EXISTS was read before that commit.
INSERT INTO inbox_batches (batch_id, received_at, callbacks, ids, data)
SELECT @batch_id::uuid, @received_at::timestamptz, @callbacks::integer, @ids::integer, @data::bytea
WHERE NOT EXISTS (SELECT 1 FROM merged_batches m WHERE m.batch_id = @batch_id::uuid)
ON CONFLICT (batch_id) DO NOTHING;

-- name: DropMergedReplays :one
-- Run after the InsertReplayedBatch statements of a segment, in the same transaction:
-- a new statement, so it sees every merge that committed while they waited (see
-- above), and removes the batches those merges had already taken. Returns how many
-- callbacks it removed.
WITH dropped AS (
    DELETE FROM inbox_batches b
    USING merged_batches m
    WHERE b.batch_id = m.batch_id AND b.batch_id = ANY(@batch_ids::uuid[])
    RETURNING b.callbacks
)
SELECT coalesce(sum(dropped.callbacks), 0)::bigint AS callbacks FROM dropped;

-- name: RememberMergedBatches :exec
-- Called by a merge pass, in its transaction, with every batch id ClaimBatches took,
-- quarantined ones too: see merged_batches. ON CONFLICT only so that a batch id that did
-- get into the inbox twice (which replay prevents) cannot fail every later merge.
INSERT INTO merged_batches (batch_id)
SELECT unnest(@batch_ids::uuid[])
ON CONFLICT (batch_id) DO NOTHING;

-- name: ForgetMergedBatches :execrows
-- @before_id is the smallest UUIDv7 of the cutoff instant: ids minted before it go.
DELETE FROM merged_batches WHERE batch_id < @before_id::uuid;

-- name: MarkSpoolReplayed :execrows
-- Recorded in the same transaction as the replayed rows: a spool file whose replay
-- committed but which was not yet removed when the process died is recognised and
-- removed without being replayed twice.
INSERT INTO spool_replays (segment_id) VALUES (@segment_id)
ON CONFLICT (segment_id) DO NOTHING;

-- name: ForgetSpoolReplays :execrows
DELETE FROM spool_replays WHERE replayed_at < @before;

-- name: ClaimBatches :many
-- A merge pass takes the oldest batches (SKIP LOCKED: mergers of other replicas take
-- others) and deletes them; the caller decodes them and writes their ids to pending
-- with MergePending in the same transaction, so a batch leaves the inbox only together
-- with the pending rows it became. At most @max_batches rows, and no more rows once
-- @max_ids ids are taken (the row that crosses the bound is still taken, so a pass
-- always progresses): a pass's memory stays bounded whatever the callbacks hold. Rows
-- locked but not taken are released at commit, for the next pass.
WITH locked AS (
    SELECT b.batch_id, b.ids FROM inbox_batches b
    ORDER BY b.batch_id
    LIMIT @max_batches
    FOR UPDATE SKIP LOCKED
), taken AS (
    SELECT w.batch_id FROM (
        SELECT locked.batch_id, sum(locked.ids) OVER (ORDER BY locked.batch_id) - locked.ids AS ids_before
        FROM locked
    ) w
    WHERE w.ids_before < @max_ids::bigint
)
DELETE FROM inbox_batches
WHERE batch_id IN (SELECT taken.batch_id FROM taken)
RETURNING batch_id, received_at, callbacks, ids, data;

-- name: QuarantineBatch :exec
-- A batch taken by ClaimBatches that cannot be decoded: kept aside, in the same
-- transaction, so that it neither blocks the merge nor is lost.
INSERT INTO inbox_quarantine (batch_id, received_at, callbacks, ids, data, error)
VALUES (@batch_id, @received_at, @callbacks, @ids, @data, @error)
ON CONFLICT (batch_id) DO NOTHING;

-- name: MergePending :one
-- The rest of a merge pass: @ids are distinct, each with the newest receipt naming it
-- among the batches taken (deduplicated by the caller). Upserts in ascending id order
-- (the lock order). Many callbacks naming one object become one pending row here: this
-- is where coalescing happens, off the reply path.
--
-- The WHERE on the upsert skips receipts that are not newer: no dead tuple for them.
--
-- refreshed: an object that is online as of its latest lookup and is named by a newer
-- callback takes the newer receipt as last_seen now, not when its next lookup returns,
-- so the row cannot expire in between. It reads from upserted, whose rows are already
-- locked, so each objects row is locked after its pending row: the lock order holds.
WITH merged AS (
    SELECT m.id, m.received_at FROM (
        SELECT unnest(@ids::bigint[]) AS id, unnest(@received_ats::timestamptz[]) AS received_at
    ) m
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
SELECT (SELECT count(*) FROM upserted)::bigint  AS changed,
       (SELECT count(*) FROM refreshed)::bigint AS refreshed;
