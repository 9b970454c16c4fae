-- The event archive (docs/events.md): every event a pipeline accepted, with its story, kept for
-- the pipeline's `archive.keep`. Partitioned by the day the event arrived, so retention drops a
-- whole day at once; the engine creates the coming days' partitions itself (and drops expired
-- ones). Rows that fit no day partition land in the default one.
CREATE TABLE IF NOT EXISTS engine_events (
    received_at  timestamptz NOT NULL,
    pipeline     text        NOT NULL,
    event_id     text        NOT NULL,
    -- the pipeline's `archive.index` fields: what a search reads
    fields       jsonb       NOT NULL DEFAULT '{}',
    -- the queue's stored form of the request, without its body (credential headers removed)
    meta         text        NOT NULL,
    -- the raw body, or `v1:...` sealed with ENCRYPTION_KEY to engine_events/<pipeline>/<event id>
    body         bytea       NOT NULL,
    sealed       boolean     NOT NULL DEFAULT false,
    -- the latest step's outcome: written, dropped, retrying, dead, failed
    outcome      text        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    story        jsonb       NOT NULL DEFAULT '[]',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, event_id, received_at)
) PARTITION BY RANGE (received_at);

-- A request of a few KiB stays in the row (compressed where it compresses) instead of going
-- to the TOAST table: one heap insert per event, not three.
ALTER TABLE engine_events ALTER COLUMN body SET STORAGE MAIN;

CREATE TABLE IF NOT EXISTS engine_events_default PARTITION OF engine_events DEFAULT;
ALTER TABLE engine_events_default ALTER COLUMN body SET STORAGE MAIN;

CREATE INDEX IF NOT EXISTS engine_events_by_time ON engine_events (pipeline, received_at DESC);
CREATE INDEX IF NOT EXISTS engine_events_by_field ON engine_events USING gin (fields jsonb_path_ops);

-- Replays of archived events (`engine events replay`): a job survives the process that started
-- it and resumes from its cursor.
CREATE TABLE IF NOT EXISTS engine_event_replays (
    id            text        PRIMARY KEY,
    pipeline      text        NOT NULL,
    filter        jsonb       NOT NULL,
    status        text        NOT NULL,
    matched       bigint      NOT NULL DEFAULT 0,
    done          bigint      NOT NULL DEFAULT 0,
    counts        jsonb       NOT NULL DEFAULT '{}',
    cursor_at     timestamptz,
    cursor_id     text,
    rate          integer     NOT NULL,
    force         boolean     NOT NULL DEFAULT false,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- Erasures done (`engine events erase`): the field and a SHA-256 of the value, never the value.
CREATE TABLE IF NOT EXISTS engine_event_erasures (
    at            timestamptz NOT NULL DEFAULT now(),
    pipeline      text,
    conditions    text[]      NOT NULL,
    archived      bigint      NOT NULL,
    dead_letters  bigint      NOT NULL
);
