-- Which optional server features the last migrate() enabled (hypertable, compression,
-- retention policy, continuous aggregate); read back by PostgresStore.features().
CREATE TABLE storage_features (
    feature    text        PRIMARY KEY,
    enabled    boolean     NOT NULL,
    detail     text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
