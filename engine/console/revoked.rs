//! Signed-out sessions. A console session is a signed cookie the server keeps nothing of, so
//! without this list a cookie copied before sign-out would open the console until it expires.
//!
//! ```text
//! Sign out             -> the session's nonce revoked until the session's own expiry
//! Sign out everywhere  -> every session started before now revoked
//! every console request: cookie valid (session.rs) -> revoked? -> refused as signed out
//! ```
//!
//! Kept in Redis when the deployment has one (`<prefix>console:revoked:<nonce>` with the
//! session's expiry, `<prefix>console:signed-out-before`), so every instance refuses the cookie
//! at once; and always in this process too, so a sign-out holds here while Redis is away. Without
//! Redis (one instance) the process is the whole list. The local list is bounded: entries leave
//! when their session would have expired anyway, and past [`LOCAL_MAX`] the one expiring first
//! goes. A Redis that does not answer within [`REDIS_WAIT`] leaves the decision to the local
//! list: the console must stay usable when Redis is down, which is when operators need it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::session::{SESSION_LENGTH, Session};
use crate::redis_conn::group_commit::GroupCommit;

/// Most signed-out sessions kept in process (12 h of sessions; far above any real sign-out rate).
pub const LOCAL_MAX: usize = 10_000;
/// How long a console request waits for Redis's answer.
const REDIS_WAIT: Duration = Duration::from_secs(1);

/// The signed-out sessions of a deployment.
pub struct Revoked {
    redis: Option<(GroupCommit, String)>,
    local: Mutex<Local>,
}

#[derive(Default)]
struct Local {
    /// nonce -> the session's expiry (ms)
    nonces: HashMap<String, i64>,
    /// sessions started before this (ms) are signed out
    before_ms: i64,
}

impl Revoked {
    /// `redis`: the deployment's Redis and its key prefix, when it has one.
    pub fn new(redis: Option<(GroupCommit, String)>) -> Revoked {
        Revoked {
            redis,
            local: Mutex::new(Local::default()),
        }
    }

    /// Sign `session` out, here and (when there is Redis) on every instance. False when Redis
    /// did not take it: only this instance refuses the cookie.
    pub async fn revoke(&self, session: &Session, now_ms: i64) -> bool {
        {
            let mut local = self.lock();
            if local.nonces.len() >= LOCAL_MAX {
                local.nonces.retain(|_, expires| *expires > now_ms);
            }
            if local.nonces.len() >= LOCAL_MAX
                && let Some(first) = local
                    .nonces
                    .iter()
                    .min_by_key(|(_, e)| **e)
                    .map(|(n, _)| n.clone())
            {
                local.nonces.remove(&first);
            }
            local
                .nonces
                .insert(session.nonce.clone(), session.expires_ms);
        }
        let Some((redis, prefix)) = &self.redis else {
            return true;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{prefix}console:revoked:{}", session.nonce))
            .arg(1)
            .arg("PXAT")
            .arg(session.expires_ms.max(now_ms + 1));
        self.send(redis, cmd).await.is_some()
    }

    /// Sign out every session started before `now_ms`. False when Redis did not take it.
    pub async fn revoke_all(&self, now_ms: i64) -> bool {
        {
            let mut local = self.lock();
            local.before_ms = local.before_ms.max(now_ms);
            local.nonces.clear();
        }
        let Some((redis, prefix)) = &self.redis else {
            return true;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{prefix}console:signed-out-before"))
            .arg(now_ms)
            .arg("PX")
            .arg(SESSION_LENGTH.as_millis() as u64);
        self.send(redis, cmd).await.is_some()
    }

    /// Whether `session` was signed out (here, or on any instance sharing the Redis).
    pub async fn contains(&self, session: &Session) -> bool {
        let started = session.expires_ms - SESSION_LENGTH.as_millis() as i64;
        {
            let local = self.lock();
            if started < local.before_ms || local.nonces.contains_key(&session.nonce) {
                return true;
            }
        }
        let Some((redis, prefix)) = &self.redis else {
            return false;
        };
        // two keys of two slots (a cluster refuses one MGET across them)
        let mut one = redis::cmd("EXISTS");
        one.arg(format!("{prefix}console:revoked:{}", session.nonce));
        if self.send(redis, one).await == Some(redis::Value::Int(1)) {
            return true;
        }
        let mut all = redis::cmd("GET");
        all.arg(format!("{prefix}console:signed-out-before"));
        match self.send(redis, all).await {
            Some(redis::Value::BulkString(b)) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|before| started < before),
            _ => false,
        }
    }

    async fn send(&self, redis: &GroupCommit, cmd: redis::Cmd) -> Option<redis::Value> {
        let answer = tokio::time::timeout(REDIS_WAIT, async {
            let mut conn = redis.get().await?;
            cmd.query_async::<redis::Value>(&mut conn).await
        })
        .await;
        match answer {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "console: signed-out sessions not shared through Redis; this instance's list decides");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "console: Redis did not answer about signed-out sessions within 1 s; this instance's list decides"
                );
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(nonce: &str, expires_ms: i64) -> Session {
        Session {
            nonce: nonce.into(),
            expires_ms,
        }
    }

    #[tokio::test]
    async fn signed_out_sessions_are_refused_and_the_list_is_bounded() {
        let r = Revoked::new(None);
        let length = SESSION_LENGTH.as_millis() as i64;
        let a = session("a", 1_000 + length);
        let b = session("b", 2_000 + length);
        assert!(r.revoke(&a, 5_000).await);
        assert!(r.contains(&a).await && !r.contains(&b).await);
        // everywhere: every session started before now, not one started after
        assert!(r.revoke_all(3_000).await);
        assert!(r.contains(&b).await);
        assert!(!r.contains(&session("c", 3_001 + length)).await);
        // expired entries leave; past the bound, the one expiring first goes
        for i in 0..LOCAL_MAX as i64 + 5 {
            r.revoke(&session(&format!("n{i}"), 10_000 + length + i), 10_000)
                .await;
        }
        assert_eq!(r.lock().nonces.len(), LOCAL_MAX);
        assert!(!r.lock().nonces.contains_key("n0"));
        r.revoke(&session("late", i64::MAX), 30_000 + length).await;
        assert_eq!(r.lock().nonces.len(), 1, "expired sessions left the list");
    }
}
