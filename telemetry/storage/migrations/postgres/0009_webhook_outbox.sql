-- Webhook deliveries not done yet (the outbox). A row is written in the same transaction
-- as the alert change that caused it, so an event recorded is never lost before it is
-- sent, whatever stops the process. The sender deletes the row once delivered or given
-- up (webhook_deliveries keeps every attempt) and otherwise moves due_at on.
CREATE TABLE webhook_outbox (
    id          bigserial   PRIMARY KEY,
    url         text        NOT NULL,
    event_id    text        NOT NULL,
    body        bytea       NOT NULL,
    attempt     integer     NOT NULL DEFAULT 1,  -- the number of the next attempt
    due_at      timestamptz NOT NULL,
    -- A claim: the sender that took the row, until when. Another sender skips it until
    -- then, so two engines never send one row at once, and a crashed one's claim lapses.
    lease_owner text,
    lease_until timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, url)
);

CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (due_at, id);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
