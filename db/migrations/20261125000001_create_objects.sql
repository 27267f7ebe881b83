-- migrate:up

-- The contract with the outside world: exactly the objects whose latest looked-up
-- status is online, with last_seen = the receipt time of the latest callback that
-- named them. Receipt times come from the service's clock.
CREATE TABLE objects (
    id        bigint      PRIMARY KEY,
    last_seen timestamptz NOT NULL
);

-- Expiry deletes by last_seen every second; without this index that is a full scan.
CREATE INDEX objects_last_seen_idx ON objects (last_seen);

-- migrate:down
DROP TABLE objects;
