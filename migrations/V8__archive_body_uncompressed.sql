-- Archived bodies are stored as they are, never compressed by Postgres (STORAGE EXTERNAL: a body
-- that makes its row larger than ~2 KiB goes to the TOAST table uncompressed). V7 kept them in
-- the row with STORAGE MAIN, which still had Postgres try pglz on every body over ~2 KiB: for a
-- body sealed with ENCRYPTION_KEY (random bytes, which never compress) that attempt was all
-- cost, and it was the largest part of the archive's Postgres CPU per event. Measured with the
-- 2.5 KiB Vapi end-of-call report, per row inserted (docs/benchmarks.md, "Event archive"):
-- sealed 30-38 µs with MAIN against 19-26 µs with EXTERNAL; plain JSON 51 µs against 23 µs,
-- for ~50 % more disk on plain bodies. The setting recurses to every partition, and the days
-- made later inherit it.
ALTER TABLE engine_events ALTER COLUMN body SET STORAGE EXTERNAL;
