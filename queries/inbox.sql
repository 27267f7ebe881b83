-- sqlc: write a parameter that follows an operator or an opening parenthesis with an
-- operator after it as sqlc.arg(name), not @name ("- @x", "(@x * ..."): sqlc misreads
-- @ there as Postgres's prefix operator and edits the query wrongly.
--
-- Lock order, for every statement in this directory (it is what keeps them free of
-- deadlocks): a pending row is locked before the objects row with the same id; pending
-- rows are locked in ascending object_id or with SKIP LOCKED; expiry locks only with
-- SKIP LOCKED, so it never waits on anyone.

-- name: InsertBatch :exec
-- The group commit: every callback that arrived while the previous commit was in
-- flight, in one row (encoded by internal/callback/encoding.go), one transaction. Spool
-- replay uses it too.
INSERT INTO inbox_batches (batch_id, received_at, last_received_at, callbacks, ids, data)
VALUES (@batch_id, @received_at, @last_received_at, @callbacks, @ids, @data);

-- name: InsertReplayedBatches :many
-- Spool replay of many batches in one statement (a segment holds up to tens of
-- thousands of small ones: one round trip each would not fit any deadline), each under
-- the id the committer minted for it. A copy of a batch may be in the inbox already
-- (the commit that timed out did commit): then it is not inserted again. It may also
-- have been merged already: then merged_batches names it. A merger that has only
-- locked the inbox copy leaves it a conflict: nothing inserted. One gap is left to
-- DropMergedReplays: a merger that has deleted the inbox copy and not committed yet.
-- Its delete makes this insert wait on the primary key and, once it commits, succeed,
-- while NOT EXISTS was read before that commit. Returns the batches inserted.
INSERT INTO inbox_batches (batch_id, received_at, last_received_at, callbacks, ids, data)
SELECT r.batch_id, r.received_at, r.last_received_at, r.callbacks, r.ids, r.data
FROM (
    SELECT unnest(@batch_ids::uuid[])                AS batch_id,
           unnest(@received_ats::timestamptz[])      AS received_at,
           unnest(@last_received_ats::timestamptz[]) AS last_received_at,
           unnest(@callbacks::integer[])             AS callbacks,
           unnest(@ids::integer[])                   AS ids,
           unnest(@datas::bytea[])                   AS data
) r
WHERE NOT EXISTS (SELECT 1 FROM merged_batches m WHERE m.batch_id = r.batch_id)
ON CONFLICT (batch_id) DO NOTHING
RETURNING inbox_batches.batch_id, inbox_batches.callbacks;

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
-- Called by a merge pass, in its transaction, with every batch id LockBatches read (all
-- of them are consumed, quarantined ones too): see merged_batches. ON CONFLICT only so that a batch id that did
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

-- name: DropStaleBatches :one
-- Batches whose newest receipt left the window, deleted unread: merging them could not
-- move any row (every receipt in them is older than the cutoff, so no row they name may
-- live on their account). SKIP LOCKED: a batch another merger holds is its business.
-- The range on received_at walks inbox_batches_received_at_idx (received_at <=
-- last_received_at).
WITH stale AS (
    SELECT b.batch_id FROM inbox_batches b
    WHERE b.received_at < @cutoff AND b.last_received_at < @cutoff
    FOR UPDATE SKIP LOCKED
), dropped AS (
    DELETE FROM inbox_batches d
    WHERE d.batch_id IN (SELECT stale.batch_id FROM stale)
    RETURNING d.ids
)
SELECT count(*)::bigint                    AS batches,
       coalesce(sum(dropped.ids), 0)::bigint AS ids
FROM dropped;

