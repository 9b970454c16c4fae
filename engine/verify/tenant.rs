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
//! Unknown tenants are cached too, as absent, in a cache of their own with a short TTL
//! ([`ABSENT_TTL`]): a flood of made-up ids fills that one and never evicts a real tenant's
//! secret. Concurrent lookups of one key share a single query, and at most
//! [`LOOKUPS_AT_ONCE`] queries run at once (a lookup waits up to [`LOOKUP_WAIT`] for its turn,
//! then answers unavailable: 503, which the provider retries), so forged requests cannot take
//! the database's connections. The request path also counts a lookup against the per-IP limit
//! before it is made (`server::dispatch`), and verifiers refuse ids of the wrong shape first.

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

/// How long an unknown tenant is remembered as absent.
pub const ABSENT_TTL: Duration = Duration::from_secs(30);

/// Queries at most in flight at once.
pub const LOOKUPS_AT_ONCE: usize = 8;

/// How long a lookup waits for one of the [`LOOKUPS_AT_ONCE`] places.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);

type TenantKey = (String, String);

/// Why a lookup found no secret: absent (cached as such), or failed (not cached).
#[derive(Debug, Clone)]
enum Miss {
    Absent,
    Failed(TenantError),
}

impl From<TenantError> for Miss {
    fn from(e: TenantError) -> Miss {
        Miss::Failed(e)
    }
}

impl From<CryptoError> for Miss {
    fn from(e: CryptoError) -> Miss {
        Miss::Failed(e.into())
    }
}

/// The store: a pool, the keyring and the caches.
pub struct TenantSecrets {
    pool: Pool,
    keyring: Keyring,
    found: moka::future::Cache<TenantKey, Arc<String>>,
    absent: moka::future::Cache<TenantKey, ()>,
    lookups: tokio::sync::Semaphore,
    queries: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TenantSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSecrets")
            .field("cached", &self.found.entry_count())
            .field("absent", &self.absent.entry_count())
            .finish()
    }
}

impl TenantSecrets {
    /// A store over `pool`; found secrets live `ttl` (unknown tenants [`ABSENT_TTL`] at most) and
    /// each cache keeps at most `capacity`.
    pub fn new(pool: Pool, keyring: Keyring, ttl: Duration, capacity: u64) -> TenantSecrets {
        TenantSecrets {
            pool,
            keyring,
            found: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            absent: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.min(ABSENT_TTL))
                .build(),
            lookups: tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE),
            queries: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The decrypted secret, `None` for an unknown tenant or credential.
    pub async fn get(
        &self,
        tenant: &str,
        credential: &str,
    ) -> Result<Option<Arc<String>>, TenantError> {
        let key = (tenant.to_string(), credential.to_string());
        if self.absent.contains_key(&key) {
            metrics::counter!("engine_tenant_secret_lookups_total", "result" => "hit").increment(1);
            return Ok(None);
        }
        let result = if self.found.contains_key(&key) {
            "hit"
        } else {
            "miss"
        };
        metrics::counter!("engine_tenant_secret_lookups_total", "result" => result).increment(1);
        match self
            .found
            .try_get_with(key.clone(), self.fetch(tenant, credential))
            .await
        {
            Ok(secret) => Ok(Some(secret)),
            Err(miss) => match &*miss {
                Miss::Absent => {
                    self.absent.insert(key, ()).await;
                    Ok(None)
                }
                Miss::Failed(e) => Err(e.clone()),
            },
        }
    }

    /// Database queries made so far (lookups the caches did not answer).
    pub fn queries(&self) -> u64 {
        self.queries.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn fetch(&self, tenant: &str, credential: &str) -> Result<Arc<String>, Miss> {
        let _turn = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire())
            .await
            .map_err(|_| {
                metrics::counter!("engine_tenant_secret_lookups_total", "result" => "busy")
                    .increment(1);
                TenantError::Database(format!(
                    "{LOOKUPS_AT_ONCE} tenant lookups already in flight for {}s (answered 503; the provider retries): a slow database, or a flood of unknown tenant ids — see engine_tenant_secret_lookups_total by result and the verification failures by client_ip",
                    LOOKUP_WAIT.as_secs()
                ))
            })?
            .map_err(|_| TenantError::Database("the tenant store is closing".into()))?;
        self.queries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let Some(row) = row else {
            return Err(Miss::Absent);
        };
        let stored: String = row.get(0);
        let plain = self
            .keyring
            .decrypt(&stored, &context(tenant, credential))?;
        let text = String::from_utf8(plain).map_err(|_| CryptoError::Decrypt)?;
        Ok(Arc::new(text))
    }

    /// Whether a lookup of this pair would be answered from a cache (found or absent).
    pub fn is_cached(&self, tenant: &str, credential: &str) -> bool {
        let key = (tenant.to_string(), credential.to_string());
        self.found.contains_key(&key) || self.absent.contains_key(&key)
    }

    /// Encrypt and store a secret (insert or replace), and drop any cached copy.
    pub async fn set(
        &self,
        tenant: &str,
        credential: &str,
        secret: &str,
    ) -> Result<(), TenantError> {
        store(&self.pool, &self.keyring, tenant, credential, secret).await?;
        let key = (tenant.to_string(), credential.to_string());
        self.found.invalidate(&key).await;
        self.absent.invalidate(&key).await;
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
