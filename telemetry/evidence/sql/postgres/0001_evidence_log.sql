-- The evidence log: leaves, the perfect subtree hashes above them, signed checkpoints.
-- Append-only: triggers refuse UPDATE, DELETE and TRUNCATE on all three tables, and
-- leaves must arrive in index order with no hole. (A superuser can still drop a
-- trigger; what makes tampering visible to outsiders is the signed checkpoints.)

CREATE TABLE evidence_leaves (
    idx        bigint      PRIMARY KEY CHECK (idx >= 0),
    leaf_hash  bytea       NOT NULL CHECK (octet_length(leaf_hash) = 32),
    entry      bytea       NOT NULL CHECK (octet_length(entry) <= 65535),
    kind       text        NOT NULL,
    device_id  text,
    -- the tree's root right after this leaf: any size's root in one lookup
    tree_root  bytea       NOT NULL CHECK (octet_length(tree_root) = 32),
    created    timestamptz NOT NULL DEFAULT now()
);

-- a device's latest batch leaf (the prev pointer of its next batch)
CREATE INDEX evidence_leaves_device ON evidence_leaves (device_id, idx) WHERE device_id IS NOT NULL;

-- (level, idx) is the perfect subtree of 2^level leaves from leaf idx * 2^level;
-- level 0 lives in evidence_leaves.
CREATE TABLE evidence_nodes (
    level  smallint NOT NULL CHECK (level BETWEEN 1 AND 63),
    idx    bigint   NOT NULL CHECK (idx >= 0),
    hash   bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE evidence_checkpoints (
    tree_size  bigint      NOT NULL CHECK (tree_size >= 0),
    key_name   text        NOT NULL,
    key_id     bigint      NOT NULL,
    root_hash  bytea       NOT NULL CHECK (octet_length(root_hash) = 32),
    note       text        NOT NULL,
    created    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_name, key_id, tree_size)
);

-- An appender's first statement: take the log's lock (held to the end of the caller's
-- transaction, so appenders in several processes take turns), then read the head. One
-- function, two statements: in READ COMMITTED the second sees what the previous lock
-- holder committed.
CREATE FUNCTION evidence_lock_head(OUT tree_size bigint, OUT tree_root bytea)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1868785014);  -- "ocev"
    SELECT l.idx + 1, l.tree_root INTO tree_size, tree_root
        FROM evidence_leaves l ORDER BY l.idx DESC LIMIT 1;
    IF NOT FOUND THEN
        tree_size := 0;
    END IF;
END
$$;

CREATE FUNCTION evidence_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the evidence log is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE FUNCTION evidence_leaf_in_order() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    expected bigint;
BEGIN
    SELECT COALESCE(max(idx) + 1, 0) INTO expected FROM evidence_leaves;
    IF NEW.idx <> expected THEN
        RAISE EXCEPTION 'evidence leaf % out of order: the next index is %', NEW.idx, expected
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER evidence_leaves_in_order BEFORE INSERT ON evidence_leaves
    FOR EACH ROW EXECUTE FUNCTION evidence_leaf_in_order();

CREATE TRIGGER evidence_leaves_append_only BEFORE UPDATE OR DELETE ON evidence_leaves
    FOR EACH ROW EXECUTE FUNCTION evidence_refuse_change();
CREATE TRIGGER evidence_leaves_no_truncate BEFORE TRUNCATE ON evidence_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION evidence_refuse_change();

CREATE TRIGGER evidence_nodes_append_only BEFORE UPDATE OR DELETE ON evidence_nodes
    FOR EACH ROW EXECUTE FUNCTION evidence_refuse_change();
CREATE TRIGGER evidence_nodes_no_truncate BEFORE TRUNCATE ON evidence_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION evidence_refuse_change();

CREATE TRIGGER evidence_checkpoints_append_only BEFORE UPDATE OR DELETE ON evidence_checkpoints
    FOR EACH ROW EXECUTE FUNCTION evidence_refuse_change();
CREATE TRIGGER evidence_checkpoints_no_truncate BEFORE TRUNCATE ON evidence_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION evidence_refuse_change();
