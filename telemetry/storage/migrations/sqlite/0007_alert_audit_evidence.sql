-- The evidence log's alert_event leaf of each audit entry (NULL before the log existed):
-- what a trust page proves of how an excursion was handled.
ALTER TABLE alert_audit ADD COLUMN evidence_leaf INTEGER;
