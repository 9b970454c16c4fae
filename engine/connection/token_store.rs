//! The OAuth tokens' Postgres store (`oauth_tokens`), each token sealed to its row: what
//! connections read a tenant's access token from, save a refreshed one to, and mark revoked
//! grants in. The token logic itself (refresh under one lock per tenant) is `connection::token`.

use super::token::{Pending, StoreError, StoredConnection, TokenStore};

/// Tokens in `oauth_tokens` (Postgres), each sealed to its row: the context is the column and
/// the row's (tenant, provider), as the OAuth pipeline's sink writes them
/// (`sink::postgres::row_context`). A token sealed to its column only (before rows were bound) is
/// still read, and sealed again to its row then; `engine migrate` reseals every such row.
pub struct PostgresTokens {
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

/// A row's tokens, opened: the plain texts, and whether one is still sealed to its column only
/// (before rows were bound), so the row is to be sealed again.
struct Opened {
    access: String,
    refresh: Option<String>,
    to_reseal: bool,
}

impl PostgresTokens {
    /// Open one token of `column` in the row of (`tenant`, `provider`): under its row's context,
    /// else under the column's alone; whether it was the latter.
    fn open(
        &self,
        value: &str,
        column: &str,
        tenant: &str,
        provider: &str,
    ) -> Result<(String, bool), StoreError> {
        let (plain, by_column) = match self
            .keyring
            .decrypt(value, &token_context(column, tenant, provider))
        {
            Ok(p) => (p, false),
            Err(_) => self
                .keyring
                .decrypt(value, &column_context(column))
                .map(|p| (p, true))
                .map_err(|e| StoreError::Sealed(format!("{TABLE}.{column}"), e))?,
        };
        let text = String::from_utf8(plain)
            .map_err(|_| StoreError::NotText(format!("{TABLE}.{column}")))?;
        Ok((text, by_column))
    }

    /// Open a row's stored tokens (`access`, `refresh`).
    fn open_row(
        &self,
        tenant: &str,
        provider: &str,
        (access, refresh): (&str, Option<&str>),
    ) -> Result<Opened, StoreError> {
        let (access, access_by_column) = self.open(access, "access_token", tenant, provider)?;
        let refresh = refresh
            .map(|r| self.open(r, "refresh_token", tenant, provider))
            .transpose()?;
        Ok(Opened {
            to_reseal: access_by_column || refresh.as_ref().is_some_and(|r| r.1),
            access,
            refresh: refresh.map(|(r, _)| r),
        })
    }

    /// Seal a row's opened tokens to the row; whether it was written. Only a row still holding
    /// the `stored` values is written (another instance may have resealed or refreshed it).
    async fn reseal(
        &self,
        client: &deadpool_postgres::Client,
        tenant: &str,
        provider: &str,
        stored: (&str, Option<&str>),
        opened: &Opened,
    ) -> Result<bool, StoreError> {
        use tokio_postgres::types::Type;
        let seal = |text: &str, column: &str| {
            self.keyring
                .encrypt(text.as_bytes(), &token_context(column, tenant, provider))
        };
        let access = seal(&opened.access, "access_token");
        let refresh = opened.refresh.as_deref().map(|r| seal(r, "refresh_token"));
        let n = client
            .execute_typed(
                "UPDATE oauth_tokens SET access_token = $3, refresh_token = $4 WHERE tenant = $1 AND provider = $2 AND access_token = $5 AND refresh_token IS NOT DISTINCT FROM $6",
                &[
                    (&tenant, Type::TEXT),
                    (&provider, Type::TEXT),
                    (&access, Type::TEXT),
                    (&refresh, Type::TEXT),
                    (&stored.0, Type::TEXT),
                    (&stored.1, Type::TEXT),
                ],
            )
            .await
            ?;
        Ok(n == 1)
    }

    /// Reseal every row whose tokens are sealed to their column only (`engine migrate`): how
    /// many rows were resealed, and the rows that do not open under the keyring (left as they are).
    pub async fn reseal_all(&self) -> Result<(u64, Vec<String>), StoreError> {
        let client = self.pool.get().await.map_err(StoreError::Pool)?;
        let rows = client
            .query(
                "SELECT tenant, provider, access_token, refresh_token FROM oauth_tokens",
                &[],
            )
            .await?;
        let mut done = 0;
        let mut failed = Vec::new();
        for row in rows {
            let (tenant, provider): (String, String) = (row.get(0), row.get(1));
            let access: String = row.get(2);
            let refresh: Option<String> = row.get(3);
            let stored = (access.as_str(), refresh.as_deref());
            let resealed = match self.open_row(&tenant, &provider, stored) {
                Ok(o) if o.to_reseal => self.reseal(&client, &tenant, &provider, stored, &o).await,
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            };
            match resealed {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => failed.push(format!(
                    "tenant {tenant}, provider {provider}: {}",
                    crate::diagnostics::chain(&e)
                )),
            }
        }
        Ok((done, failed))
    }
}

impl TokenStore for PostgresTokens {
    fn load<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
    ) -> Pending<'a, Option<StoredConnection>> {
        use tokio_postgres::types::Type;
        Box::pin(async move {
            let client = self.pool.get().await.map_err(StoreError::Pool)?;
            let row = client
                .query_typed(
                    "SELECT access_token, refresh_token, extract(epoch FROM expires_at)::bigint, disconnected_reason FROM oauth_tokens WHERE tenant = $1 AND provider = $2",
                    &[(&tenant, Type::TEXT), (&provider, Type::TEXT)],
                )
                .await
                ?;
            let Some(row) = row.first() else {
                return Ok(None);
            };
            let access: String = row.get(0);
            let refresh: Option<String> = row.get(1);
            let stored = (access.as_str(), refresh.as_deref());
            let opened = self.open_row(tenant, provider, stored)?;
            // sealed before rows were bound: bind it now (a failure only delays that)
            if opened.to_reseal
                && let Err(e) = self
                    .reseal(&client, tenant, provider, stored, &opened)
                    .await
            {
                tracing::warn!(
                    tenant,
                    provider,
                    error = &e as &dyn std::error::Error,
                    "could not reseal the tenant's tokens to their row"
                );
            }
            Ok(Some(StoredConnection {
                access_token: opened.access,
                refresh_token: opened.refresh,
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
            let client = self.pool.get().await.map_err(StoreError::Pool)?;
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
                ?;
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
            let client = self.pool.get().await.map_err(StoreError::Pool)?;
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
                ?;
            Ok(n == 1)
        })
    }
}
