//! Which tenant (organisation) an id in a provider's payload belongs to: a Vapi assistant id or
//! phone number id -> the org whose calendar a tool call uses. Respond scripts ask with
//! `tenant_of("vapi_assistant", id)`.
//!
//! ```text
//! tenant_aliases (source text, external_id text, tenant text)   primary key (source, external_id)
//! ```
//!
//! Lookups are cached (60 s, 10,000 entries; unknown ids cached as absent, so made-up ids do not
//! reach the database each time), and concurrent lookups of one id share one query. A lookup
//! answers by its deadline (the respond script's budget): its query runs under a statement
//! timeout of what is left, so a locked or slow table costs the answer nothing beyond its budget
//! and the query does not run on after it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::token::{Pending, StoreError};

/// Looks tenants up.
pub trait Directory: Send + Sync {
    /// The tenant `id` of `source` belongs to, answered by `deadline`.
    fn lookup<'a>(
        &'a self,
        source: &'a str,
        id: &'a str,
        deadline: std::time::Instant,
    ) -> Pending<'a, Option<String>>;
}

/// `tenant_aliases` in Postgres, cached.
pub struct PostgresTenants {
    pool: deadpool_postgres::Pool,
    cache: moka::future::Cache<(String, String), Option<Arc<str>>>,
}

impl PostgresTenants {
    pub fn new(pool: deadpool_postgres::Pool) -> PostgresTenants {
        PostgresTenants {
            pool,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        }
    }
}

impl Directory for PostgresTenants {
    fn lookup<'a>(
        &'a self,
        source: &'a str,
        id: &'a str,
        deadline: std::time::Instant,
    ) -> Pending<'a, Option<String>> {
        use tokio_postgres::types::Type;
        let query = async move {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::NoTime);
            }
            let mut client = self.pool.get().await.map_err(StoreError::Pool)?;
            // a transaction, so the timeout is the query's own (SET LOCAL) and works behind a
            // transaction-mode pooler; dropped unfinished, it is rolled back
            let tx = client.transaction().await?;
            tx.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                left.as_millis().max(1)
            ))
            .await?;
            let rows = tx
                .query_typed(
                    "SELECT tenant FROM tenant_aliases WHERE source = $1 AND external_id = $2",
                    &[(&source, Type::TEXT), (&id, Type::TEXT)],
                )
                .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(rows.first().map(|r| Arc::from(r.get::<_, String>(0))))
        };
        Box::pin(async move {
            let cached = self
                .cache
                .try_get_with((source.to_string(), id.to_string()), query);
            let found = tokio::time::timeout_at(deadline.into(), cached)
                .await
                .map_err(|_| StoreError::Timeout)?
                .map_err(StoreError::Shared)?;
            Ok(found.map(|t| t.to_string()))
        })
    }
}

/// Link `id` of `source` to `tenant` (insert or replace): `engine tenants link`.
pub async fn link(
    pool: &deadpool_postgres::Pool,
    source: &str,
    id: &str,
    tenant: &str,
) -> Result<(), StoreError> {
    use tokio_postgres::types::Type;
    let client = pool.get().await.map_err(StoreError::Pool)?;
    client
        .execute_typed(
            "INSERT INTO tenant_aliases (source, external_id, tenant) VALUES ($1, $2, $3) ON CONFLICT (source, external_id) DO UPDATE SET tenant = excluded.tenant, updated_at = now()",
            &[(&source, Type::TEXT), (&id, Type::TEXT), (&tenant, Type::TEXT)],
        )
        .await
        ?;
    Ok(())
}

/// Remove a link; `false` when there was none.
pub async fn unlink(
    pool: &deadpool_postgres::Pool,
    source: &str,
    id: &str,
) -> Result<bool, StoreError> {
    use tokio_postgres::types::Type;
    let client = pool.get().await.map_err(StoreError::Pool)?;
    let n = client
        .execute_typed(
            "DELETE FROM tenant_aliases WHERE source = $1 AND external_id = $2",
            &[(&source, Type::TEXT), (&id, Type::TEXT)],
        )
        .await?;
    Ok(n > 0)
}

/// Every link (of `tenant`), as (source, id, tenant), ordered.
pub async fn list(
    pool: &deadpool_postgres::Pool,
    tenant: Option<&str>,
) -> Result<Vec<(String, String, String)>, StoreError> {
    use tokio_postgres::types::Type;
    let client = pool.get().await.map_err(StoreError::Pool)?;
    let rows = client
        .query_typed(
            "SELECT source, external_id, tenant FROM tenant_aliases WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, source, external_id",
            &[(&tenant, Type::TEXT)],
        )
        .await
        ?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// A fixture's stand-in: `source -> id -> tenant`.
pub struct MemoryTenants(pub HashMap<(String, String), String>);

impl Directory for MemoryTenants {
    fn lookup<'a>(
        &'a self,
        source: &'a str,
        id: &'a str,
        _: std::time::Instant,
    ) -> Pending<'a, Option<String>> {
        let found = self.0.get(&(source.to_string(), id.to_string())).cloned();
        Box::pin(async move { Ok(found) })
    }
}
