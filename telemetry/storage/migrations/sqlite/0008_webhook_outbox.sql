-- Webhook deliveries not done yet (the outbox). A row is written in the same transaction
-- as the alert change that caused it, so an event recorded is never lost before it is
-- sent, whatever stops the process. The sender deletes the row once delivered or given
-- up (webhook_deliveries keeps every attempt) and otherwise moves due_at on.
-- Times are INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE webhook_outbox (
    id          INTEGER PRIMARY KEY,
    url         TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 1,  -- the number of the next attempt
    due_at      INTEGER NOT NULL,
    -- A claim: the sender that took the row, until when (see the PostgreSQL migration).
    lease_owner TEXT,
    lease_until INTEGER,
    created_at  INTEGER NOT NULL,
    UNIQUE (event_id, url)
);

CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (due_at, id);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
