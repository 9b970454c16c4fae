//! Per-tenant secrets from Postgres: each organisation's own provider credentials (the seed's
//! orgs store their Twilio auth tokens), encrypted at rest with [`crate::crypto`].
//!
//! ```text
//! tenant_credentials (tenant text, credential text, secret text, updated_at timestamptz)
//!                     primary key (tenant, credential); secret = v1:<key id>:<ciphertext>
//! ```
//!
//! Lookups go through an in-memory cache with a TTL and a bounded size, so a burst of webhooks for
//! one tenant costs one query, and a flood of made-up tenant ids cannot grow memory without bound.
//! Unknown tenants are cached too (as absent), so forged requests do not reach the database each
//! time. Concurrent lookups of one key share a single query.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use crate::crypto::{CryptoError, Keyring};

/// Table holding the credentials (created by `migrations/V1__tenant_credentials.sql`).
pub const TABLE: &str = "tenant_credentials";

/// Why a secret could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TenantError {
    #[error("tenant credentials database unavailable: {0}")]
    Database(String),
    #[error("tenant credential cannot be decrypted: {0}")]
    Crypto(#[from] CryptoError),
}

/// Encryption context binding a stored value to its row.
fn context(tenant: &str, credential: &str) -> String {
    format!("{TABLE}/{tenant}/{credential}")
}

/// The store: a pool, the keyring and the cache.
pub struct TenantSecrets {
    pool: Pool,
    keyring: Keyring,
    cache: moka::future::Cache<(String, String), Option<Arc<String>>>,
}

impl std::fmt::Debug for TenantSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSecrets")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl TenantSecrets {
    /// A store over `pool`; cached entries live `ttl` and at most `capacity` are kept.
    pub fn new(pool: Pool, keyring: Keyring, ttl: Duration, capacity: u64) -> TenantSecrets {
        TenantSecrets {
            pool,
            keyring,
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The decrypted secret, `None` for an unknown tenant or credential.
    pub async fn get(
        &self,
        tenant: &str,
        credential: &str,
    ) -> Result<Option<Arc<String>>, TenantError> {
        let key = (tenant.to_string(), credential.to_string());
        let result = if self.cache.contains_key(&key) {
            "hit"
        } else {
            "miss"
        };
        metrics::counter!("engine_tenant_secret_lookups_total", "result" => result).increment(1);
        self.cache
            .try_get_with(key, self.fetch(tenant, credential))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn fetch(
        &self,
        tenant: &str,
        credential: &str,
    ) -> Result<Option<Arc<String>>, TenantError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| TenantError::Database(e.to_string()))?;
        let row = client
            .query_typed_opt(
                "SELECT secret FROM tenant_credentials WHERE tenant = $1 AND credential = $2",
                &[(&tenant, Type::TEXT), (&credential, Type::TEXT)],
            )
            .await
            .map_err(|e| TenantError::Database(crate::db::describe(&e)))?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.get(0);
        let plain = self
            .keyring
            .decrypt(&stored, &context(tenant, credential))?;
        let text = String::from_utf8(plain).map_err(|_| CryptoError::Decrypt)?;
        Ok(Some(Arc::new(text)))
    }

    /// Whether the last lookup of this pair was served from the cache (entry present).
    pub fn is_cached(&self, tenant: &str, credential: &str) -> bool {
        self.cache
            .contains_key(&(tenant.to_string(), credential.to_string()))
    }

    /// Encrypt and store a secret (insert or replace), and drop any cached copy.
    pub async fn set(
        &self,
        tenant: &str,
        credential: &str,
        secret: &str,
    ) -> Result<(), TenantError> {
        store(&self.pool, &self.keyring, tenant, credential, secret).await?;
        self.cache
            .invalidate(&(tenant.to_string(), credential.to_string()))
            .await;
        Ok(())
    }
}

/// Encrypt and upsert one credential.
pub async fn store(
    pool: &Pool,
    keyring: &Keyring,
    tenant: &str,
    credential: &str,
    secret: &str,
) -> Result<(), TenantError> {
    let sealed = keyring.encrypt(secret.as_bytes(), &context(tenant, credential));
    let client = pool
        .get()
        .await
        .map_err(|e| TenantError::Database(e.to_string()))?;
    client
        .execute_typed(
            "INSERT INTO tenant_credentials (tenant, credential, secret, updated_at) VALUES ($1, $2, $3, now()) \
             ON CONFLICT (tenant, credential) DO UPDATE SET secret = EXCLUDED.secret, updated_at = now()",
            &[
                (&tenant, Type::TEXT),
                (&credential, Type::TEXT),
                (&sealed, Type::TEXT),
            ],
        )
        .await
        .map_err(|e| TenantError::Database(crate::db::describe(&e)))?;
    Ok(())
}
