-- migrate:up

-- Newest work first, and work that left the window dropped before it costs anything.
--
-- inbox_batches.last_received_at is the newest receipt in the batch (received_at is the
-- oldest). A batch whose newest receipt is older than the window cannot move any row:
-- the merger deletes it without decoding it. Rows written by an older version get now():
-- they are never dropped unread, and the merger still drops their stale callbacks one by
-- one when it decodes them.
--
-- inbox_batches_received_at_idx serves three things: the merger takes the newest batches
-- first under a backlog (ORDER BY received_at DESC), drops stale ones (received_at <
-- cutoff: received_at <= last_received_at, so the range holds every candidate), and
-- expiry reads the oldest unmerged receipt (min(received_at)) without scanning batch
-- data. One index entry per group commit, not per callback: nothing on the reply path
-- that matters.
ALTER TABLE inbox_batches ADD COLUMN last_received_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX inbox_batches_received_at_idx ON inbox_batches (received_at);

-- pending.due_at now doubles as the row's priority. An unclaimed row is due at its
-- newest receipt (service clock), so the claim query walks pending_due_at_idx backwards
-- from now() and takes the newest receipts first; a newer receipt moves the row up
-- (greatest(due_at, received_at): a lease or a backoff, both in the future, is kept).
-- Rows whose receipt left the window sit at the old end of the same index, where the
-- sweep deletes them by range. The default stays now() for rows written by an older
-- version.

-- migrate:down
DROP INDEX inbox_batches_received_at_idx;
ALTER TABLE inbox_batches DROP COLUMN last_received_at;
