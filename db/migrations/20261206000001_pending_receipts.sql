-- migrate:up

-- pending becomes the memory of the newest receipt per object within the window, not only
-- the queue of lookups to do.
--
-- Done rows. A lookup that answered (online or offline) no longer deletes its row: the
-- row stays, done, with received_at the newest receipt known for the object, until that
-- receipt leaves the window (the sweep). A batch merged later with an OLDER receipt for
-- the object (newest-first merging, a second replica's merger, a late spool replay) then
-- changes nothing, instead of creating a new row whose lookup would write the older
-- receipt as last_seen: last_seen stays the newest receipt accepted for the object,
-- whatever order batches are merged in. A newer receipt re-arms a done row (one more
-- lookup: the object's status may have changed).
--
-- A done row has due_at = '-infinity'. That value, rather than 'infinity' or a state
-- column, keeps one index for every scan, and keeps a release of the previous version
-- right during a rolling upgrade or a rollback: to it a done row is a waiting row older
-- than every other one, so it re-arms it on a newer receipt (its merge moves due_at to
-- the receipt), looks it up once more at worst, and sweeps it once out of the window.
--
-- looked_up_at: when the last answered lookup was written (database clock); NULL if the
-- object was never looked up since the row was made. A row with it set is a re-check
-- (its status is known, online objects are already refreshed without a lookup), and
-- under a backlog it ranks below first lookups (queries/inbox.sql, MergePending).
--
-- due_at is now always on the database's clock, like leases and backoffs: a waiting
-- row is due at its receipt translated to that clock (now() minus the receipt's age on
-- the merging replica's clock), so a replica whose clock runs ahead no longer delays
-- the lookups it merges.
ALTER TABLE pending ADD COLUMN looked_up_at timestamptz;

-- The sweep finds done rows whose receipt left the window through this index; the rest
-- of pending_due_at_idx never sees them (they sit at its -infinity end).
CREATE INDEX pending_done_idx ON pending (received_at) WHERE due_at = '-infinity';

-- A Retry-After was taken for up to a day (and an HTTP date for longer) as a row's
-- backoff, which kept the object from any lookup however often it was named. Backoffs
-- are now capped well under the window (RETRY_AFTER_MAX); rows left waiting that long
-- by the previous version are due now. Leases are never that long.
UPDATE pending SET due_at = now()
WHERE claim_token IS NULL AND due_at > now() + interval '10 minutes';

-- migrate:down
DROP INDEX pending_done_idx;
-- The previous version deletes a row once looked up; a done row would be claimed by it
-- as the oldest waiting work and looked up once more. Dropping them loses only the
-- memory of receipts already looked up.
DELETE FROM pending WHERE due_at = '-infinity';
ALTER TABLE pending DROP COLUMN looked_up_at;
