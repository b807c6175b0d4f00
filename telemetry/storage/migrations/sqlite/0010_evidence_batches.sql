-- Readings batches sealed over a time window (see the PostgreSQL migration 0011): rows
-- carry their batch's id, rows stored before keep their leaf index as batch id. Times are
-- INTEGER microseconds since the Unix epoch (UTC).
ALTER TABLE readings RENAME COLUMN evidence_leaf TO evidence_batch;

CREATE TABLE evidence_batch_leaves (
    batch_id   INTEGER PRIMARY KEY,
    leaf_idx   INTEGER NOT NULL UNIQUE CHECK (leaf_idx >= 0),
    sealed_at  INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
);

INSERT INTO evidence_batch_leaves (batch_id, leaf_idx)
    SELECT DISTINCT evidence_batch, evidence_batch FROM readings WHERE evidence_batch IS NOT NULL;

CREATE TRIGGER evidence_batch_leaves_no_replace BEFORE INSERT ON evidence_batch_leaves
WHEN EXISTS (SELECT 1 FROM evidence_batch_leaves WHERE batch_id = NEW.batch_id OR leaf_idx = NEW.leaf_idx)
BEGIN
    SELECT RAISE(ABORT, 'evidence_batch_leaves is append-only: a batch is sealed once');
END;

CREATE TRIGGER evidence_batch_leaves_no_update BEFORE UPDATE ON evidence_batch_leaves
BEGIN
    SELECT RAISE(ABORT, 'evidence_batch_leaves is append-only: UPDATE refused');
END;

CREATE TRIGGER evidence_batch_leaves_no_delete BEFORE DELETE ON evidence_batch_leaves
BEGIN
    SELECT RAISE(ABORT, 'evidence_batch_leaves is append-only: DELETE refused');
END;

-- AUTOINCREMENT: an id is never handed out twice, even after its row is deleted (sealed).
-- The store raises the counter above every leaf index when this migration is applied.
CREATE TABLE evidence_open_batches (
    batch_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id       TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    anchor_us       INTEGER NOT NULL,
    span_us         INTEGER NOT NULL CHECK (span_us > 0),
    opened_at       INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    seal_requested  INTEGER
);

INSERT INTO sqlite_sequence (name, seq)
    SELECT 'evidence_open_batches', coalesce(max(evidence_batch), -1) FROM readings;

CREATE INDEX evidence_open_batches_owner ON evidence_open_batches (owner);
CREATE INDEX evidence_open_batches_device ON evidence_open_batches (device_id);
