-- Messages (or entries of batch messages) that were not stored, and why.
-- received_at is INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE rejected_messages (
    id           INTEGER PRIMARY KEY,
    received_at  INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    topic        TEXT    NOT NULL,
    payload_head TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    detail       TEXT    NOT NULL
);

CREATE INDEX rejected_messages_received_at_idx ON rejected_messages (received_at);