-- name: LockBatches :many
-- A merge pass locks the NEWEST batches (SKIP LOCKED: mergers of other replicas take
-- others) and reads them; the caller decodes them, newest first, until its pass holds
-- enough distinct ids, and deletes those it used (DeleteBatches) in the same
-- transaction that writes their ids to pending, so a batch leaves the inbox only
-- together with the pending rows it became. The rest are unlocked at commit, for the
-- next pass. Newest first is adaptive LIFO: with no backlog a pass takes everything
-- and order does not matter; under a backlog the receipts that are worth most (the
-- newest, furthest from leaving the window) are merged first, and the oldest wait,
-- leave the window and are dropped unread by DropStaleBatches.
-- At most max_batches rows, and no more rows once max_ids ids are read (the row that
-- crosses the bound is still read, so a pass always progresses).
WITH locked AS (
    SELECT b.batch_id, b.received_at, b.ids FROM inbox_batches b
    WHERE b.last_received_at >= @cutoff::timestamptz
    ORDER BY b.received_at DESC, b.batch_id DESC
    LIMIT @max_batches
    FOR UPDATE SKIP LOCKED
), taken AS (
    SELECT w.batch_id FROM (
        SELECT locked.batch_id,
               sum(locked.ids) OVER (ORDER BY locked.received_at DESC, locked.batch_id DESC) - locked.ids AS ids_before
        FROM locked
    ) w
    WHERE w.ids_before < @max_ids::bigint
)
SELECT i.batch_id, i.received_at, i.callbacks, i.ids, i.data FROM inbox_batches i
WHERE i.batch_id IN (SELECT taken.batch_id FROM taken)
ORDER BY i.received_at DESC, i.batch_id DESC;

-- name: DeleteBatches :exec
DELETE FROM inbox_batches WHERE batch_id = ANY(@batch_ids::uuid[]);

-- name: PeekBatches :many
-- The early refresh (internal/merge, early.go) reads the batches committed since its
-- last look, oldest first, without locking or taking them: merge passes still take
-- them as ever. Batch ids are UUIDv7, minted when the committer wrote them, so the
-- primary key walks them in the order they were written (a replayed batch keeps its
-- older id and is left to the passes).
SELECT batch_id, received_at, callbacks, ids, data FROM inbox_batches
WHERE batch_id > @after::uuid
ORDER BY batch_id
LIMIT @max_batches;

-- name: KeepBatchRests :exec
-- A pass that took the steady senders' callbacks out of batches it otherwise left to
-- the flood (internal/merge, "the steady lane") writes back what is left of each, in
-- its transaction, under the same batch id: the callbacks taken leave the inbox
-- together with the pending rows they became, and the rest stays, whole, for a later
-- pass. The rows are the pass's, locked FOR UPDATE by LockBatches.
UPDATE inbox_batches b
SET received_at = r.received_at, last_received_at = r.last_received_at,
    callbacks = r.callbacks, ids = r.ids, data = r.data
FROM (
    SELECT unnest(@batch_ids::uuid[])                AS batch_id,
           unnest(@received_ats::timestamptz[])      AS received_at,
           unnest(@last_received_ats::timestamptz[]) AS last_received_at,
           unnest(@callbacks::integer[])             AS callbacks,
           unnest(@ids::integer[])                   AS ids,
           unnest(@datas::bytea[])                   AS data
) r
WHERE b.batch_id = r.batch_id;

-- name: QuarantineBatch :exec
-- A batch taken by ClaimBatches that cannot be decoded: kept aside, in the same
-- transaction, so that it neither blocks the merge nor is lost.
INSERT INTO inbox_quarantine (batch_id, received_at, callbacks, ids, data, error)
VALUES (@batch_id, @received_at, @callbacks, @ids, @data, @error)
ON CONFLICT (batch_id) DO NOTHING;

