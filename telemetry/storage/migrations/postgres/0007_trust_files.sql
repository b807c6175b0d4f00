-- The evidence leaves of a shipment's opening and closing (shipment_opened /
-- shipment_closed), written in the transaction that opens or closes it, so the public
-- page can prove them; NULL for shipments made before the log.
ALTER TABLE shipments ADD COLUMN opened_leaf bigint;
ALTER TABLE shipments ADD COLUMN closed_leaf bigint;

-- Test reports (检测报告) and origin photos (溯源相册) of a product batch. The bytes live
-- on disk under their SHA-256 (telemetry.files); a row says which batch (and optionally
-- which shipment) a file belongs to and which evidence leaf (test_report or
-- media_manifest) fingerprints it. One file may belong to several batches.
CREATE TABLE batch_files (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_batch text        NOT NULL,
    shipment_id   text,
    kind          text        NOT NULL CHECK (kind IN ('test_report', 'photo')),
    sha256        text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size          bigint      NOT NULL CHECK (size > 0),
    content_type  text        NOT NULL,
    name          text        NOT NULL,
    uploaded_at   timestamptz NOT NULL,
    uploaded_by   text,
    evidence_leaf bigint      NOT NULL
);

CREATE INDEX batch_files_batch_idx ON batch_files (product_batch, id);
CREATE INDEX batch_files_sha_idx ON batch_files (sha256);
CREATE INDEX batch_files_shipment_idx ON batch_files (shipment_id) WHERE shipment_id IS NOT NULL;
