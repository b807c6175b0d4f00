-- Messages (or entries of batch messages) that were not stored, and why.
CREATE TABLE rejected_messages (
    id           bigserial   PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text        NOT NULL,
    payload_head text        NOT NULL,
    reason       text        NOT NULL,
    detail       text        NOT NULL
);

CREATE INDEX rejected_messages_received_at_idx ON rejected_messages (received_at);
