-- The evidence log's leaf (a readings_batch) that covers each reading: a verifier
-- fetches exactly the readings a leaf hashed. NULL for readings stored before the log.
ALTER TABLE readings ADD COLUMN evidence_leaf INTEGER;
