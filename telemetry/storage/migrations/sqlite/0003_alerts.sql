-- Alerting: device assignments, custom profiles, alerts with their audit trail, the
-- engine's snapshot (so a running delay survives a restart) and webhook attempts.
-- Times are INTEGER microseconds since the Unix epoch (UTC); JSON is TEXT.

CREATE TABLE devices (
    device_id  TEXT    PRIMARY KEY,
    site_id    TEXT,
    profile_id TEXT,
    name       TEXT,
    updated_at INTEGER NOT NULL
);

CREATE TABLE alert_profiles (
    profile_id TEXT    PRIMARY KEY,
    definition TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE alerts (
    alert_id         INTEGER PRIMARY KEY,
    device_id        TEXT    NOT NULL,
    site_id          TEXT,
    profile_id       TEXT    NOT NULL,
    rule_id          TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    severity         TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    metric           TEXT,
    threshold        REAL,
    start            INTEGER NOT NULL,
    raised_at        INTEGER NOT NULL,
    cleared_at       INTEGER,
    peak             REAL,
    peak_at          INTEGER,
    found_late       INTEGER NOT NULL DEFAULT 0,
    acknowledged_by  TEXT,
    acknowledged_at  INTEGER,
    ack_comment      TEXT,
    resolved_by      TEXT,
    resolved_at      INTEGER,
    resolution_comment TEXT,
    updated_at       INTEGER NOT NULL
);

CREATE INDEX alerts_raised_at_idx ON alerts (raised_at DESC, alert_id DESC);
CREATE INDEX alerts_device_idx ON alerts (device_id, raised_at DESC);

CREATE TABLE alert_audit (
    id       INTEGER PRIMARY KEY,
    alert_id INTEGER NOT NULL REFERENCES alerts (alert_id),
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    comment  TEXT    NOT NULL DEFAULT '',
    detail   TEXT,
    UNIQUE (alert_id, seq)
);

CREATE TABLE alert_engine_state (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot TEXT    NOT NULL,
    taken_at INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id       INTEGER PRIMARY KEY,
    url      TEXT    NOT NULL,
    event_id TEXT    NOT NULL,
    attempt  INTEGER NOT NULL,
    status   INTEGER,
    error    TEXT,
    at       INTEGER NOT NULL
);

CREATE INDEX webhook_deliveries_at_idx ON webhook_deliveries (at DESC);
