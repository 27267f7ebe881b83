-- name: ClaimDue :many
-- Claims up to max_rows due rows for one lookup each, highest rank first: due_at is a
-- waiting row's rank (its newest receipt on the database's clock, lower for a
-- re-check; see MergePending), and the scan walks pending_due_at_idx backwards from
-- now(). With no backlog every due row is taken and the order does not matter; under a
-- backlog the receipts furthest from leaving the window are looked up first (adaptive
-- LIFO), objects not looked up yet before re-checks. Done rows (due_at '-infinity') are
-- never claimed. A row whose receipt already left the window (cutoff, the service's
-- clock, like receipts) is never claimed either: the sweep deletes it (SweepPending),
-- so no claim loop spins on dead work.
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
    WHERE d.due_at <= now() AND d.due_at > '-infinity' AND d.received_at >= @cutoff
    ORDER BY d.due_at DESC
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
) due, (
    SELECT @claim_token::uuid AS claim_token, @lease_ms::bigint AS lease_ms
) arg
WHERE p.object_id = due.object_id
RETURNING p.object_id, p.received_at, p.attempts;

-- name: CountDue :one
-- How many rows are due now, counted up to max_rows: the demand the lookup limit is
-- raised to meet (internal/fetch). A range of pending_due_at_idx, read only while the
-- limit is fully used and more is due.
SELECT count(*)::bigint AS due FROM (
    SELECT 1 FROM pending d
    WHERE d.due_at <= now() AND d.due_at > '-infinity' AND d.received_at >= @cutoff
    LIMIT @max_rows
) d;

-- name: SweepPending :one
-- Rows whose newest receipt left the window (cutoff): a lookup could not write a row
-- for them any more, and an older receipt merged later is dropped by the merger itself.
-- Two ranges, at most max_rows each, oldest first, SKIP LOCKED:
--   * done rows, through pending_done_idx;
--   * waiting rows whose rank is below now() - older_ms, where older_ms is the window
--     plus a re-check's handicap: a rank is never lower than that for a receipt within
--     the window, so the range holds only candidates; a row claimed or backing off is
--     reached once its lease or backoff is over, which also means no live lease holds it.
WITH done AS (
    SELECT d.object_id FROM pending d
    WHERE d.due_at = '-infinity' AND d.received_at < @cutoff
    ORDER BY d.received_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
), waiting AS (
    SELECT d.object_id FROM pending d
    WHERE d.due_at > '-infinity' AND d.due_at < now() - sqlc.arg(older_ms)::bigint * interval '1 millisecond'
      AND d.received_at < @cutoff
    ORDER BY d.due_at
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
), swept AS (
    DELETE FROM pending p
    WHERE p.object_id IN (SELECT done.object_id FROM done UNION ALL SELECT waiting.object_id FROM waiting)
    RETURNING p.due_at = '-infinity' AS was_done
)
SELECT count(*) FILTER (WHERE NOT swept.was_done)::bigint AS waiting,
       count(*) FILTER (WHERE swept.was_done)::bigint     AS done
FROM swept;

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
-- Then, for online/offline: a row with no newer receipt is done (due_at '-infinity':
-- it keeps the newest receipt, so that an older one merged later changes nothing; see
-- the migration 20261206000001), with looked_up_at set; a row with a newer receipt is
-- released to run again at once, exactly once more, ranked as a re-check (@recheck_ms
-- lower; @now is the service's clock, as in MergePending). For expired: deleted, or
-- released if a newer receipt arrived.
WITH result AS (
    SELECT unnest(@object_ids::bigint[])      AS object_id,
           unnest(@claim_tokens::uuid[])      AS claim_token,
           unnest(@outcomes::text[])          AS outcome,
           unnest(@retry_after_ms::bigint[])  AS retry_after_ms
), owned AS (
    SELECT p.object_id, p.received_at, p.claimed_received_at, result.outcome, result.retry_after_ms,
           result.outcome IN ('online', 'offline') AS answered,
           p.received_at > p.claimed_received_at AS newer
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
    UPDATE pending p
    SET claim_token         = NULL,
        claimed_received_at = NULL,
        attempts            = 0,
        due_at              = '-infinity',
        looked_up_at        = now()
    FROM owned
    WHERE p.object_id = owned.object_id AND owned.answered AND NOT owned.newer
    RETURNING p.object_id
), dropped AS (
    DELETE FROM pending p
    USING owned
    WHERE p.object_id = owned.object_id AND owned.outcome = 'expired' AND NOT owned.newer
    RETURNING p.object_id
), released AS (
    UPDATE pending p
    SET claim_token         = NULL,
        claimed_received_at = NULL,
        attempts            = CASE WHEN owned.outcome = 'failed' THEN p.attempts ELSE 0 END,
        looked_up_at        = CASE WHEN owned.answered THEN now() ELSE p.looked_up_at END,
        due_at              = CASE
            WHEN owned.outcome = 'failed' THEN now() + owned.retry_after_ms * interval '1 millisecond'
            ELSE least(now(), now() + (owned.received_at - sqlc.arg(now)::timestamptz))
                 - CASE WHEN owned.answered OR p.looked_up_at IS NOT NULL THEN @recheck_ms::bigint ELSE 0 END
                   * interval '1 millisecond'
            END
    FROM owned
    WHERE p.object_id = owned.object_id AND (owned.outcome = 'failed' OR owned.newer)
    RETURNING p.object_id
)
SELECT (SELECT count(*) FROM owned)::bigint    AS owned,
       (SELECT count(*) FROM upserted)::bigint AS upserted,
       (SELECT count(*) FROM removed)::bigint  AS removed,
       ((SELECT count(*) FROM finished) + (SELECT count(*) FROM dropped))::bigint AS finished,
       (SELECT count(*) FROM released)::bigint AS released;

-- name: QueueStats :one
-- For metrics and the status line. Ages are measured against the caller's now, the
-- service's clock, because receipt times come from it. count(*) scans: call it every
-- few seconds, not per request.
SELECT
    coalesce((SELECT sum(callbacks) FROM inbox_batches), 0)::bigint AS inbox_callbacks,
    coalesce(extract(epoch FROM arg.now - (SELECT min(received_at) FROM inbox_batches)), 0)::float8
        AS inbox_oldest_seconds,
    (SELECT count(*) FROM pending WHERE due_at > '-infinity')::bigint AS pending_rows,
    (SELECT count(*) FROM pending WHERE claim_token IS NOT NULL)::bigint AS claimed_rows,
    (SELECT count(*) FROM pending WHERE due_at = '-infinity')::bigint AS done_rows,
    coalesce(extract(epoch FROM arg.now - (SELECT min(received_at) FROM pending WHERE due_at > '-infinity')), 0)::float8
        AS pending_oldest_seconds,
    (SELECT count(*) FROM objects)::bigint AS objects_rows
FROM (SELECT @now::timestamptz AS now) arg;
