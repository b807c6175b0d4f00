-- Alerting: device assignments, custom profiles, alerts with their audit trail, the
-- engine's snapshot (so a running delay survives a restart) and webhook attempts.

-- Which site a device belongs to and which alert profile judges it.
CREATE TABLE devices (
    device_id  text        PRIMARY KEY,
    site_id    text,
    profile_id text,
    name       text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Custom profiles only (Profile.to_dict JSON); the built-in ones come from code.
CREATE TABLE alert_profiles (
    profile_id text        PRIMARY KEY,
    definition jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per alert, upserted on every change. Event-time columns (start, raised_at,
-- cleared_at, peak_at) say when it happened; *_at of people say when they acted.
CREATE TABLE alerts (
    alert_id         bigint           PRIMARY KEY,
    device_id        text             NOT NULL,
    site_id          text,
    profile_id       text             NOT NULL,
    rule_id          text             NOT NULL,
    kind             text             NOT NULL,
    severity         text             NOT NULL,
    state            text             NOT NULL,
    metric           text,
    threshold        double precision,
    start            timestamptz      NOT NULL,
    raised_at        timestamptz      NOT NULL,
    cleared_at       timestamptz,
    peak             double precision,
    peak_at          timestamptz,
    found_late       boolean          NOT NULL DEFAULT false,
    acknowledged_by  text,
    acknowledged_at  timestamptz,
    ack_comment      text,
    resolved_by      text,
    resolved_at      timestamptz,
    resolution_comment text,
    updated_at       timestamptz      NOT NULL
);

CREATE INDEX alerts_raised_at_idx ON alerts (raised_at DESC, alert_id DESC);
CREATE INDEX alerts_device_idx ON alerts (device_id, raised_at DESC);
CREATE INDEX alerts_open_idx ON alerts (state) WHERE state <> 'resolved';

-- Append-only: every change of every alert (seq = its position in the alert's trail).
CREATE TABLE alert_audit (
    id       bigserial   PRIMARY KEY,
    alert_id bigint      NOT NULL REFERENCES alerts (alert_id),
    seq      integer     NOT NULL,
    at       timestamptz NOT NULL,
    actor    text        NOT NULL,
    action   text        NOT NULL,
    comment  text        NOT NULL DEFAULT '',
    detail   jsonb,
    UNIQUE (alert_id, seq)
);

-- The engine's state at one moment (one row, replaced every 30 s and at stop).
CREATE TABLE alert_engine_state (
    id       integer     PRIMARY KEY CHECK (id = 1),
    snapshot jsonb       NOT NULL,
    taken_at timestamptz NOT NULL
);

-- Every webhook attempt, successful or not: failures must be visible to an operator.
CREATE TABLE webhook_deliveries (
    id       bigserial   PRIMARY KEY,
    url      text        NOT NULL,
    event_id text        NOT NULL,
    attempt  integer     NOT NULL,
    status   integer,
    error    text,
    at       timestamptz NOT NULL
);

CREATE INDEX webhook_deliveries_at_idx ON webhook_deliveries (at DESC);
