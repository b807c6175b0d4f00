-- RFC 3161 time anchoring (see the PostgreSQL migration); times are INTEGER
-- microseconds since the Unix epoch (UTC).
CREATE TABLE evidence_timestamps (
    key_name     TEXT    NOT NULL,
    key_id       INTEGER NOT NULL,
    tree_size    INTEGER NOT NULL CHECK (tree_size > 0),
    note         TEXT    NOT NULL,
    tsa_url      TEXT    NOT NULL,
    requested_at INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    response     BLOB,
    gen_time     INTEGER,
    stamped_at   INTEGER,
    PRIMARY KEY (key_name, key_id, tree_size)
);

CREATE INDEX evidence_timestamps_pending ON evidence_timestamps (requested_at) WHERE response IS NULL;

CREATE TRIGGER evidence_timestamps_keep BEFORE UPDATE ON evidence_timestamps
    WHEN OLD.response IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'a stored timestamp token is kept as it is');
END;

CREATE TRIGGER evidence_timestamps_no_delete BEFORE DELETE ON evidence_timestamps
BEGIN
    SELECT RAISE(ABORT, 'a stored timestamp token is kept as it is');
END;
