//! The OAuth tokens' Postgres store (`oauth_tokens`), each token sealed to its row: what
//! connections read a tenant's access token from, save a refreshed one to, and mark revoked
//! grants in. The token logic itself (refresh under one lock per tenant) is `connection::token`.

use super::token::{Pending, Stored, TokenStore};

/// Tokens in `oauth_tokens` (Postgres), each sealed to its row: the context is the column and
/// the row's (tenant, provider), as the OAuth pipeline's sink writes them
/// (`sink::postgres::row_context`). A token sealed to its column only (before rows were bound) is
/// still read, and sealed again to its row then; `engine migrate` reseals every such row.
pub struct Postgres {
    pub pool: deadpool_postgres::Pool,
    pub keyring: crate::crypto::Keyring,
}

const TABLE: &str = "oauth_tokens";

/// The context a token of `column` in the row of (`tenant`, `provider`) is sealed to.
pub fn token_context(column: &str, tenant: &str, provider: &str) -> String {
    crate::sink::postgres::row_context(TABLE, column, &[tenant.to_string(), provider.to_string()])
}

/// The context tokens were sealed to before rows were bound: the column alone.
fn column_context(column: &str) -> String {
    format!("{TABLE}.{column}")
}

/// Whether a token was opened under its row's context, or under the column's alone (to reseal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sealed {
    ToRow,
    ToColumn,
}

impl Postgres {
    /// Open `value` of `column` in the row of (`tenant`, `provider`).
    fn open(
        &self,
        value: &str,
        column: &str,
        tenant: &str,
        provider: &str,
    ) -> Result<(String, Sealed), String> {
        let (plain, sealed) = match self
            .keyring
            .decrypt(value, &token_context(column, tenant, provider))
        {
            Ok(p) => (p, Sealed::ToRow),
            Err(_) => self
                .keyring
                .decrypt(value, &column_context(column))
                .map(|p| (p, Sealed::ToColumn))
                .map_err(|e| format!("{TABLE}.{column}: {e}"))?,
        };
        let text = String::from_utf8(plain).map_err(|_| format!("{TABLE}.{column}: not text"))?;
        Ok((text, sealed))
    }

