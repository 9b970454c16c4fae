//! A tenant's OAuth access token for a connection with `auth: {oauth: <pipeline>}`: read from
//! the tokens that pipeline stored (`oauth_tokens`, encrypted), refreshed with the stored
//! refresh token when expired or answered 401, and the new one stored encrypted.
//!
//! ```text
//! access(tenant, None)    slot of (provider, tenant), locked: concurrent callers queue here,
//!   fresh token in slot -> it          so one refresh serves them all
//!   else load the stored row (another instance may have refreshed it)
//!     none -> NotConnected;  disconnected -> Disconnected;  fresh -> it
//!     expired -> refresh: POST token_url grant_type=refresh_token
//!        200 -> store encrypted, slot -> the new token
//!        invalid_grant -> mark the row disconnected (first marker alerts Slack), Disconnected
//!        else -> Unavailable (nothing changes; the next call tries again)
//! access(tenant, Some(stale)), after a 401 -> any token but `stale` (another caller may have
//!                             replaced it: the slot's or the stored one), else a refresh as above
//! ```
//!
//! Slots are bounded (10,000 tenants, idle an hour); a tenant with no usable connection is
//! remembered for a second: its row is read again at most once a second per instance (the
//! slot's lock makes concurrent callers share that read), so a reconnection through the OAuth
//! flow on any instance is seen everywhere within a second, and a disconnected tenant's tool
//! calls still cannot make every call read the database.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use super::transport::{NoAnswer, Outbound, Transport};
use crate::config::oauth::ClientAuth;

/// How long before its expiry a token is refreshed instead of used.
const EARLY: i64 = 60;
/// How long "not connected" / "disconnected" is believed before the row is read again: short
/// enough that a tenant who connects again is served at once (issue: 30 s kept answering "not
/// connected" after a reconnect), long enough that a burst of calls reads the row once.
const GONE_RECHECK: Duration = Duration::from_secs(1);
const MAX_TENANTS: u64 = 10_000;

pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a stored row (a token, a tenant alias) could not be read or written. Shared by the
/// callers a cache answers at once (`Shared`); never holds a token or a URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable")]
    Pool(#[source] deadpool_postgres::PoolError),
    #[error("{}", crate::db::describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("{0} cannot be opened")]
    Sealed(String, #[source] crate::crypto::CryptoError),
    #[error("{0}: not text")]
    NotText(String),
    #[error("no time left to look the tenant up")]
    NoTime,
    #[error("the tenant lookup did not answer in time")]
    Timeout,
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
}

/// A stored connection, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConnection {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Why the grant stopped working, once it did.
    pub disconnected: Option<String>,
}

/// Where tokens live: `oauth_tokens` in Postgres, or a fixture's stand-in.
pub trait TokenStore: Send + Sync {
    fn load<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
    ) -> Pending<'a, Option<StoredConnection>>;
    /// Store a refreshed access token (encrypted).
    fn save<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
        access_token: &'a str,
        expires_at: Option<i64>,
    ) -> Pending<'a, ()>;
    /// Mark the connection disconnected; `true` when this call did (it was not before).
    fn disconnect<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
        reason: &'a str,
    ) -> Pending<'a, bool>;
}

/// Why there is no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The tenant never connected (or there is no database to read).
    NotConnected,
    /// The grant was revoked or expired at the provider: the tenant must connect again.
    Disconnected,
    /// The store or the token endpoint failed, or the budget ran out: try again later.
    Unavailable(String),
    Timeout,
}