-- name: MergePending :one
-- The pending half of a merge pass: @ids are distinct, each with the newest receipt
-- naming it among the batches taken (deduplicated by the caller). Many callbacks naming
-- one object become one pending row here: this is where coalescing happens, off the
-- reply path.
--
-- Every id takes the newer receipt if its row has an older one: a waiting or claimed
-- row (a lookup in flight is then run once more), and a done row (the memory of the
-- newest receipt, migration 20261206000001), so that an older receipt merged later
-- changes nothing. Ids with no row are fresh: inserted up to @room (the caller's
-- MAX_PENDING minus the waiting rows, CountWaiting). Beyond the room pending is full:
-- waiting rows ranked below every id of this pass and received before all of them (and
-- not named by it) are evicted, lowest first, as many as the fresh ids need and at most
-- @max_evict (a flood must not turn every pass into a delete and an insert of what the
-- next pass evicts again), and what still does not fit is dropped for capacity
-- (counted by the caller). A done row with a newer receipt is re-armed (one more
-- lookup: a re-check) within the room left after the fresh ids; otherwise it only
-- takes the receipt.
--
-- Which fresh ids get the room when there is not enough: those not only named by a
-- flood first (@handicaps_ms: 0, or how far below its receipt an id of a flood ranks,
-- internal/pace decides), then round robin over the callbacks that named them
-- (@ordinals: an id's place in its callback's turn), then the newest receipts. A sender
-- that names a few new objects now and then gets its share beside one that floods a
-- million: each callback is served in turn, whatever its size. The handicap also ranks
-- a flood's rows below the others' for lookups and for eviction.
--
-- Rank. due_at of a waiting row is its rank: the claim takes the highest first. It is
-- the receipt translated to the database's clock (now() minus the receipt's age on
-- this replica's clock, @now), so skew between replicas never delays a lookup; for a
-- re-check it is @recheck_ms lower: under a backlog, objects not looked up yet go first
-- (a re-checked object's status is known, and if it is online the refresh path keeps
-- its row right without a lookup). A lease or a backoff (due_at in the future) is kept,
-- and so is a rank less than 5 s behind the new one: due_at is indexed, received_at is
-- not, so an update that leaves due_at alone is HOT (no index entries, a third of the
-- WAL), and newest first to within 5 s is plenty.
--
-- One INSERT ... ON CONFLICT for all, in ascending id order (the lock order): it
-- decides insert or update against the latest committed row, not the snapshot, so an
-- object whose row a lookup result changes meanwhile still takes the newer receipt.
-- No objects row is touched here: RefreshObjects runs on its own.
WITH arg AS (
    SELECT @room::bigint AS room,
           @max_evict::bigint AS max_evict,
           @now::timestamptz AS now,
           (sqlc.arg(recheck_ms)::bigint * interval '1 millisecond')::interval AS recheck
), merged AS (
    SELECT m.id, m.received_at, m.ordinal, m.handicap_ms,
           least(now(), now() + (m.received_at - (SELECT arg.now FROM arg)))
               - m.handicap_ms * interval '1 millisecond' AS prio
    FROM (
        SELECT unnest(@ids::bigint[]) AS id, unnest(@received_ats::timestamptz[]) AS received_at,
               unnest(@ordinals::integer[]) AS ordinal, unnest(@handicaps_ms::bigint[]) AS handicap_ms
    ) m
), joined AS (
    SELECT merged.id, merged.received_at, merged.prio, merged.ordinal, merged.handicap_ms,
           p.object_id IS NOT NULL AS known,
           coalesce(p.due_at = '-infinity' AND p.received_at < merged.received_at, false) AS rearm
    FROM merged
    LEFT JOIN pending p ON p.object_id = merged.id
), wanted AS (
    SELECT count(*) FILTER (WHERE NOT joined.known) AS fresh,
           count(*) FILTER (WHERE joined.rearm)     AS rearm,
           min(joined.prio)                          AS lowest,
           min(joined.received_at)                   AS oldest
    FROM joined
), victims AS (
    SELECT d.object_id FROM pending d
    WHERE d.due_at > '-infinity' AND d.due_at <= now() AND d.claim_token IS NULL
      AND d.due_at < (SELECT wanted.lowest FROM wanted)
      AND d.received_at < (SELECT wanted.oldest FROM wanted)
      -- Not a join with merged: the planner cannot know how many candidates the
      -- bounds above let through, and chose a nested loop over 131,072 merged rows
      -- for each of thousands (a pass of minutes). A constant array's <> ALL is
      -- hashed (PostgreSQL 15), O(1) a candidate.
      AND d.object_id <> ALL(@ids::bigint[])
    ORDER BY d.due_at
    LIMIT least(greatest((SELECT wanted.fresh FROM wanted) - (SELECT arg.room FROM arg), 0), (SELECT arg.max_evict FROM arg))
    FOR UPDATE SKIP LOCKED
), evicted AS (
    DELETE FROM pending e
    WHERE e.object_id IN (SELECT victims.object_id FROM victims)
    RETURNING e.object_id
), fresh AS (
    SELECT joined.id FROM joined WHERE NOT joined.known
    ORDER BY joined.handicap_ms, joined.ordinal, joined.received_at DESC, joined.id
    LIMIT (SELECT arg.room FROM arg) + (SELECT count(*) FROM evicted)
), rearmed AS (
    SELECT joined.id FROM joined WHERE joined.rearm
    ORDER BY joined.handicap_ms, joined.ordinal, joined.received_at DESC, joined.id
    LIMIT greatest((SELECT arg.room FROM arg) + (SELECT count(*) FROM evicted) - (SELECT count(*) FROM fresh), 0)
), upserted AS (
    INSERT INTO pending (object_id, received_at, due_at)
    SELECT joined.id, joined.received_at,
           CASE WHEN joined.rearm AND joined.id NOT IN (SELECT rearmed.id FROM rearmed)
                THEN '-infinity'::timestamptz
                ELSE joined.prio END
    FROM joined
    WHERE joined.known OR joined.id IN (SELECT fresh.id FROM fresh)
    ORDER BY joined.id
    ON CONFLICT (object_id) DO UPDATE
        SET received_at = excluded.received_at,
            due_at      = CASE
                -- done, and no room to re-arm it: it only takes the receipt
                WHEN pending.due_at = '-infinity' AND excluded.due_at = '-infinity'
                    THEN pending.due_at
                -- done: re-armed as a re-check
                WHEN pending.due_at = '-infinity'
                    THEN excluded.due_at - (SELECT arg.recheck FROM arg)
                -- waiting and ranked more than 5 s behind: moved up
                WHEN pending.claim_token IS NULL AND pending.due_at <= now()
                     AND pending.due_at < excluded.due_at - interval '5 seconds'
                         - CASE WHEN pending.looked_up_at IS NULL THEN interval '0' ELSE (SELECT arg.recheck FROM arg) END
                    THEN excluded.due_at
                         - CASE WHEN pending.looked_up_at IS NULL THEN interval '0' ELSE (SELECT arg.recheck FROM arg) END
                ELSE pending.due_at END
        WHERE pending.received_at < excluded.received_at
    RETURNING pending.object_id
)
SELECT (SELECT count(*) FROM upserted)::bigint   AS changed,
       (SELECT wanted.fresh FROM wanted)::bigint AS fresh,
       (SELECT count(*) FROM fresh)::bigint      AS fresh_taken,
       (SELECT wanted.rearm FROM wanted)::bigint AS rearm,
       (SELECT count(*) FROM rearmed)::bigint    AS rearmed,
       (SELECT count(*) FROM evicted)::bigint    AS evicted;

