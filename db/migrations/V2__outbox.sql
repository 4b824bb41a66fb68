-- Events to publish to the broker, written in the same transaction as the
-- change they announce, so an acknowledged write is never lost to a broker
-- outage. One relay at a time (the instance holding an advisory lock)
-- publishes them in id order with publisher confirms, then deletes them; a
-- claim lease keeps a deposed relay from publishing rows twice.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    topic       smallint NOT NULL,
    routing_key text NOT NULL,
    body        bytea NOT NULL,
    claimed_until timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Wakes the relay at commit (NOTIFY is delivered only when the writing
-- transaction commits, and once per transaction for identical payloads).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('livefeed_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_written AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