/// The token endpoint's client credentials: the `oauth` pipeline's.
#[derive(Debug, Clone)]
pub struct Client {
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: String,
    pub client_auth: ClientAuth,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
enum Slot {
    Unknown,
    Ready {
        access: String,
        refresh: Option<String>,
        expires_at: Option<i64>,
    },
    Gone {
        error: TokenError,
        since: Instant,
    },
}

/// One provider's tokens (one `oauth` pipeline's), shared by every connection using them.
pub struct Tokens {
    pub provider: String,
    client: Client,
    store: Arc<dyn TokenStore>,
    transport: Arc<dyn Transport>,
    alert: super::Alert,
    slots: moka::sync::Cache<String, Arc<Mutex<Slot>>>,
}

impl Tokens {
    pub fn new(
        provider: &str,
        client: Client,
        store: Arc<dyn TokenStore>,
        transport: Arc<dyn Transport>,
        alert: super::Alert,
    ) -> Tokens {
        Tokens {
            provider: provider.to_string(),
            client,
            store,
            transport,
            alert,
            slots: moka::sync::Cache::builder()
                .max_capacity(MAX_TENANTS)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
        }
    }

    fn slot(&self, tenant: &str) -> Arc<Mutex<Slot>> {
        self.slots
            .get_with(tenant.to_string(), || Arc::new(Mutex::new(Slot::Unknown)))
    }

    /// A usable access token of `tenant` at `now` (Unix seconds) by `deadline`: the slot's or
    /// the stored one while fresh, else refreshed. `rejected`: the token the service has just
    /// answered 401 to; any other one will do (a concurrent caller may already have replaced
    /// it), else a refresh.
    pub async fn access(
        &self,
        tenant: &str,
        rejected: Option<&str>,
        now: i64,
        deadline: Instant,
    ) -> Result<String, TokenError> {
        let usable = |access: &str, expires_at: Option<i64>| match rejected {
            None => fresh(expires_at, now),
            Some(stale) => access != stale,
        };
        self.within(deadline, async {
            let slot = self.slot(tenant);
            let mut s = slot.lock().await;
            match &*s {
                Slot::Ready {
                    access, expires_at, ..
                } if usable(access, *expires_at) => return Ok(access.clone()),
                Slot::Gone { error, since } if since.elapsed() < GONE_RECHECK => {
                    return Err(error.clone());
                }
                _ => {}
            }
            // the stored row: another instance may have refreshed it
            let refresh = match self.load(tenant, &mut s).await? {
                Slot::Ready {
                    access, expires_at, ..
                } if usable(&access, expires_at) => return Ok(access),
                Slot::Ready { refresh, .. } => refresh,
                _ => None,
            };
            self.refresh(tenant, refresh, now, deadline, &mut s).await
        })
        .await
    }

    async fn within(
        &self,
        deadline: Instant,
        f: impl Future<Output = Result<String, TokenError>>,
    ) -> Result<String, TokenError> {
        match tokio::time::timeout_at(deadline.into(), f).await {
            Ok(r) => r,
            Err(_) => Err(TokenError::Timeout),
        }
    }

    /// The stored row into the slot; what the slot now holds (`Gone` is an error).
    async fn load(&self, tenant: &str, s: &mut Slot) -> Result<Slot, TokenError> {
        let stored = self
            .store
            .load(&self.provider, tenant)
            .await
            .map_err(|e| TokenError::Unavailable(crate::diagnostics::chain(&e)))?;
        *s = match stored {
            None => gone(TokenError::NotConnected),
            Some(row) if row.disconnected.is_some() => gone(TokenError::Disconnected),
            Some(row) => Slot::Ready {
                access: row.access_token,
                refresh: row.refresh_token,
                expires_at: row.expires_at,
            },
        };
        match &*s {
            Slot::Gone { error, .. } => Err(error.clone()),
            other => Ok(other.clone()),
        }
    }

