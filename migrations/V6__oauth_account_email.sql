-- The account a tenant connected (its email, from the provider's OpenID Connect id_token), so an
-- operator can see which calendar a tenant's bookings go to.
ALTER TABLE oauth_tokens ADD COLUMN IF NOT EXISTS account_email text;
