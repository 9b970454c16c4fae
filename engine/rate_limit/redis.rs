//! The Redis backend: GCRA in one Lua script, so a check is one round trip and atomic across
//! every engine instance sharing the Redis.
//!
//! The script reads the clock with `TIME` (microseconds), so instances whose own clocks disagree
//! still agree on the limit. The key stores the TAT and expires when the bucket would be full
//! again (`PX`), so idle clients cost nothing and millions of distinct keys do not accumulate.
//! Keys: `<prefix>:rl:<bucket>:<key>`.

use std::time::Duration;

use crate::shared_redis::SharedRedis;

use super::{Decision, Rule, Unavailable};

/// GCRA over `KEYS[1]` with ARGV: interval µs, burst, [now µs for tests, or '']. Leaves
/// `decision` = {allowed, retry_after_ms, reset_ms, remaining}, the key updated only when allowed.
/// A macro so the queue's one-round-trip enqueue (`queue::redis`) runs the very same check.
macro_rules! gcra_lua {
    () => {
        r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] and ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local span = interval * burst
local new_tat = tat + interval
local allow_at = new_tat - span
local decision
if now < allow_at then
  decision = {0, math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000), 0}
else
  local ttl = math.max(1, math.ceil((new_tat - now) / 1000))
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
  decision = {1, 0, ttl, math.floor((span - (new_tat - now)) / interval)}
end
"
    };
}
pub(crate) use gcra_lua;

/// GCRA check. Returns {allowed, retry_after_ms, reset_ms, remaining}.
const GCRA: &str = concat!(gcra_lua!(), "return decision\n");

/// What the GCRA script returns: allowed (0/1), retry-after ms, reset ms, remaining.
pub type Verdict = (i64, i64, i64, i64);

/// The [`Decision`] a GCRA verdict means under `rule`.
pub fn decision(rule: &Rule, (allowed, retry_ms, reset_ms, remaining): Verdict) -> Decision {
    Decision {
        allowed: allowed == 1,
        limit: rule.limit,
        remaining: remaining.max(0) as u32,
        reset: Duration::from_millis(reset_ms.max(0) as u64),
        retry_after: Duration::from_millis(retry_ms.max(0) as u64),
    }
}

/// The Redis key of a rule and client key under `prefix`: what the limiter and a limit checked
/// inside an enqueue both use.
pub fn key_in(prefix: &str, rule: &Rule, key: &str) -> String {
    format!("{prefix}:rl:{}:{key}", rule.bucket)
}

/// A Redis-backed limiter.
pub struct RedisGcra {
    conn: SharedRedis,
    prefix: String,
    script: redis::Script,
    timeout: Duration,
}

impl RedisGcra {
    /// A limiter over `url` with keys under `prefix`, on a connection of its own. Connects lazily.
    pub fn new(url: &str, prefix: &str) -> Result<RedisGcra, String> {
        Ok(RedisGcra::on(SharedRedis::open(url)?, prefix))
    }

    /// A limiter on `conn`, the app's shared connection (see `shared_redis`), keys under `prefix`.
    pub fn on(conn: SharedRedis, prefix: &str) -> RedisGcra {
        RedisGcra {
            conn,
            prefix: prefix.to_string(),
            script: redis::Script::new(GCRA),
            timeout: Duration::from_millis(500),
        }
    }

    /// The Redis key of a rule and client key.
    pub fn key(&self, rule: &Rule, key: &str) -> String {
        key_in(&self.prefix, rule, key)
    }

    /// The prefix its keys live under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Check one request; `now_us` overrides Redis's clock (tests only).
    pub async fn check(
        &self,
        rule: &Rule,
        key: &str,
        now_us: Option<u64>,
    ) -> Result<Decision, Unavailable> {
        let redis_key = self.key(rule, key);
        let work = async {
            let mut conn = self
                .conn
                .get()
                .await
                .map_err(|e| Unavailable(e.to_string()))?;
            let mut inv = self.script.key(&redis_key);
            inv.arg(rule.interval.as_micros() as u64).arg(rule.burst);
            if let Some(now) = now_us {
                inv.arg(now);
            }
            let verdict: Verdict = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| Unavailable(e.to_string()))?;
            Ok(decision(rule, verdict))
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(Unavailable("timed out".into())))
    }
}
