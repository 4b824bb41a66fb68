-- Idempotency keys of POST /post/create and /dialog/{user_id}/send: the
-- first request with a key stores it with its response in the transaction
-- of its write, so a retry (even after a COMMIT whose response was lost)
-- answers that response instead of writing again. `request` is what the
-- write was asked to do (the same key for something else is refused).
-- Keys live a day; keyed writes delete a few expired ones each, so the table
-- holds about a day of keys with no background job.
CREATE TABLE idempotency_keys (
    user_id    uuid NOT NULL,
    endpoint   smallint NOT NULL,
    key        text NOT NULL,
    request    bytea NOT NULL,
    status     smallint NOT NULL,
    body       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, endpoint, key)
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
