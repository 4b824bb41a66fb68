-- Feed events taken off the work queue while Redis was unreachable. They
-- are acknowledged at once, so that a Redis outage neither grows the broker's
-- queue nor holds up live delivery, and kept here, in the truth's database,
-- so that whichever instance reaches Redis next applies them (in id order)
-- even if the one that took them died. Applying one twice is harmless.
CREATE TABLE feed_backlog (
    id         bigserial PRIMARY KEY,
    event      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
