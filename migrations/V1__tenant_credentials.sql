-- Per-tenant provider credentials (e.g. each organisation's Twilio auth token), encrypted with
-- AES-256-GCM under ENCRYPTION_KEY by the engine: `secret` holds `v1:<key id>:<base64>`, never
-- plaintext. Written by `engine secrets set`, read by verifiers with a `tenant:` section.
CREATE TABLE IF NOT EXISTS tenant_credentials (
    tenant      text        NOT NULL,
    credential  text        NOT NULL,
    secret      text        NOT NULL CHECK (secret LIKE 'v1:%'),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, credential)
);