-- name: RefreshObjects :execrows
-- The refresh path: an object that is online as of its latest lookup and is named by a
-- newer callback takes the newer receipt as last_seen now, with no lookup, whether or
-- not a lookup for it can be afforded. Runs in its own transaction, before the pass
-- that deletes the batches commits (a crash in between merges them again: a refresh is
-- idempotent). Rows locked in ascending id order (the ORDER BY sits below the row
-- locks), the order in which CompleteLookups writes objects; it holds no pending row,
-- and expiry only ever skips locked rows: no cycle.
WITH merged AS (
    SELECT m.id, m.received_at FROM (
        SELECT unnest(@ids::bigint[]) AS id, unnest(@received_ats::timestamptz[]) AS received_at
    ) m
), due AS (
    SELECT o.id, merged.received_at FROM objects o
    JOIN merged ON merged.id = o.id
    WHERE o.last_seen < merged.received_at
    ORDER BY o.id
    FOR UPDATE OF o
)
UPDATE objects o
SET last_seen = due.received_at
FROM due
WHERE o.id = due.id;

-- name: CountWaiting :one
-- Rows that are or will be looked up (waiting, backing off, claimed), not done ones:
-- what MAX_PENDING bounds.
SELECT count(*)::bigint AS waiting FROM pending WHERE due_at > '-infinity';

-- name: OldestUnmerged :one
-- The oldest receipt still waiting in the inbox within the window, or @now if there is
-- none: expiry never deletes a row that such a callback may still name (see
-- internal/expiry). min() walks inbox_batches_received_at_idx from the old end.
SELECT coalesce(min(b.received_at), @now::timestamptz)::timestamptz AS oldest
FROM inbox_batches b
WHERE b.last_received_at >= @cutoff::timestamptz;

-- name: ForceCustomPlans :exec
-- For the rest of the transaction, plan every statement for its actual parameters. A
-- merge pass sends arrays of one to a million ids; a cached generic plan assumes ten
-- (the estimate for unnest of a parameter) and picks a nested loop of index probes
-- that is ruinous at a million, where a hash join over a small table costs little.
SET LOCAL plan_cache_mode = force_custom_plan;
