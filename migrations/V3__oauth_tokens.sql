-- OAuth connections (pipelines with an `oauth` section, e.g. google-calendar): one row per
-- organisation and provider, upserted on every successful connection. access_token and
-- refresh_token hold `v1:<key id>:<base64>` (AES-256-GCM under ENCRYPTION_KEY, context
-- `oauth_tokens.<column>`), never plaintext. event_id / row_index are the sink's idempotency
-- columns (the flow's nonce).
CREATE TABLE IF NOT EXISTS oauth_tokens (
    tenant         text        NOT NULL,
    provider       text        NOT NULL,
    access_token   text        NOT NULL CHECK (access_token LIKE 'v1:%'),
    refresh_token  text                 CHECK (refresh_token LIKE 'v1:%'),
    token_type     text,
    scopes         text[]      NOT NULL DEFAULT '{}',
    expires_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    event_id       text        NOT NULL,
    row_index      integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, provider)
);

-- A flow's `state` may be used once: its nonce is recorded here until the state expires.
CREATE TABLE IF NOT EXISTS oauth_states_used (
    nonce       text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS oauth_states_used_expires_at ON oauth_states_used (expires_at);
