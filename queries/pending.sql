-- name: ClaimDue :many
-- Claims up to max_rows due rows for one lookup each, NEWEST receipt first: due_at is
-- the row's priority (its newest receipt while it waits; see the migration
-- 20261202000001), and the scan walks pending_due_at_idx backwards from now(). With no
-- backlog every due row is taken and the order does not matter; under a backlog the
-- receipts furthest from leaving the window are looked up first (adaptive LIFO).
-- A row whose receipt already left the window (cutoff, service clock) is never
-- claimed: the sweep deletes it (SweepPending), so no claim loop spins on dead work.
-- SKIP LOCKED: claimers never wait for each other or for the merger. The lease is
-- due_at itself: moving it to now() + lease means a row whose worker dies becomes due
-- again when the lease runs out.
UPDATE pending p
SET claim_token         = arg.claim_token,
    claimed_received_at = p.received_at,
    due_at              = now() + arg.lease_ms * interval '1 millisecond',
    attempts            = p.attempts + 1
FROM (
    SELECT d.object_id FROM pending d
    WHERE d.due_at <= now() AND d.received_at >= @cutoff
    ORDER BY d.due_at DESC
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
) due, (
    SELECT @claim_token::uuid AS claim_token, @lease_ms::bigint AS lease_ms
) arg
WHERE p.object_id = due.object_id
RETURNING p.object_id, p.received_at, p.attempts;

-- name: SweepPending :one
-- Pending rows whose newest receipt left the window and that no live lease holds
-- (due_at, the lease's end or the receipt, is past the cutoff too): their lookup could
-- not write a row any more. At most max_rows per call, oldest first, SKIP LOCKED.
WITH stale AS (
    SELECT d.object_id FROM pending d
    WHERE d.due_at < @cutoff AND d.received_at < @cutoff
    ORDER BY d.due_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
), swept AS (
    DELETE FROM pending p
    WHERE p.object_id IN (SELECT stale.object_id FROM stale)
    RETURNING p.object_id
)
SELECT count(*)::bigint AS swept FROM swept;

-- name: CompleteLookups :one
-- Applies a batch of lookup outcomes in one statement. Only rows that still carry the
-- claim token of the lookup are touched (owned): a worker whose lease ran out and was
-- reclaimed by another cannot write a stale answer. owned locks them in ascending id
-- order, before any objects row (the lock order), and FOR UPDATE yields the newest
-- version of each, so owned.received_at tells whether a newer callback arrived while
-- the lookup was in flight.
--
-- outcome: 'online' | 'offline' | 'failed' | 'expired'.
--   online   upsert the object with the NEWEST receipt known for it (owned.received_at,
--            which a callback merged while the lookup ran may have moved past the one
--            the lookup was claimed for): otherwise the row would carry the older
--            receipt until the extra lookup below returns, and could expire in between
--            although the object was named since. last_seen never moves backwards. Not
--            if that receipt is older than cutoff (now - the expiry window, the
--            service's clock): a lookup that ends after its receipt left the window
--            must not write a row that is already expired and would outlive the window
--            until the next tick.
--   offline  delete the object: this lookup is the latest fetched status.
--   failed   release the row, due again after retry_after_ms (backoff, chosen by the caller).
--   expired  the receipt left the window before the lookup: drop it unless a newer
--            receipt arrived.
-- Then, for online/offline/expired: a row with no newer receipt is done (deleted); a
-- row with one is released to run again at once, exactly once more.
WITH result AS (
    SELECT unnest(@object_ids::bigint[])      AS object_id,
           unnest(@claim_tokens::uuid[])      AS claim_token,
           unnest(@outcomes::text[])          AS outcome,
           unnest(@retry_after_ms::bigint[])  AS retry_after_ms
), owned AS (
    SELECT p.object_id, p.received_at, p.claimed_received_at, result.outcome, result.retry_after_ms
    FROM pending p
    JOIN result ON result.object_id = p.object_id AND result.claim_token = p.claim_token
    ORDER BY p.object_id
    FOR UPDATE OF p
), upserted AS (
    INSERT INTO objects (id, last_seen)
    SELECT owned.object_id, owned.received_at FROM owned
    WHERE owned.outcome = 'online' AND owned.received_at >= @cutoff::timestamptz
    ORDER BY owned.object_id
    ON CONFLICT (id) DO UPDATE
        SET last_seen = greatest(objects.last_seen, excluded.last_seen)
    RETURNING objects.id
), removed AS (
    DELETE FROM objects o
    USING owned
    WHERE o.id = owned.object_id AND owned.outcome = 'offline'
    RETURNING o.id
), finished AS (
    DELETE FROM pending p
    USING owned
    WHERE p.object_id = owned.object_id
      AND owned.outcome <> 'failed'
      AND owned.received_at <= owned.claimed_received_at
    RETURNING p.object_id
), released AS (
    UPDATE pending p
    SET claim_token         = NULL,
        claimed_received_at = NULL,
        attempts            = CASE WHEN owned.outcome = 'failed' THEN p.attempts ELSE 0 END,
        due_at              = now() + owned.retry_after_ms * interval '1 millisecond'
    FROM owned
    WHERE p.object_id = owned.object_id
      AND (owned.outcome = 'failed' OR owned.received_at > owned.claimed_received_at)
    RETURNING p.object_id
)
SELECT (SELECT count(*) FROM owned)::bigint    AS owned,
       (SELECT count(*) FROM upserted)::bigint AS upserted,
       (SELECT count(*) FROM removed)::bigint  AS removed,
       (SELECT count(*) FROM finished)::bigint AS finished,
       (SELECT count(*) FROM released)::bigint AS released;

-- name: QueueStats :one
-- For metrics and the status line. Ages are measured against the caller's now, the
-- service's clock, because receipt times come from it. count(*) scans: call it every
-- few seconds, not per request.
SELECT
    coalesce((SELECT sum(callbacks) FROM inbox_batches), 0)::bigint AS inbox_callbacks,
    coalesce(extract(epoch FROM arg.now - (SELECT min(received_at) FROM inbox_batches)), 0)::float8
        AS inbox_oldest_seconds,
    (SELECT count(*) FROM pending)::bigint AS pending_rows,
    (SELECT count(*) FROM pending WHERE claim_token IS NOT NULL)::bigint AS claimed_rows,
    coalesce(extract(epoch FROM arg.now - (SELECT min(received_at) FROM pending)), 0)::float8
        AS pending_oldest_seconds,
    (SELECT count(*) FROM objects)::bigint AS objects_rows
FROM (SELECT @now::timestamptz AS now) arg;

-- name: EvictPending :one
-- Newest first when pending is full: up to max_rows waiting rows (not claimed, not
-- backing off) whose newest receipt is older than older_than are deleted, oldest
-- first, to make room for newer receipts. Under a flood this keeps pending the newest
-- work, not the first work that filled it. SKIP LOCKED: never waits, so never deadlocks.
WITH victims AS (
    SELECT d.object_id FROM pending d
    WHERE d.due_at <= now() AND d.claim_token IS NULL AND d.received_at < @older_than
    ORDER BY d.due_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
), evicted AS (
    DELETE FROM pending p
    WHERE p.object_id IN (SELECT victims.object_id FROM victims)
    RETURNING p.object_id
)
SELECT count(*)::bigint AS evicted FROM evicted;
