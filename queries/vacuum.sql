-- Vacuuming of the tables that churn (internal/vacuum): the service does not rely on
-- autovacuum, which may be off (it is on some CI machines) and whose default cadence a
-- flood outruns. SKIP_LOCKED: a table another replica is vacuuming right now is its.

-- name: DeadRows :one
-- Dead tuples per hot table, from the statistics collector (as autovacuum reads them).
SELECT pg_stat_get_dead_tuples('pending'::regclass)::bigint        AS pending,
       pg_stat_get_dead_tuples('objects'::regclass)::bigint        AS objects,
       pg_stat_get_dead_tuples('inbox_batches'::regclass)::bigint  AS inbox_batches,
       pg_stat_get_dead_tuples('merged_batches'::regclass)::bigint AS merged_batches;

-- name: VacuumPending :exec
VACUUM (SKIP_LOCKED) pending;

-- name: VacuumObjects :exec
VACUUM (SKIP_LOCKED) objects;

-- name: VacuumInboxBatches :exec
VACUUM (SKIP_LOCKED) inbox_batches;

-- name: VacuumMergedBatches :exec
VACUUM (SKIP_LOCKED) merged_batches;
