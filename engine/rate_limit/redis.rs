//! The Redis backend: GCRA in Lua (the `gcra` function of the group commit's script, `redis_conn::group_commit`), so a check is atomic across every
//! engine instance sharing the Redis, and goes to Redis in the request path's group commit with
//! the other requests' checks and appends.
//!
//! The script reads the clock with `TIME` (microseconds), so instances whose own clocks disagree
//! still agree on the limit. The key stores the TAT and expires when the bucket would be full
//! again (`PX`), so idle clients cost nothing and millions of distinct keys do not accumulate.
//! Keys: `<prefix>:rl:<bucket>:<key>`.

use std::time::Duration;

use crate::redis_conn::group_commit::{GcraCheck, GroupCommit, Op, verdict};

use super::{Decision, Rule, Unavailable};

/// What the GCRA script returns: allowed (0/1), retry-after ms, reset ms, remaining.
pub type Verdict = [i64; 4];

/// The [`Decision`] a GCRA verdict means under `rule`.
pub fn decision(rule: &Rule, [allowed, retry_ms, reset_ms, remaining]: Verdict) -> Decision {
    Decision {
        allowed: allowed == 1,
        limit: rule.limit,
        remaining: remaining.max(0) as u32,
        reset: Duration::from_millis(reset_ms.max(0) as u64),
        retry_after: Duration::from_millis(retry_ms.max(0) as u64),
    }
}

/// The Redis key of a rule and client key under `prefix`: what the limiter and a limit checked
/// inside an enqueue both use. The client's part is the request's text (a header, a form field),
/// so it is written without braces: on a Redis Cluster the first `{...}` of a key picks its slot,
/// and a sender must not choose where its counters live (nor pile every key onto one node).
/// `{`, `}` and `%` are percent-encoded (one key per client key, still readable); a part longer
/// than [`LONGEST_CLIENT_KEY`] is kept as its SHA-256, so a huge header makes no huge key.
pub fn key_in(prefix: &str, rule: &Rule, key: &str) -> String {
    if key.len() > LONGEST_CLIENT_KEY {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(key.as_bytes());
        return format!("{prefix}:rl:{}:sha256-{}", rule.bucket, hex::encode(digest));
    }
    let mut out = format!("{prefix}:rl:{}:", rule.bucket);
    for c in key.chars() {
        match c {
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

/// Client keys longer than this are stored as their hash.
pub const LONGEST_CLIENT_KEY: usize = 200;

/// The group commit's GCRA check of `rule` on the Redis key `redis_key` (see [`key_in`]);
/// `now_us` overrides Redis's clock (tests only).
pub fn check(rule: &Rule, redis_key: String, now_us: Option<u64>) -> GcraCheck {
    GcraCheck {
        key: redis_key,
        interval_us: rule.interval.as_micros() as u64,
        burst: rule.burst,
        now_us,
    }
}

/// A Redis-backed limiter.
pub struct RedisGcra {
    conn: GroupCommit,
    prefix: String,
    timeout: Duration,
}

impl RedisGcra {
    /// A limiter over `url` with keys under `prefix`, on a connection of its own. Connects lazily.
    pub fn new(url: &str, prefix: &str) -> Result<RedisGcra, crate::redis_conn::RedisUrlError> {
        Ok(RedisGcra::on(GroupCommit::open(url)?, prefix))
    }

    /// A limiter on `conn`, the app's shared connection (see `redis_conn::group_commit`), keys under `prefix`.
    pub fn on(conn: GroupCommit, prefix: &str) -> RedisGcra {
        RedisGcra {
            conn,
            prefix: prefix.to_string(),
            timeout: Duration::from_millis(500),
        }
    }

    /// The Redis key of a rule and client key.
    pub fn key(&self, rule: &Rule, key: &str) -> String {
        key_in(&self.prefix, rule, key)
    }

    /// Whether its keys live on a Redis Cluster (spread over the slots: a limit stays exact per
    /// key, each key being one slot's).
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// The prefix its keys live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Check one request; `now_us` overrides Redis's clock (tests only). The check goes to Redis
    /// in the shared connection's next group (see `redis_conn::group_commit`).
    pub async fn check(
        &self,
        rule: &Rule,
        key: &str,
        now_us: Option<u64>,
    ) -> Result<Decision, Unavailable> {
        let op = Op::GcraCheck(check(rule, self.key(rule, key), now_us));
        let work = async {
            let answer = self
                .conn
                .run(op)
                .await
                .map_err(|e| Unavailable(e.to_string()))?;
            let (v, _) = verdict(&answer).map_err(|e| Unavailable(e.to_string()))?;
            Ok(decision(rule, v))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(Unavailable("timed out".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rate_limit::RateLimit;

    #[test]
    fn a_client_key_cannot_choose_the_cluster_slot() {
        let rule = Rule::new("p", &RateLimit::per_ip(10, Duration::from_secs(1)));
        let key = key_in("app", &rule, "{victim-slot}x");
        assert_eq!(key, "app:rl:p:%7Bvictim-slot%7Dx");
        assert!(!key.contains('{') && !key.contains('}'));
        // one key per client key: the encoding itself cannot be forged into a collision
        assert_ne!(key_in("app", &rule, "%7B"), key_in("app", &rule, "{"));
        // every client key of a bucket spreads over the slots as before (no shared tag)
        assert_ne!(
            crate::redis_conn::slot(&key_in("app", &rule, "{a}1")),
            crate::redis_conn::slot(&key_in("app", &rule, "{a}2"))
        );
        let long = key_in("app", &rule, &"x".repeat(10_000));
        assert!(long.len() < 100, "{long}");
    }
}
