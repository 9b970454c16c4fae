-- Table checks that passed, by fingerprint (engine build, pipelines, fixtures, the sink tables as
-- the catalog has them): a production boot that finds its fingerprint here takes traffic without
-- replaying every fixture again. A table altered since changes the fingerprint. Safe to empty.
CREATE TABLE IF NOT EXISTS engine_table_checks (
    fingerprint  text        PRIMARY KEY,
    checked_at   timestamptz NOT NULL DEFAULT now()
);
