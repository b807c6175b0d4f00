-- Shipments: a product batch's journey, the devices that watched it (segments, in order,
-- never overlapping) and the streams linked to it. Saved whole under optimistic
-- concurrency (version). Times are INTEGER microseconds since the Unix epoch (UTC).

CREATE TABLE shipments (
    id          TEXT    PRIMARY KEY,
    product     TEXT    NOT NULL,
    batch       TEXT    NOT NULL,
    origin_site TEXT    NOT NULL,
    profile_id  TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('open', 'closed')),
    opened_at   INTEGER NOT NULL,
    closed_at   INTEGER,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK ((state = 'closed') = (closed_at IS NOT NULL))
);

CREATE INDEX shipments_opened_idx ON shipments (opened_at DESC, id);

CREATE TABLE shipment_segments (
    shipment_id TEXT    NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    device_id   TEXT    NOT NULL,
    start_at    INTEGER NOT NULL,
    end_at      INTEGER,
    label       TEXT,
    PRIMARY KEY (shipment_id, position),
    CHECK (end_at IS NULL OR end_at > start_at)
);

CREATE INDEX shipment_segments_device_idx ON shipment_segments (device_id, start_at);

CREATE TABLE shipment_streams (
    shipment_id TEXT    NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    stream_slug TEXT    NOT NULL,
    PRIMARY KEY (shipment_id, position),
    UNIQUE (shipment_id, stream_slug)
);

CREATE INDEX alerts_device_start_idx ON alerts (device_id, start);
