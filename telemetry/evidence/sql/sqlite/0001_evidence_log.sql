-- The evidence log: leaves, the perfect subtree hashes above them, signed checkpoints.
-- Append-only: triggers refuse UPDATE and DELETE, and refuse an INSERT that would
-- replace a row (INSERT OR REPLACE deletes without firing delete triggers) or leave a
-- hole in the leaf indices. Times are INTEGER microseconds since the Unix epoch (UTC).

CREATE TABLE evidence_leaves (
    idx        INTEGER PRIMARY KEY CHECK (idx >= 0),
    leaf_hash  BLOB    NOT NULL CHECK (length(leaf_hash) = 32),
    entry      BLOB    NOT NULL CHECK (length(entry) <= 65535),
    kind       TEXT    NOT NULL,
    device_id  TEXT,
    -- the tree's root right after this leaf: any size's root in one lookup
    tree_root  BLOB    NOT NULL CHECK (length(tree_root) = 32),
    created    INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
);

-- a device's latest batch leaf (the prev pointer of its next batch)
CREATE INDEX evidence_leaves_device ON evidence_leaves (device_id, idx) WHERE device_id IS NOT NULL;

-- (level, idx) is the perfect subtree of 2^level leaves from leaf idx * 2^level;
-- level 0 lives in evidence_leaves.
CREATE TABLE evidence_nodes (
    level  INTEGER NOT NULL CHECK (level BETWEEN 1 AND 63),
    idx    INTEGER NOT NULL CHECK (idx >= 0),
    hash   BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

CREATE TABLE evidence_checkpoints (
    tree_size  INTEGER NOT NULL CHECK (tree_size >= 0),
    key_name   TEXT    NOT NULL,
    key_id     INTEGER NOT NULL,
    root_hash  BLOB    NOT NULL CHECK (length(root_hash) = 32),
    note       TEXT    NOT NULL,
    created    INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    PRIMARY KEY (key_name, key_id, tree_size)
) WITHOUT ROWID;

CREATE TRIGGER evidence_leaves_in_order BEFORE INSERT ON evidence_leaves
WHEN NEW.idx IS NOT (SELECT COALESCE(max(idx) + 1, 0) FROM evidence_leaves)
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: leaves are added in index order');
END;

CREATE TRIGGER evidence_leaves_no_update BEFORE UPDATE ON evidence_leaves
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: UPDATE on evidence_leaves refused');
END;

CREATE TRIGGER evidence_leaves_no_delete BEFORE DELETE ON evidence_leaves
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: DELETE on evidence_leaves refused');
END;

CREATE TRIGGER evidence_nodes_no_replace BEFORE INSERT ON evidence_nodes
WHEN EXISTS (SELECT 1 FROM evidence_nodes WHERE level = NEW.level AND idx = NEW.idx)
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: a node cannot be replaced');
END;

CREATE TRIGGER evidence_nodes_no_update BEFORE UPDATE ON evidence_nodes
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: UPDATE on evidence_nodes refused');
END;

CREATE TRIGGER evidence_nodes_no_delete BEFORE DELETE ON evidence_nodes
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: DELETE on evidence_nodes refused');
END;

CREATE TRIGGER evidence_checkpoints_no_replace BEFORE INSERT ON evidence_checkpoints
WHEN EXISTS (
    SELECT 1 FROM evidence_checkpoints
    WHERE key_name = NEW.key_name AND key_id = NEW.key_id AND tree_size = NEW.tree_size
)
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: a checkpoint cannot be replaced');
END;

CREATE TRIGGER evidence_checkpoints_no_update BEFORE UPDATE ON evidence_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: UPDATE on evidence_checkpoints refused');
END;

CREATE TRIGGER evidence_checkpoints_no_delete BEFORE DELETE ON evidence_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'the evidence log is append-only: DELETE on evidence_checkpoints refused');
END;
