-- name: PublishWatermark :exec
-- A replica's heartbeat: the oldest receipt it holds outside the inbox (its own clock),
-- as of now() (the database's clock). See the migration 20261206000002.
INSERT INTO replica_watermarks (replica_id, low_watermark, heartbeat_at, stopped)
VALUES (@replica_id, @low_watermark, now(), @stopped)
ON CONFLICT (replica_id) DO UPDATE
    SET low_watermark = excluded.low_watermark,
        heartbeat_at  = excluded.heartbeat_at,
        stopped       = excluded.stopped;

-- name: FleetWatermark :one
-- The lowest watermark of the replicas that may still hold callbacks: not stopped, and
-- heard from within silence_ms (the database's clock, like heartbeat_at); lowest is the
-- epoch when there are none (live = 0). silent counts the replicas past that bound that
-- have not stopped: they no longer hold expiry back (metrics and the alert on them).
SELECT coalesce(min(w.low_watermark) FILTER (WHERE w.heartbeat_at >= now() - sqlc.arg(silence_ms)::bigint * interval '1 millisecond'), 'epoch')::timestamptz AS lowest,
       count(*) FILTER (WHERE w.heartbeat_at >= now() - sqlc.arg(silence_ms)::bigint * interval '1 millisecond')::bigint AS live,
       count(*) FILTER (WHERE w.heartbeat_at < now() - sqlc.arg(silence_ms)::bigint * interval '1 millisecond')::bigint AS silent
FROM replica_watermarks w
WHERE NOT w.stopped;

-- name: DeleteWatermark :execrows
-- The row of a replica found gone: its slot in a shared spool directory is no longer
-- locked, so a live replica on that directory counts (and replays) its spool instead.
DELETE FROM replica_watermarks WHERE replica_id = @replica_id;

-- name: ForgetReplicas :execrows
-- Rows of replicas silent for longer than before_ms: they have long stopped holding
-- anything back, and a fleet that comes and goes would otherwise keep them forever.
DELETE FROM replica_watermarks
WHERE heartbeat_at < now() - sqlc.arg(before_ms)::bigint * interval '1 millisecond';
