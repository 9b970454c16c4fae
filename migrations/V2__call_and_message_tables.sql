-- Tables of the shipped pipelines. Every sink row carries event_id and row_index: the default
-- conflict key, so an event delivered twice (the queue is at-least-once) writes its rows once.

CREATE TABLE IF NOT EXISTS call_logs (
    id                 bigserial   PRIMARY KEY,
    call_id            uuid        NOT NULL UNIQUE,   -- the sink upserts on it: one row per call
    org_id             uuid,
    assistant_id       uuid,
    customer_number    text,
    ended_reason       text,                          -- open string: Vapi adds reasons often
    started_at         timestamptz,
    ended_at           timestamptz,
    duration_seconds   numeric(10, 3),
    cost               numeric(12, 6),
    transcript         text,
    summary            text,
    success_evaluation text,
    structured_data    jsonb,
    recording_url      text,
    received_at        timestamptz,
    event_id           text        NOT NULL,
    row_index          integer     NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, row_index)
);

CREATE TABLE IF NOT EXISTS call_status (
    id            bigserial   PRIMARY KEY,
    call_id       uuid        NOT NULL,
    org_id        uuid,
    status        text        NOT NULL,
    ended_reason  text,
    occurred_at   timestamptz NOT NULL,
    event_id      text        NOT NULL,
    row_index     integer     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, row_index)
);
CREATE INDEX IF NOT EXISTS call_status_call_id ON call_status (call_id, occurred_at);

CREATE TABLE IF NOT EXISTS transcripts (
    id          bigserial   PRIMARY KEY,
    call_id     uuid        NOT NULL,
    role        text        NOT NULL,
    text        text        NOT NULL,
    spoken_at   timestamptz NOT NULL,
    event_id    text        NOT NULL,
    row_index   integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, row_index)
);
CREATE INDEX IF NOT EXISTS transcripts_call_id ON transcripts (call_id, spoken_at);

CREATE TABLE IF NOT EXISTS twilio_call_events (
    id                bigserial   PRIMARY KEY,
    call_sid          text        NOT NULL,
    account_sid       text,
    from_number       text,
    to_number         text,
    status            text        NOT NULL,
    direction         text,
    duration_seconds  integer,
    occurred_at       timestamptz NOT NULL,
    event_id          text        NOT NULL,
    row_index         integer     NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, row_index)
);

CREATE TABLE IF NOT EXISTS sms_messages (
    id                   bigserial   PRIMARY KEY,
    message_sid          text        NOT NULL UNIQUE,
    account_sid          text,
    from_number          text,
    to_number            text,
    body                 text        NOT NULL DEFAULT '',
    num_media            integer     NOT NULL DEFAULT 0 CHECK (num_media BETWEEN 0 AND 10),
    media_urls           text[]      NOT NULL DEFAULT '{}',
    media_content_types  text[]      NOT NULL DEFAULT '{}',
    received_at          timestamptz NOT NULL,
    event_id             text        NOT NULL,
    row_index            integer     NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, row_index)
);
