-- name: TryExpiryLock :one
-- Transaction-scoped, so it is released by COMMIT or by the connection dying, and it
-- works behind a transaction-mode pooler. It only avoids duplicate work: the deletes
-- below are safe to run twice.
SELECT pg_try_advisory_xact_lock(@lock_key::bigint) AS locked;

-- name: ExpireObjects :execrows
-- At most max_rows rows per call, oldest first: after a long outage a large table may
-- hold many expired rows, and one unbounded DELETE under a deadline could roll back on
-- every tick and never finish. The caller loops while chunks come back full.
-- SKIP LOCKED: a row that is locked right now is being refreshed or written by a lookup
-- result; expiry never waits (so it is never part of a deadlock) and the next tick,
-- one second later, takes the row if it is still old.
DELETE FROM objects
WHERE id IN (
    SELECT o.id FROM objects o
    WHERE o.last_seen < @cutoff
    ORDER BY o.last_seen
    LIMIT @max_rows
    FOR UPDATE SKIP LOCKED
);

-- name: GetObject :one
SELECT id, last_seen FROM objects
WHERE id = @id AND last_seen >= @cutoff;

-- name: ListObjectsByID :many
SELECT id, last_seen FROM objects
WHERE id > @after_id AND last_seen >= @cutoff
ORDER BY id
LIMIT @max_rows;

-- name: ListObjectsNewest :many
-- Keyset paging, newest first: the next page starts after (before_seen, before_id).
SELECT id, last_seen FROM objects
WHERE (last_seen, id) < (@before_seen::timestamptz, @before_id::bigint) AND last_seen >= @cutoff
ORDER BY last_seen DESC, id DESC
LIMIT @max_rows;