    /// Seal the row's tokens to the row, where they are sealed to their column only; whether it
    /// changed the row. Only a row still holding the values read is written.
    async fn reseal(
        &self,
        client: &deadpool_postgres::Client,
        tenant: &str,
        provider: &str,
        stored: (&str, Option<&str>),
    ) -> Result<bool, String> {
        use tokio_postgres::types::Type;
        let (access, access_seal) = self.open(stored.0, "access_token", tenant, provider)?;
        let refresh = stored
            .1
            .map(|r| self.open(r, "refresh_token", tenant, provider))
            .transpose()?;
        if access_seal == Sealed::ToRow && refresh.as_ref().is_none_or(|r| r.1 == Sealed::ToRow) {
            return Ok(false);
        }
        let new_access = self.keyring.encrypt(
            access.as_bytes(),
            &token_context("access_token", tenant, provider),
        );
        let new_refresh = refresh.map(|(r, _)| {
            self.keyring.encrypt(
                r.as_bytes(),
                &token_context("refresh_token", tenant, provider),
            )
        });
        let n = client
            .execute_typed(
                "UPDATE oauth_tokens SET access_token = $3, refresh_token = $4 WHERE tenant = $1 AND provider = $2 AND access_token = $5 AND refresh_token IS NOT DISTINCT FROM $6",
                &[
                    (&tenant, Type::TEXT),
                    (&provider, Type::TEXT),
                    (&new_access, Type::TEXT),
                    (&new_refresh, Type::TEXT),
                    (&stored.0, Type::TEXT),
                    (&stored.1, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| crate::db::describe(&e))?;
        Ok(n == 1)
    }

    /// Reseal every row whose tokens are sealed to their column only (`engine migrate`): how
    /// many rows were resealed, and the rows that do not open under the keyring (left as they are).
    pub async fn reseal_all(&self) -> Result<(u64, Vec<String>), String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let rows = client
            .query(
                "SELECT tenant, provider, access_token, refresh_token FROM oauth_tokens",
                &[],
            )
            .await
            .map_err(|e| crate::db::describe(&e))?;
        let mut done = 0;
        let mut failed = Vec::new();
        for row in rows {
            let (tenant, provider): (String, String) = (row.get(0), row.get(1));
            let access: String = row.get(2);
            let refresh: Option<String> = row.get(3);
            match self
                .reseal(&client, &tenant, &provider, (&access, refresh.as_deref()))
                .await
            {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => failed.push(format!("tenant {tenant}, provider {provider}: {e}")),
            }
        }
        Ok((done, failed))
    }
}

impl TokenStore for Postgres {
    fn load<'a>(&'a self, provider: &'a str, tenant: &'a str) -> Pending<'a, Option<Stored>> {
        use tokio_postgres::types::Type;
        Box::pin(async move {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let row = client
                .query_typed(
                    "SELECT access_token, refresh_token, extract(epoch FROM expires_at)::bigint, disconnected_reason FROM oauth_tokens WHERE tenant = $1 AND provider = $2",
                    &[(&tenant, Type::TEXT), (&provider, Type::TEXT)],
                )
                .await
                .map_err(|e| crate::db::describe(&e))?;
            let Some(row) = row.first() else {
                return Ok(None);
            };
            let access: String = row.get(0);
            let refresh: Option<String> = row.get(1);
            let (access_token, access_seal) =
                self.open(&access, "access_token", tenant, provider)?;
            let refresh_token = refresh
                .as_deref()
                .map(|r| self.open(r, "refresh_token", tenant, provider))
                .transpose()?;
            if access_seal == Sealed::ToColumn
                || refresh_token
                    .as_ref()
                    .is_some_and(|r| r.1 == Sealed::ToColumn)
            {
                // sealed before rows were bound: bind it now (a failure only delays that)
                if let Err(e) = self
                    .reseal(&client, tenant, provider, (&access, refresh.as_deref()))
                    .await
                {
                    tracing::warn!(tenant, provider, error = %e, "could not reseal the tenant's tokens to their row");
                }
            }
            Ok(Some(Stored {
                access_token,
                refresh_token: refresh_token.map(|(r, _)| r),
                expires_at: row.get(2),
                disconnected: row.get(3),
            }))
        })
    }

    fn save<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
        access_token: &'a str,
        expires_at: Option<i64>,
    ) -> Pending<'a, ()> {
        use tokio_postgres::types::Type;
        Box::pin(async move {
            let sealed = self.keyring.encrypt(
                access_token.as_bytes(),
                &token_context("access_token", tenant, provider),
            );
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute_typed(
                    "UPDATE oauth_tokens SET access_token = $3, expires_at = to_timestamp($4::bigint), updated_at = now() WHERE tenant = $1 AND provider = $2",
                    &[
                        (&tenant, Type::TEXT),
                        (&provider, Type::TEXT),
                        (&sealed, Type::TEXT),
                        (&expires_at, Type::INT8),
                    ],
                )
                .await
                .map_err(|e| crate::db::describe(&e))?;
            Ok(())
        })
    }

    fn disconnect<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
        reason: &'a str,
    ) -> Pending<'a, bool> {
        use tokio_postgres::types::Type;
        Box::pin(async move {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            // only the first instance to see the revocation marks it (and alerts)
            let n = client
                .execute_typed(
                    "UPDATE oauth_tokens SET disconnected_at = now(), disconnected_reason = $3, updated_at = now() WHERE tenant = $1 AND provider = $2 AND disconnected_at IS NULL",
                    &[
                        (&tenant, Type::TEXT),
                        (&provider, Type::TEXT),
                        (&reason, Type::TEXT),
                    ],
                )
                .await
                .map_err(|e| crate::db::describe(&e))?;
            Ok(n == 1)
        })
    }
}