    async fn refresh(
        &self,
        tenant: &str,
        refresh: Option<String>,
        now: i64,
        deadline: Instant,
        s: &mut Slot,
    ) -> Result<String, TokenError> {
        let Some(refresh) = refresh else {
            // an expired token and nothing to renew it with: only a new consent helps
            return self.revoked(tenant, "no refresh token is stored", s).await;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let sent = self
            .transport
            .send(self.refresh_request(&refresh, self.client.timeout.min(left)))
            .await;
        let count = |result: &'static str| {
            metrics::counter!("engine_connection_token_refreshes_total", "provider" => self.provider.clone(), "result" => result).increment(1);
        };
        let answer = match sent {
            Ok(a) => a,
            Err(NoAnswer::Timeout) => {
                count("failed");
                return Err(TokenError::Timeout);
            }
            Err(NoAnswer::Failed(why)) => {
                count("failed");
                return Err(TokenError::Unavailable(format!("token endpoint: {why}")));
            }
        };
        let json: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let access = json.get("access_token").and_then(Value::as_str);
        match (answer.status, access) {
            (200..=299, Some(access)) => {
                let expires_at = json
                    .get("expires_in")
                    .and_then(Value::as_i64)
                    .map(|s| now + s);
                self.store
                    .save(&self.provider, tenant, access, expires_at)
                    .await
                    .map_err(|e| {
                        count("failed");
                        TokenError::Unavailable(format!(
                            "storing the refreshed token: {}",
                            crate::diagnostics::chain(&e)
                        ))
                    })?;
                count("ok");
                tracing::info!(provider = %self.provider, %tenant, "oauth: access token refreshed");
                // Google sends a new refresh token rarely; keep using the stored one otherwise.
                let refresh = json
                    .get("refresh_token")
                    .and_then(Value::as_str)
                    .map_or(refresh, str::to_string);
                *s = Slot::Ready {
                    access: access.to_string(),
                    refresh: Some(refresh),
                    expires_at,
                };
                Ok(access.to_string())
            }
            (400 | 401, _)
                if json.get("error").and_then(Value::as_str) == Some("invalid_grant") =>
            {
                count("revoked");
                self.revoked(
                    tenant,
                    "the grant was revoked or has expired (invalid_grant)",
                    s,
                )
                .await
            }
            (status, _) => {
                count("failed");
                let code = json
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no error code");
                Err(TokenError::Unavailable(format!(
                    "token endpoint answered HTTP {status}: {code}"
                )))
            }
        }
    }

    /// The token endpoint's refresh request (RFC 6749 §6), with the client's credentials as it is
    /// configured (`ClientAuth::credentials`).
    fn refresh_request(&self, refresh: &str, timeout: std::time::Duration) -> Outbound {
        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", refresh)];
        let mut headers = vec![("accept".to_string(), "application/json".to_string())];
        if let Some(basic) = self.client.client_auth.credentials(
            &self.client.client_id,
            &self.client.client_secret,
            &mut form,
        ) {
            headers.push(("authorization".into(), basic));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        Outbound {
            method: "POST".into(),
            url: self.client.token_url.clone(),
            headers,
            body: Some((
                "application/x-www-form-urlencoded".into(),
                body.into_bytes(),
            )),
            timeout,
        }
    }

    /// The tenant must connect again: mark the row, alert once, remember.
    async fn revoked(
        &self,
        tenant: &str,
        reason: &str,
        s: &mut Slot,
    ) -> Result<String, TokenError> {
        match self.store.disconnect(&self.provider, tenant, reason).await {
            Ok(true) => {
                tracing::warn!(provider = %self.provider, %tenant, %reason, "oauth: connection disconnected; the tenant must connect again");
                (self.alert)(format!(
                    "`{}` of tenant {tenant} is disconnected: {reason}. The tenant must connect again; until then its tool calls are answered that the calendar is not connected.",
                    self.provider
                ));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(provider = %self.provider, %tenant, error = &e as &dyn std::error::Error, "oauth: cannot mark the connection disconnected");
            }
        }
        *s = gone(TokenError::Disconnected);
        Err(TokenError::Disconnected)
    }
}

fn gone(error: TokenError) -> Slot {
    Slot::Gone {
        error,
        since: Instant::now(),
    }
}

fn fresh(expires_at: Option<i64>, now: i64) -> bool {
    expires_at.is_none_or(|e| e - EARLY > now)
}

pub use super::token_store::{PostgresTokens, token_context};

/// Tokens in memory: a fixture's stand-in.
#[derive(Default)]
pub struct MemoryTokens {
    rows: std::sync::Mutex<std::collections::HashMap<(String, String), StoredConnection>>,
}

impl MemoryTokens {
    pub fn new(
        rows: impl IntoIterator<Item = ((String, String), StoredConnection)>,
    ) -> MemoryTokens {
        MemoryTokens {
            rows: std::sync::Mutex::new(rows.into_iter().collect()),
        }
    }

