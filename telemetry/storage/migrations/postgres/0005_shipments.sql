-- Shipments: a product batch's journey, the devices that watched it (segments, in order,
-- never overlapping) and the streams linked to it. Saved whole under optimistic
-- concurrency (version).

CREATE TABLE shipments (
    id          text        PRIMARY KEY,
    product     text        NOT NULL,
    batch       text        NOT NULL,
    origin_site text        NOT NULL,
    profile_id  text        NOT NULL,
    state       text        NOT NULL CHECK (state IN ('open', 'closed')),
    opened_at   timestamptz NOT NULL,
    closed_at   timestamptz,
    version     integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'closed') = (closed_at IS NOT NULL))
);

CREATE INDEX shipments_opened_idx ON shipments (opened_at DESC, id);

CREATE TABLE shipment_segments (
    shipment_id text        NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    position    integer     NOT NULL,
    device_id   text        NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz,
    label       text,
    PRIMARY KEY (shipment_id, position),
    CHECK (end_at IS NULL OR end_at > start_at)
);

-- Which shipments a device carried, and when (the evidence log and the console ask).
CREATE INDEX shipment_segments_device_idx ON shipment_segments (device_id, start_at);

CREATE TABLE shipment_streams (
    shipment_id text    NOT NULL REFERENCES shipments (id) ON DELETE CASCADE,
    position    integer NOT NULL,
    stream_slug text    NOT NULL,
    PRIMARY KEY (shipment_id, position),
    UNIQUE (shipment_id, stream_slug)
);

-- A report asks for one device's alerts overlapping a window.
CREATE INDEX alerts_device_start_idx ON alerts (device_id, start);
