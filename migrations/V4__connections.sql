-- Connections (a pipeline's `connections`, e.g. Vapi tool calls answered from a tenant's Google
-- Calendar).
--
-- A stored OAuth connection stops working when the tenant revokes the grant at the provider
-- (the token endpoint answers `invalid_grant`): the engine marks the row here, alerts once (the
-- first instance to mark it), and answers tool calls that the calendar is not connected until
-- the tenant connects again; a new connection clears both columns.
ALTER TABLE oauth_tokens ADD COLUMN IF NOT EXISTS disconnected_at timestamptz;
ALTER TABLE oauth_tokens ADD COLUMN IF NOT EXISTS disconnected_reason text;

-- Which tenant an id in a provider's payload belongs to, for `tenant_of(source, id)` in respond
-- scripts: source `vapi_assistant` (the assistant id, message.call.assistantId) and
-- `vapi_phone_number` (message.call.phoneNumberId) map a Vapi call to the organisation whose
-- calendar it uses. Written by `engine tenants link` or by the web app when an organisation
-- gets its assistant or number.
CREATE TABLE IF NOT EXISTS tenant_aliases (
    source       text        NOT NULL,
    external_id  text        NOT NULL,
    tenant       text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, external_id)
);
CREATE INDEX IF NOT EXISTS tenant_aliases_tenant ON tenant_aliases (tenant);
