-- The evidence leaves of a shipment's opening and closing (shipment_opened /
-- shipment_closed), written in the transaction that opens or closes it; NULL for
-- shipments made before the log.
ALTER TABLE shipments ADD COLUMN opened_leaf INTEGER;
ALTER TABLE shipments ADD COLUMN closed_leaf INTEGER;

-- Test reports and origin photos of a product batch (see the PostgreSQL migration);
-- times are INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE batch_files (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    product_batch TEXT    NOT NULL,
    shipment_id   TEXT,
    kind          TEXT    NOT NULL CHECK (kind IN ('test_report', 'photo')),
    sha256        TEXT    NOT NULL CHECK (length(sha256) = 64),
    size          INTEGER NOT NULL CHECK (size > 0),
    content_type  TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    uploaded_at   INTEGER NOT NULL,
    uploaded_by   TEXT,
    evidence_leaf INTEGER NOT NULL
);

CREATE INDEX batch_files_batch_idx ON batch_files (product_batch, id);
CREATE INDEX batch_files_sha_idx ON batch_files (sha256);
