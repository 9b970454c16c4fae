-- An archived event stays in one heap row up to ~8 KiB (toast_tuple_target = 8160, the most a
-- page holds) instead of having its body moved to the TOAST table once the row passes ~2 KiB.
-- With V8's STORAGE EXTERNAL (never compressed) a 2.5 KiB Vapi end-of-call report, sealed to
-- 3.4 KiB, made three inserts per event: the row, the TOAST chunks and the TOAST index entries.
-- Kept inline it is one. Measured per row inserted (docs/benchmarks.md, "Event archive"):
-- 40-47 µs with the default target against 32-38 µs with 8160, and 11 % less disk. Bodies
-- larger than a page still go to TOAST, uncompressed.
--
-- A storage parameter cannot be set on a partitioned table, so it is set on each partition
-- that exists; the engine makes the coming days' partitions with it (archive::postgres).
DO $$
DECLARE part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = 'engine_events'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (toast_tuple_target = 8160)', part);
    END LOOP;
END $$;
