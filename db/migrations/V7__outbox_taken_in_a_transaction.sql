-- The relay no longer claims outbox rows with a lease and deletes them
-- later (two writes per row): it deletes a batch in a transaction it keeps
-- open until the broker confirms the batch, and rolls it back otherwise.
-- An open transaction's row locks keep other relays off the rows, and a
-- relay that dies takes its transaction with it, so no claim is needed.
ALTER TABLE outbox DROP COLUMN claimed_until;
