-- Readings, keyed by (device_id, ts): a redelivered message is a no-op.
-- ts and received_at are INTEGER microseconds since the Unix epoch (UTC): compact,
-- exact and sortable; door_open is 0/1/NULL. WITHOUT ROWID: the key is the table.
CREATE TABLE readings (
    device_id   TEXT    NOT NULL,
    ts          INTEGER NOT NULL,
    temp_c      REAL    NOT NULL,
    rh          REAL,
    battery_v   REAL,
    door_open   INTEGER,
    seq         INTEGER,
    received_at INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)),
    PRIMARY KEY (device_id, ts)
) WITHOUT ROWID;