    /// The row of `(provider, tenant)` now.
    pub fn get(&self, provider: &str, tenant: &str) -> Option<StoredConnection> {
        self.lock()
            .get(&(provider.to_string(), tenant.to_string()))
            .cloned()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, String), StoredConnection>>
    {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TokenStore for MemoryTokens {
    fn load<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
    ) -> Pending<'a, Option<StoredConnection>> {
        let row = self.get(provider, tenant);
        Box::pin(async move { Ok(row) })
    }

    fn save<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
        access_token: &'a str,
        expires_at: Option<i64>,
    ) -> Pending<'a, ()> {
        if let Some(row) = self
            .lock()
            .get_mut(&(provider.to_string(), tenant.to_string()))
        {
            row.access_token = access_token.to_string();
            row.expires_at = expires_at;
        }
        Box::pin(async { Ok(()) })
    }

    fn disconnect<'a>(
        &'a self,
        provider: &'a str,
        tenant: &'a str,
        reason: &'a str,
    ) -> Pending<'a, bool> {
        let first = match self
            .lock()
            .get_mut(&(provider.to_string(), tenant.to_string()))
        {
            Some(row) if row.disconnected.is_none() => {
                row.disconnected = Some(reason.to_string());
                true
            }
            _ => false,
        };
        Box::pin(async move { Ok(first) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::transport::{Canned, Standin};
    use super::*;

    type Raised = Arc<std::sync::Mutex<Vec<String>>>;

    fn tokens(
        answers: Vec<Canned>,
        stored: StoredConnection,
    ) -> (Tokens, Arc<Standin>, Arc<MemoryTokens>, Raised) {
        let standin = Arc::new(Standin::new(answers));
        let memory = Arc::new(MemoryTokens::new([(
            ("google-calendar".to_string(), "org-1".to_string()),
            stored,
        )]));
        let alerts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sent = alerts.clone();
        let t = Tokens::new(
            "google-calendar",
            Client {
                token_url: url::Url::parse("https://oauth2.googleapis.com/token").unwrap(),
                client_id: "id".into(),
                client_secret: "secret".into(),
                client_auth: ClientAuth::Body,
                timeout: Duration::from_secs(5),
            },
            memory.clone(),
            standin.clone(),
            Arc::new(move |m| sent.lock().unwrap().push(m)),
        );
        (t, standin, memory, alerts)
    }

    fn token_answer(status: u16, body: &str) -> Canned {
        Canned {
            method: "POST".into(),
            url: "https://oauth2.googleapis.com/token".into(),
            status,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            delay: Duration::ZERO,
            times: 1,
        }
    }

    fn stored(expires_at: i64) -> StoredConnection {
        StoredConnection {
            access_token: "ya29.old".into(),
            refresh_token: Some("1//refresh".into()),
            expires_at: Some(expires_at),
            disconnected: None,
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_tenant_who_connects_again_is_served_within_a_second() {
        let mut gone = stored(10_000);
        gone.disconnected = Some("invalid_grant".into());
        let (t, standin, memory, _) = tokens(vec![], gone);
        assert_eq!(
            t.access("org-1", None, 1_000, soon()).await,
            Err(TokenError::Disconnected)
        );
        // the OAuth flow stores a new grant (on this instance or another: the row is the truth)
        memory
            .lock()
            .insert(("google-calendar".into(), "org-1".into()), stored(10_000));
        // within the recheck the mark answers, without reading the row again
        assert_eq!(
            t.access("org-1", None, 1_000, soon()).await,
            Err(TokenError::Disconnected)
        );
        tokio::time::sleep(GONE_RECHECK + Duration::from_millis(50)).await;
        assert_eq!(
            t.access("org-1", None, 1_000, soon()).await.unwrap(),
            "ya29.old"
        );
        assert!(standin.asked().is_empty());
    }

    #[tokio::test]
    async fn a_fresh_token_is_used_without_asking_the_token_endpoint() {
        let (t, standin, _, _) = tokens(vec![], stored(10_000));
        assert_eq!(
            t.access("org-1", None, 1_000, soon()).await.unwrap(),
            "ya29.old"
        );
        assert!(standin.asked().is_empty());
    }

    #[tokio::test]
    async fn concurrent_callers_of_an_expired_token_share_one_refresh() {
        let (t, standin, memory, _) = tokens(
            vec![token_answer(
                200,
                r#"{"access_token":"ya29.new","expires_in":3599,"scope":"https://www.googleapis.com/auth/calendar.events","token_type":"Bearer"}"#,
            )],
            stored(900),
        );
        let t = Arc::new(t);
        let calls = (0..20).map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.access("org-1", None, 1_000, soon()).await })
        });
        for c in calls {
            assert_eq!(c.await.unwrap().unwrap(), "ya29.new");
        }
        assert_eq!(standin.asked().len(), 1);
        let row = memory.get("google-calendar", "org-1").unwrap();
        assert_eq!(row.access_token, "ya29.new");
        assert_eq!(row.expires_at, Some(1_000 + 3599));
        // a 401 on the old token is answered with the new one, no second refresh
        assert_eq!(
            t.access("org-1", Some("ya29.old"), 1_000, soon())
                .await
                .unwrap(),
            "ya29.new"
        );
        assert_eq!(standin.asked().len(), 1);
    }

    #[tokio::test]
    async fn a_revoked_grant_disconnects_once_and_alerts_once() {
        let (t, standin, memory, alerts) = tokens(
            vec![token_answer(
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            )],
            stored(900),
        );
        for _ in 0..3 {
            assert_eq!(
                t.access("org-1", None, 1_000, soon()).await,
                Err(TokenError::Disconnected)
            );
        }
        assert_eq!(standin.asked().len(), 1);
        assert!(
            memory
                .get("google-calendar", "org-1")
                .unwrap()
                .disconnected
                .is_some()
        );
        let alerts = alerts.lock().unwrap();
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].contains("org-1") && !alerts[0].contains("1//refresh"));
    }

    #[tokio::test]
    async fn a_failing_token_endpoint_changes_nothing() {
        let (t, _, memory, alerts) = tokens(
            vec![
                token_answer(503, "{}"),
                token_answer(200, r#"{"access_token":"ya29.b","expires_in":60}"#),
            ],
            stored(900),
        );
        assert!(matches!(
            t.access("org-1", None, 1_000, soon()).await,
            Err(TokenError::Unavailable(m)) if m.contains("503")
        ));
        assert_eq!(
            memory.get("google-calendar", "org-1").unwrap().access_token,
            "ya29.old"
        );
        assert!(alerts.lock().unwrap().is_empty());
        assert_eq!(
            t.access("org-1", None, 1_000, soon()).await.unwrap(),
            "ya29.b"
        );
    }

    #[tokio::test]
    async fn an_unknown_tenant_is_not_connected() {
        let (t, standin, _, _) = tokens(vec![], stored(900));
        assert_eq!(
            t.access("org-2", None, 1_000, soon()).await,
            Err(TokenError::NotConnected)
        );
        assert!(standin.asked().is_empty());
    }
}
