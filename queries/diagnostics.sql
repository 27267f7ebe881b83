-- name: InboxBatchData :many
-- For tests and diagnostics: every batch in the inbox, encoded
-- (internal/callback/encoding.go), without taking it; oldest first, as batch ids are
-- UUIDv7s, minted in time order.
SELECT data FROM inbox_batches ORDER BY batch_id;
