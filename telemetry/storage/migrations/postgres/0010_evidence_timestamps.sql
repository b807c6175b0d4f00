-- RFC 3161 time anchoring (web.tsa): at a shipment's close the checkpoint then signed is
-- sent to a timestamp authority; its answer is kept here, keyed like the checkpoint it
-- covers. A row without a response is a request still to be made (the authority was
-- down): it is retried until answered. A response, once stored, never changes.
CREATE TABLE evidence_timestamps (
    key_name     text        NOT NULL,
    key_id       bigint      NOT NULL,
    tree_size    bigint      NOT NULL CHECK (tree_size > 0),
    note         text        NOT NULL,
    tsa_url      text        NOT NULL,
    requested_at timestamptz NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    -- the whole TimeStampResp (DER): status and token, what rfc3161-client reads back
    response     bytea,
    gen_time     timestamptz,
    stamped_at   timestamptz,
    PRIMARY KEY (key_name, key_id, tree_size)
);

CREATE INDEX evidence_timestamps_pending ON evidence_timestamps (requested_at) WHERE response IS NULL;

CREATE FUNCTION evidence_timestamp_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR OLD.response IS NOT NULL THEN
        RAISE EXCEPTION 'a stored timestamp token is kept as it is: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER evidence_timestamps_keep BEFORE UPDATE OR DELETE ON evidence_timestamps
    FOR EACH ROW EXECUTE FUNCTION evidence_timestamp_keep();
