-- rae cloud registry, schema version 4.
-- With N bridges every box status message reaches Kafka N times, and a
-- lagging bridge's copy of an older message can follow a newer one. A box
-- row now remembers the digests of the last status messages it took
-- (8 bytes each, big-endian, oldest first; at most 32), so the registry
-- applies the first copy of each message and ignores the others
-- (docs/CLOUD.md, "Box status"). NULL on rows written before: nothing
-- remembered. Idempotent; BYTEA and ADD COLUMN IF NOT EXISTS are
-- supported by PostgreSQL and CockroachDB alike.
ALTER TABLE boxes ADD COLUMN IF NOT EXISTS recent_status BYTEA;
