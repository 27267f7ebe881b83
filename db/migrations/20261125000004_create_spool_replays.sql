-- migrate:up

-- One row per spool segment whose replay committed. Written in the replay's own
-- transaction, so a segment replayed just before a crash (and not yet removed from
-- disk) is recognised and removed, not replayed again. Kept for a week, then forgotten:
-- by then the segment file is long gone.
CREATE TABLE spool_replays (
    segment_id  uuid        PRIMARY KEY,
    replayed_at timestamptz NOT NULL DEFAULT now()
);

-- migrate:down
DROP TABLE spool_replays;
