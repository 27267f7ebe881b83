-- migrate:up

-- The fleet's low watermark for expiry: one row per replica, written every second by
-- the replica itself (internal/watermark). low_watermark is the oldest receipt the
-- replica holds outside the inbox (a request not yet durable, its spool), on its own
-- clock, as of heartbeat_at (the database's clock). Expiry never deletes a row that a
-- callback at or after the lowest low_watermark could keep alive, counting every replica
-- heard from within REPLICA_TIMEOUT: a replica cut off from Postgres keeps holding
-- expiry back with the last watermark it published, since it may be spooling callbacks
-- that nobody else can see, until it has been silent that long.
--
-- replica_id names the spool directory (a random id kept in the directory) and a slot
-- in it (one per process sharing the directory): a replica restarted on the same
-- directory takes its slot and its row back, and a live replica that finds a slot of
-- its directory unlocked knows that replica is gone (its spool is its own to replay
-- and count) and deletes its row.
--
-- stopped: the replica shut down cleanly with nothing held; its row no longer counts.
CREATE TABLE replica_watermarks (
    replica_id    text        PRIMARY KEY,
    low_watermark timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped       boolean     NOT NULL DEFAULT false
);

-- migrate:down
DROP TABLE replica_watermarks;
