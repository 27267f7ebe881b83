-- migrate:up

-- Bounded by the window during a sustained flood: the tables that churn are vacuumed
-- on a number of dead rows, not on a fraction of themselves, and without the cost
-- delay, so that their dead tuples stay about one vacuum's worth whatever the flood.
--
-- objects: every refresh of an online object moves last_seen, which is indexed (expiry
-- deletes by it), so it is a new tuple and new index entries, and the old ones are
-- dead; expiry deletes what the refreshes stop naming. With the default (a fifth of
-- the table) a table of 100,000 rows refreshed a few thousand times a second waited
-- for 20,000 dead rows and its indexes grew between vacuums. pending, inbox_batches
-- and merged_batches have such settings since their creation; merged_batches missed
-- the cost delay.
ALTER TABLE objects SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE merged_batches SET (autovacuum_vacuum_cost_delay = 0);

-- migrate:down
ALTER TABLE objects RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, autovacuum_vacuum_cost_delay);
ALTER TABLE merged_batches RESET (autovacuum_vacuum_cost_delay);
