-- rae cloud registry, schema version 3.
-- A device_attributes row is rewritten whenever its value changes. The
-- (name, value) index of version 1 made every such rewrite a new row
-- version plus new index entries (value is indexed), the most expensive
-- statement per row of a batch (docs/BENCHMARKS.md). Without it, and with
-- pages filled only half way, PostgreSQL rewrites the row in place (a HOT
-- update: no index is touched); CockroachDB, which writes an index entry
-- only when one of its columns changes, no longer writes one either.
-- The price: a fleet-wide `devices --attr` filter scans the attribute
-- table (measured: 28 ms -> 111 ms at 100,000 devices); with `--box` it
-- still tests each device through the primary key (session_id, name).
-- Every statement is idempotent; CockroachDB accepts `fillfactor` and
-- ignores it (its storage engine has no heap pages).
DROP INDEX IF EXISTS device_attributes_by_value;
ALTER TABLE device_attributes SET (fillfactor = 50);
