-- Readings, keyed by (device_id, ts): a redelivered message is a no-op.
-- On TimescaleDB the store turns this table into a hypertable after the migrations
-- (the primary key includes the time column, as a hypertable requires).
CREATE TABLE readings (
    device_id   text        NOT NULL,
    ts          timestamptz NOT NULL,
    temp_c      real        NOT NULL,
    rh          real,
    battery_v   real,
    door_open   boolean,
    seq         bigint,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, ts)
);
