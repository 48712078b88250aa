-- rae cloud registry, schema version 2.
-- A device_sessions row is rewritten by every batch that touches its
-- session. Pages filled only half way leave room for the new row version
-- on the same page, so PostgreSQL updates it in place (a HOT update: no
-- new index entries); measured in docs/BENCHMARKS.md. Setting it again
-- is harmless (idempotent). CockroachDB accepts `fillfactor` and ignores
-- it (its storage engine has no heap pages).
ALTER TABLE device_sessions SET (fillfactor = 50);
