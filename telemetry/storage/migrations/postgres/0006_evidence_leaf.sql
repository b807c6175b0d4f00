-- The evidence log's leaf (a readings_batch) that covers each reading: a verifier
-- fetches exactly the readings a leaf hashed. NULL for readings stored before the log.
-- No index of its own: readings are fetched by (device_id, ts range), then this.
ALTER TABLE readings ADD COLUMN evidence_leaf bigint;
