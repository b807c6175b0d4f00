-- Readings batches sealed over a time window (telemetry/storage/evidence_batches.py):
-- a reading row now carries the id of the batch that covers it, and a sealed batch maps
-- to its readings_batch leaf. Rows stored before keep their leaf index as batch id (each
-- mapped to itself below); new ids come from a sequence above every leaf index.
ALTER TABLE readings RENAME COLUMN evidence_leaf TO evidence_batch;

-- Append-only, like the log it points into: a batch is sealed once, into one leaf.
CREATE TABLE evidence_batch_leaves (
    batch_id   bigint      PRIMARY KEY,
    leaf_idx   bigint      NOT NULL UNIQUE CHECK (leaf_idx >= 0),
    sealed_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO evidence_batch_leaves (batch_id, leaf_idx)
    SELECT DISTINCT evidence_batch, evidence_batch FROM readings WHERE evidence_batch IS NOT NULL;

CREATE FUNCTION evidence_batch_leaves_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'evidence_batch_leaves is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER evidence_batch_leaves_append_only BEFORE UPDATE OR DELETE ON evidence_batch_leaves
    FOR EACH ROW EXECUTE FUNCTION evidence_batch_leaves_refuse();
CREATE TRIGGER evidence_batch_leaves_no_truncate BEFORE TRUNCATE ON evidence_batch_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION evidence_batch_leaves_refuse();

CREATE SEQUENCE evidence_batch_ids MINVALUE 0;

DO $$
DECLARE
    top bigint;
BEGIN
    SELECT coalesce(max(evidence_batch) + 1, 0) INTO top FROM readings;
    IF to_regclass('evidence_leaves') IS NOT NULL THEN
        EXECUTE 'SELECT greatest($1, coalesce(max(idx) + 1, 0)) FROM evidence_leaves' INTO top USING top;
    END IF;
    PERFORM setval('evidence_batch_ids', top, false);
END
$$;

-- A writer connection's owner id; it holds pg_advisory_lock(0x6F636F77, id) while it lives.
CREATE SEQUENCE evidence_batch_owners AS integer MINVALUE 1 CYCLE;

-- Batches holding committed readings, not sealed yet. Every reading of a batch lies
-- within span_us of anchor_us (the first reading planned into it): how its rows are found
-- again when its owner is gone. seal_requested: a shipment's close waits for it.
CREATE TABLE evidence_open_batches (
    batch_id        bigint      PRIMARY KEY,
    device_id       text        NOT NULL,
    owner           text        NOT NULL,
    anchor_us       bigint      NOT NULL,
    span_us         bigint      NOT NULL CHECK (span_us > 0),
    opened_at       timestamptz NOT NULL DEFAULT now(),
    seal_requested  timestamptz
);

CREATE INDEX evidence_open_batches_owner ON evidence_open_batches (owner);
CREATE INDEX evidence_open_batches_device ON evidence_open_batches (device_id);
