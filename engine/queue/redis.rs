//! The durable queue on Redis Streams: one stream per queue, one consumer group, at-least-once.
//!
//! ```text
//! <prefix>:{q:<name>}:stream    the work stream (XADD, XREADGROUP, XACK + XDEL; never trimmed)
//! <prefix>:{q:<name}:delayed    retries waiting for their time (sorted set, score = due ms)
//! <prefix>:{q:<name>}:dead      dead letters (stream: event, reason, attempts)
//! <prefix>:{q:<name>}:seen:<k>  dedupe markers (SET NX EX window)
//! ```
//!
//! The `{q:<name>}` hash tag keeps a queue's keys in one slot of a Redis Cluster. Every state
//! change is one Lua script, so it is atomic: dedupe + append (an op of the request path's group
//! commit, `shared_redis`, with the rate-limit check before it when the limit rides along); ack +
//! delete; retry (schedule + ack); dead-letter (append + ack); promote due retries. A consumer
//! that dies leaves its entries pending;
//! [`RedisQueue::reclaim`] moves entries idle longer than the lease to a live consumer
//! (XAUTOCLAIM) and dead-letters entries delivered too many times (poison messages).

use std::time::Duration;

use mobc_redis::RedisConnectionManager;
use mobc_redis::mobc::Pool;
use mobc_redis::redis::{self, AsyncCommands, Value};

use crate::rate_limit::Rule;
use crate::rate_limit::redis::Verdict;
use crate::redis_url::{Conn, Target};
use crate::shared_redis::{Append, Op, SharedRedis};

use super::{DeadLetter, Delivery, Enqueued, QueueError, Stats};
use crate::transform::EventInput;

/// The consumer group every engine instance reads with.
pub const GROUP: &str = "engine";

/// How long a queue operation waits for a pooled connection, and an enqueue for its answer.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);

const ACK: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
";

const RETRY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
";

const DEAD: &str = r"
redis.call('XADD', KEYS[2], '*', 'e', ARGV[3], 'reason', ARGV[4], 'attempts', ARGV[5], 'from', ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
";

const PROMOTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local d = cjson.decode(member)
  redis.call('XADD', KEYS[2], '*', 'e', d.e, 'a', tostring(d.a))
  redis.call('ZREM', KEYS[1], member)
end
return #due
";

/// One stream of a queue with its retries, dead letters and dedupe markers, all in one slot.
pub struct Partition {
    /// Pooled connections on one node; `None` on a cluster, whose client is multiplexed per node
    /// already (its operations go over the shared connection).
    pool: Option<Pool<RedisConnectionManager>>,
    /// The request path's enqueues, pipelined on one connection (see `shared_redis`); workers
    /// and admin commands take pooled connections.
    shared: SharedRedis,
    stream: String,
    delayed: String,
    dead: String,
    seen_prefix: String,
    consumer: String,
    ack: redis::Script,
    retry: redis::Script,
    dead_letter: redis::Script,
    promote: redis::Script,
}

impl Partition {
    /// The partition whose keys start with `base` (`<prefix>:{q:<name>}` or
    /// `<prefix>:{q:<name>:<k>}`), on the queue's connections.
    fn build(
        pool: Option<Pool<RedisConnectionManager>>,
        shared: SharedRedis,
        base: &str,
        consumer: &str,
    ) -> Partition {
        Partition {
            pool,
            shared,
            stream: format!("{base}:stream"),
            delayed: format!("{base}:delayed"),
            dead: format!("{base}:dead"),
            seen_prefix: format!("{base}:seen:"),
            consumer: consumer.to_string(),
            ack: redis::Script::new(ACK),
            retry: redis::Script::new(RETRY),
            dead_letter: redis::Script::new(DEAD),
            promote: redis::Script::new(PROMOTE),
        }
    }

    async fn conn(&self) -> Result<QueueConn, QueueError> {
        let got = match &self.pool {
            Some(pool) => tokio::time::timeout(CHECKOUT_TIMEOUT, pool.get())
                .await
                .map(|c| {
                    c.map(QueueConn::Pooled)
                        .map_err(|e| QueueError::Unavailable(e.to_string()))
                }),
            None => tokio::time::timeout(CHECKOUT_TIMEOUT, self.shared.get())
                .await
                .map(|c| c.map(QueueConn::Shared).map_err(QueueError::from)),
        };
        got.unwrap_or_else(|_| {
            Err(QueueError::Unavailable(
                "no Redis connection within 2 s".into(),
            ))
        })
    }

    /// Create the consumer group (and the stream) if missing. Entries already in the stream are
    /// delivered too (`0`), so nothing added before the group existed is skipped.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let r: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut c)
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Append an event, unless `dedupe` names a key seen within its window: one op of the
    /// request path's next Redis group (see `shared_redis`), answered within 2 s.
    pub async fn enqueue(
        &self,
        event: &EventInput,
        dedupe: Option<(&str, Duration)>,
    ) -> Result<Enqueued, QueueError> {
        let answer = self
            .shared_run(Op::Append(self.append(event, dedupe)?))
            .await?;
        Ok(stored(redis::from_redis_value(&answer)?))
    }

    /// [`Self::enqueue`] behind the rate-limit check of `rule` on `limit_key` (a
    /// `rate_limit::redis` key), in the same op: nothing is stored when the limit refuses
    /// (`None`). The verdict is returned either way, for the RateLimit headers.
    pub async fn enqueue_limited(
        &self,
        event: &EventInput,
        dedupe: Option<(&str, Duration)>,
        rule: &Rule,
        limit_key: &str,
    ) -> Result<(Verdict, Option<Enqueued>), QueueError> {
        let limit = crate::rate_limit::redis::check(rule, limit_key.to_string(), None);
        let op = Op::LimitedAppend(limit, self.append(event, dedupe)?);
        let answer = self.shared_run(op).await?;
        let (allowed, retry, reset, remaining, id): (i64, i64, i64, i64, String) =
            redis::from_redis_value(&answer)?;
        Ok((
            (allowed, retry, reset, remaining),
            (allowed == 1).then(|| stored(id)),
        ))
    }

    /// The append of `event`: the payload, the dedupe key and window.
    fn append(
        &self,
        event: &EventInput,
        dedupe: Option<(&str, Duration)>,
    ) -> Result<Append, QueueError> {
        let (seen, window_secs) = match dedupe {
            Some((k, w)) => (format!("{}{k}", self.seen_prefix), w.as_secs().max(1)),
            None => (format!("{}-", self.seen_prefix), 1),
        };
        Ok(Append {
            stream: self.stream.clone(),
            seen,
            payload: serde_json::to_string(event)?,
            dedupe: dedupe.is_some(),
            window_secs,
        })
    }

    /// An op on the request path's shared connection, answered within 2 s.
    async fn shared_run(&self, op: Op) -> Result<Value, QueueError> {
        match tokio::time::timeout(CHECKOUT_TIMEOUT, self.shared.run(op)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(QueueError::Unavailable(
                "Redis did not answer within 2 s".into(),
            )),
        }
    }

    /// Read up to `count` entries: this consumer's own pending ones when `own_pending` (after a
    /// restart), else new ones, waiting up to `block` (zero: not at all; never Redis's `BLOCK 0`,
    /// which waits for ever). A missing group (Redis restarted empty) is
    /// recreated and reported in the `bool` (data-loss alarm).
    pub async fn read(
        &self,
        conn: &mut Conn,
        count: usize,
        block: Duration,
        own_pending: bool,
    ) -> Result<(Vec<Delivery>, bool), QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if !own_pending && !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS")
            .arg(&self.stream)
            .arg(if own_pending { "0" } else { ">" });
        match cmd.query_async::<Value>(conn).await {
            Ok(v) => Ok((parse_read(v), false)),
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group().await?;
                Ok((Vec::new(), true))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Done with several entries: one round trip.
    pub async fn ack_many(&self, ids: &[&str]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut inv = self.ack.key(&self.stream);
        inv.arg(GROUP);
        for id in ids {
            inv.arg(*id);
        }
        let r: Result<i64, _> = inv.invoke_async(&mut c).await;
        settle(c, r).map(|_| ())
    }

    /// Renew the lease of an entry this consumer is still working on (resets its idle time).
    pub async fn touch(&self, id: &str) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let r: Result<Value, _> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(&mut c)
            .await;
        settle(c, r).map(|_| ())
    }

    /// Done: acknowledge and delete.
    pub async fn ack(&self, id: &str) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let r: Result<i64, _> = self
            .ack
            .key(&self.stream)
            .arg(GROUP)
            .arg(id)
            .invoke_async(&mut c)
            .await;
        settle(c, r).map(|_| ())
    }

    /// Try again after `delay`, with the attempt counted; atomic with the ack.
    pub async fn retry(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let member = serde_json::json!({
            "e": serde_json::to_string(&d.event)?,
            "a": d.attempts + 1,
            "from": d.id,
        })
        .to_string();
        let mut c = self.conn().await?;
        let r: Result<i64, _> = self
            .retry
            .key(&self.stream)
            .key(&self.delayed)
            .arg(GROUP)
            .arg(&d.id)
            .arg(member)
            .arg(delay.as_millis() as u64)
            .invoke_async(&mut c)
            .await;
        settle(c, r).map(|_| ())
    }

    /// Give up: append to the dead-letter stream with the reason; atomic with the ack.
    pub async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        let payload = serde_json::to_string(&d.event)?;
        let mut c = self.conn().await?;
        let r: Result<i64, _> = self
            .dead_letter
            .key(&self.stream)
            .key(&self.dead)
            .arg(GROUP)
            .arg(&d.id)
            .arg(payload)
            .arg(reason)
            .arg(d.attempts + 1)
            .invoke_async(&mut c)
            .await;
        settle(c, r).map(|_| ())
    }

    /// Dead-letter an event that never entered the work stream (`ack: processed`).
    pub async fn dead_letter_event(
        &self,
        event: &EventInput,
        reason: &str,
    ) -> Result<(), QueueError> {
        let payload = serde_json::to_string(event)?;
        let mut c = self.conn().await?;
        let r: Result<String, _> = redis::cmd("XADD")
            .arg(&self.dead)
            .arg("*")
            .arg("e")
            .arg(payload)
            .arg("reason")
            .arg(reason)
            .arg("attempts")
            .arg(1)
            .query_async(&mut c)
            .await;
        settle(c, r).map(|_| ())
    }

    /// Remember a dedupe key (`SET NX EX`); `false` when it was already there.
    pub async fn mark_seen(&self, key: &str, window: Duration) -> Result<bool, QueueError> {
        let mut c = self.conn().await?;
        let r: Result<Option<String>, _> = redis::cmd("SET")
            .arg(format!("{}{key}", self.seen_prefix))
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(window.as_secs().max(1))
            .query_async(&mut c)
            .await;
        settle(c, r).map(|v| v.is_some())
    }

    /// Forget a dedupe key, so the provider's retry of a failed event is not taken for a repeat.
    pub async fn forget_seen(&self, key: &str) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let r: Result<i64, _> = redis::cmd("DEL")
            .arg(format!("{}{key}", self.seen_prefix))
            .query_async(&mut c)
            .await;
        settle(c, r).map(|_| ())
    }

    /// Move retries whose time has come back to the work stream. Returns how many moved.
    pub async fn promote_due(&self, limit: usize) -> Result<u64, QueueError> {
        let mut c = self.conn().await?;
        let r: Result<u64, _> = self
            .promote
            .key(&self.delayed)
            .key(&self.stream)
            .arg(limit)
            .invoke_async(&mut c)
            .await;
        settle(c, r)
    }

    /// Take over entries idle longer than `lease` (their consumer died or hangs). Entries
    /// delivered more than `max_deliveries` times are dead-lettered instead (they crash whoever
    /// takes them). Returns the taken-over entries and how many ids Redis reported deleted (data
    /// that was lost: an alarm, never expected).
    pub async fn reclaim(
        &self,
        lease: Duration,
        max_deliveries: u64,
    ) -> Result<(Vec<Delivery>, u64), QueueError> {
        let mut c = self.conn().await?;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(lease.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(100)
            .query_async(&mut c)
            .await?;
        let (claimed, deleted) = match reply {
            Value::Array(parts) if parts.len() >= 2 => {
                let deleted = match parts.get(2) {
                    Some(Value::Array(d)) => d.len() as u64,
                    _ => 0,
                };
                (parse_entries(&parts[1]), deleted)
            }
            _ => (Vec::new(), 0),
        };
        let mut alive = Vec::new();
        for d in claimed {
            // XPENDING for one id: [[id, consumer, idle, delivery count]]
            let info: Value = redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(GROUP)
                .arg(&d.id)
                .arg(&d.id)
                .arg(1)
                .query_async(&mut c)
                .await?;
            let deliveries = match info {
                Value::Array(rows) => rows
                    .first()
                    .and_then(|r| match r {
                        Value::Array(f) => f.get(3).and_then(as_u64),
                        _ => None,
                    })
                    .unwrap_or(1),
                _ => 1,
            };
            if deliveries > max_deliveries {
                self.dead_letter(&d, &format!("delivered {deliveries} times without an answer (the worker crashed or hung each time)"))
                    .await?;
            } else {
                alive.push(d);
            }
        }
        Ok((alive, deleted))
    }

    /// Queue counts.
    pub async fn stats(&self) -> Result<Stats, QueueError> {
        let mut c = self.conn().await?;
        let depth: u64 = c.xlen(&self.stream).await.unwrap_or(0);
        let delayed: u64 = c.zcard(&self.delayed).await.unwrap_or(0);
        let dead: u64 = c.xlen(&self.dead).await.unwrap_or(0);
        let pending = match redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async::<Value>(&mut c)
            .await
        {
            Ok(Value::Array(v)) => v.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        let first: Value = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        let oldest_age_ms = parse_entries(&first).first().and_then(|d| {
            let ms = entry_ms(&d.id)?;
            Some((chrono::Utc::now().timestamp_millis() as u64).saturating_sub(ms))
        });
        Ok(Stats {
            depth,
            pending,
            delayed,
            dead,
            oldest_age_ms,
        })
    }

    /// `count` dead letters: the oldest first, or the newest first.
    async fn dead_range(&self, count: usize, newest: bool) -> Result<Vec<DeadLetter>, QueueError> {
        let mut c = self.conn().await?;
        let (cmd, from, to) = if newest {
            ("XREVRANGE", "+", "-")
        } else {
            ("XRANGE", "-", "+")
        };
        let v: Value = redis::cmd(cmd)
            .arg(&self.dead)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await?;
        Ok(parse_dead(&v))
    }

    /// Consumers of the group that read or acknowledged within `within` (`XINFO CONSUMERS`'
    /// idle time): the workers alive now, across instances. 0 when the group does not exist yet.
    pub async fn active_consumers(&self, within: Duration) -> Result<u64, QueueError> {
        let mut c = self.conn().await?;
        let v: Value = match redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(GROUP)
            .query_async(&mut c)
            .await
        {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("no such key") => {
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        let Value::Array(consumers) = v else {
            return Ok(0);
        };
        let limit = within.as_millis() as u64;
        // each consumer: [name, n, pending, n, idle, ms, ...] (RESP2) or a map (RESP3)
        let idle = |c: &Value| -> Option<u64> {
            let pairs: Vec<(&Value, &Value)> = match c {
                Value::Array(f) => f
                    .chunks(2)
                    .filter_map(|p| Some((p.first()?, p.get(1)?)))
                    .collect(),
                Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
                _ => return None,
            };
            pairs
                .into_iter()
                .find(|(k, _)| as_string(k).as_deref() == Some("idle"))
                .and_then(|(_, v)| as_u64(v))
        };
        Ok(consumers
            .iter()
            .filter(|c| idle(c).is_some_and(|ms| ms < limit))
            .count() as u64)
    }

    /// Put dead letters back on the work stream with a fresh attempt count (all when `ids` is
    /// empty). Returns how many were replayed.
    pub async fn replay_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        let letters = self.dead_range(10_000, false).await?;
        let mut c = self.conn().await?;
        let mut n = 0;
        for l in letters
            .into_iter()
            .filter(|l| ids.is_empty() || ids.contains(&l.id))
        {
            let Some(event) = &l.event else { continue };
            let payload = serde_json::to_string(event)?;
            redis::pipe()
                .atomic()
                .cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("e")
                .arg(payload)
                .arg("a")
                .arg("0")
                .ignore()
                .cmd("XDEL")
                .arg(&self.dead)
                .arg(&l.id)
                .ignore()
                .query_async::<()>(&mut c)
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Delete dead letters (all when `ids` is empty). Returns how many.
    pub async fn purge_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        let mut c = self.conn().await?;
        if ids.is_empty() {
            let n: u64 = c.xlen(&self.dead).await.unwrap_or(0);
            let _: () = c.del(&self.dead).await?;
            return Ok(n);
        }
        Ok(redis::cmd("XDEL")
            .arg(&self.dead)
            .arg(ids)
            .query_async(&mut c)
            .await?)
    }
}

/// A connection for the queue's own operations: pooled on one node, the shared one on a cluster.
enum QueueConn {
    Pooled(mobc_redis::mobc::Connection<RedisConnectionManager>),
    Shared(Conn),
}

impl redis::aio::ConnectionLike for QueueConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            QueueConn::Pooled(c) => (**c).req_packed_command(cmd),
            QueueConn::Shared(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            QueueConn::Pooled(c) => (**c).req_packed_commands(cmd, offset, count),
            QueueConn::Shared(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            QueueConn::Pooled(c) => (**c).get_db(),
            QueueConn::Shared(c) => c.get_db(),
        }
    }
}

/// A pooled connection that just failed is dropped rather than returned: after a Redis restart
/// the pool would otherwise keep handing out dead connections until its next health check. (The
/// shared connection replaces itself.)
fn settle<T>(conn: QueueConn, result: Result<T, redis::RedisError>) -> Result<T, QueueError> {
    if result.is_err()
        && let QueueConn::Pooled(c) = conn
    {
        drop(c.into_inner());
    }
    Ok(result?)
}

/// When a stream entry was added: the milliseconds its id starts with (`1764086400000-0`).
/// What an append answered: the entry id, or "" for a duplicate.
fn stored(id: String) -> Enqueued {
    if id.is_empty() {
        Enqueued::Duplicate
    } else {
        Enqueued::Added(id)
    }
}

fn entry_ms(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Field/value pairs of one stream entry.
fn fields(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|p| Some((as_string(p.first()?)?, as_string(p.get(1)?)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// `[[id, [field, value, ...]], ...]`: each entry's id and fields (entries that do not decode
/// are skipped; XAUTOCLAIM reports deleted ones separately).
fn stream_entries(v: &Value) -> impl Iterator<Item = (String, Vec<(String, String)>)> + '_ {
    let entries: &[Value] = match v {
        Value::Array(entries) => entries,
        _ => &[],
    };
    entries.iter().filter_map(|entry| {
        let Value::Array(parts) = entry else {
            return None;
        };
        Some((as_string(parts.first()?)?, fields(parts.get(1)?)))
    })
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Stream entries as deliveries.
fn parse_entries(v: &Value) -> Vec<Delivery> {
    stream_entries(v)
        .filter_map(|(id, f)| {
            let event: EventInput = serde_json::from_str(field(&f, "e")?).ok()?;
            let attempts = field(&f, "a").and_then(|a| a.parse().ok()).unwrap_or(0);
            Some(Delivery {
                id,
                event,
                attempts,
            })
        })
        .collect()
}

/// An XREADGROUP reply: `[[stream, entries]]` (nil when the block timed out).
fn parse_read(v: Value) -> Vec<Delivery> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                Value::Array(parts) if parts.len() == 2 => parse_entries(&parts[1]),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(_, entries)| parse_entries(entries))
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_dead(v: &Value) -> Vec<DeadLetter> {
    stream_entries(v)
        .map(|(id, f)| {
            let event: Option<EventInput> =
                field(&f, "e").and_then(|e| serde_json::from_str(e).ok());
            DeadLetter {
                at_ms: entry_ms(&id).map_or(0, |ms| ms as i64),
                id,
                event_id: event.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
                reason: field(&f, "reason").unwrap_or_default().to_string(),
                attempts: field(&f, "attempts")
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
                event,
            }
        })
        .collect()
}

/// A queue on Redis: one [`Partition`], or `partitions` of them (`queue.partitions`), each in its
/// own slot so a busy queue spreads over a Redis Cluster's nodes.
///
/// An event's partition is the slot of its dedupe key (else of its event id) modulo the
/// partitions, so a repeat meets the marker of the first in the same atomic step. With one
/// partition, entry ids are the stream's own (`1764086400000-0`); with several they carry the
/// partition (`2/1764086400000-0`), which every operation on an entry (ack, retry, dead letter,
/// replay, purge) reads back.
pub struct RedisQueue {
    name: String,
    target: Target,
    parts: Vec<Partition>,
}

impl RedisQueue {
    /// A queue `name` under `prefix` in one partition; `consumer` must be unique per process
    /// start (a reused name would hide a dead process's pending entries). Enqueues go over a
    /// connection of the queue's own unless [`RedisQueue::sharing`] gives it the app's.
    pub fn new(
        url: &str,
        prefix: &str,
        name: &str,
        consumer: &str,
    ) -> Result<RedisQueue, QueueError> {
        RedisQueue::partitioned(url, prefix, name, consumer, 1)
    }

    /// [`RedisQueue::new`] split into `partitions` streams. Partition 0 keeps the keys of a
    /// single-stream queue (`{q:<name>}`), the others are `{q:<name>:<k>}`.
    pub fn partitioned(
        url: &str,
        prefix: &str,
        name: &str,
        consumer: &str,
        partitions: u32,
    ) -> Result<RedisQueue, QueueError> {
        let target = Target::parse(url).map_err(QueueError::BadUrl)?;
        // No mobc get_timeout: mobc times checkouts with futures-timer, whose global thread
        // is woken (a futex and two context switches) on every checkout; `conn` bounds the wait
        // with tokio's timer instead (see docs/benchmarks.md, "Whole process").
        let pool = match &target {
            Target::Single(client) => Some(
                Pool::builder()
                    .max_open(16)
                    .max_idle(16)
                    .health_check_interval(Some(Duration::from_secs(5)))
                    .get_timeout(None)
                    .build(RedisConnectionManager::new(client.clone())),
            ),
            Target::Cluster(_) => None,
        };
        let shared = SharedRedis::new(target.clone());
        let parts = (0..partitions.max(1))
            .map(|k| {
                let base = if k == 0 {
                    format!("{prefix}:{{q:{name}}}")
                } else {
                    format!("{prefix}:{{q:{name}:{k}}}")
                };
                Partition::build(pool.clone(), shared.clone(), &base, consumer)
            })
            .collect();
        Ok(RedisQueue {
            name: name.to_string(),
            target,
            parts,
        })
    }

    /// This queue with its enqueues on `shared`, the app's request-path connection.
    pub fn sharing(mut self, shared: SharedRedis) -> RedisQueue {
        for p in &mut self.parts {
            p.shared = shared.clone();
        }
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many partitions it has.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// The work stream's key (partition 0's).
    pub fn stream_key(&self) -> &str {
        &self.parts[0].stream
    }

    /// Every partition's work stream key.
    pub fn stream_keys(&self) -> Vec<&str> {
        self.parts.iter().map(|p| p.stream.as_str()).collect()
    }

    /// The partition of a dedupe key or event id.
    pub fn partition_of(&self, key: &str) -> usize {
        match self.parts.len() {
            1 => 0,
            n => usize::from(crate::redis_url::slot(key)) % n,
        }
    }

    /// An entry id as callers see it: the partition's own with one partition, `k/id` with more.
    fn outer(&self, k: usize, id: String) -> String {
        if self.parts.len() == 1 {
            id
        } else {
            format!("{k}/{id}")
        }
    }

    /// The partition and the stream's own id of an entry id (ids without a partition are
    /// partition 0's, as a single-stream queue wrote them).
    fn inner<'a>(&self, id: &'a str) -> (usize, &'a str) {
        match id.split_once('/') {
            Some((k, rest)) => match k.parse::<usize>() {
                Ok(k) if k < self.parts.len() => (k, rest),
                _ => (0, id),
            },
            None => (0, id),
        }
    }

    /// The partition an event is appended to: its dedupe key's (so the dedupe check and the append
    /// are one script in one slot), else its id's.
    fn placed(&self, event: &EventInput, dedupe: Option<(&str, Duration)>) -> usize {
        self.partition_of(dedupe.map_or(event.id.as_str(), |(key, _)| key))
    }

    fn outer_enqueued(&self, k: usize, e: Enqueued) -> Enqueued {
        match e {
            Enqueued::Added(id) => Enqueued::Added(self.outer(k, id)),
            Enqueued::Duplicate => Enqueued::Duplicate,
        }
    }

    fn outer_delivery(&self, k: usize, mut d: Delivery) -> Delivery {
        d.id = self.outer(k, d.id);
        d
    }

    /// The partition and a copy of `d` with the stream's own id.
    fn inner_delivery(&self, d: &Delivery) -> (usize, Delivery) {
        let (k, id) = self.inner(&d.id);
        (
            k,
            Delivery {
                id: id.to_string(),
                ..d.clone()
            },
        )
    }

    /// Create every partition's consumer group (and stream) if missing.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        for p in &self.parts {
            p.ensure_group().await?;
        }
        Ok(())
    }

    /// Append an event to its partition, unless `dedupe` names a key seen within its window.
    pub async fn enqueue(
        &self,
        event: &EventInput,
        dedupe: Option<(&str, Duration)>,
    ) -> Result<Enqueued, QueueError> {
        let k = self.placed(event, dedupe);
        let stored = self.parts[k].enqueue(event, dedupe).await?;
        Ok(self.outer_enqueued(k, stored))
    }

    /// [`Self::enqueue`] behind the rate-limit check of `rule` on `limit_key`, in the same op
    /// (one node only: on a cluster the limit's key lies in another slot).
    pub async fn enqueue_limited(
        &self,
        event: &EventInput,
        dedupe: Option<(&str, Duration)>,
        rule: &Rule,
        limit_key: &str,
    ) -> Result<(Verdict, Option<Enqueued>), QueueError> {
        let k = self.placed(event, dedupe);
        let (verdict, stored) = self.parts[k]
            .enqueue_limited(event, dedupe, rule, limit_key)
            .await?;
        Ok((verdict, stored.map(|e| self.outer_enqueued(k, e))))
    }

    /// A connection of its own for blocking reads (a blocked connection serves nothing else).
    pub async fn reader(&self) -> Result<Conn, QueueError> {
        Ok(self.target.dedicated().await?)
    }

    /// Read up to `count` entries of partition `partition` (modulo the partitions); see
    /// [`Partition::read`].
    pub async fn read(
        &self,
        partition: usize,
        conn: &mut Conn,
        count: usize,
        block: Duration,
        own_pending: bool,
    ) -> Result<(Vec<Delivery>, bool), QueueError> {
        let k = partition % self.parts.len();
        let (ds, lost) = self.parts[k].read(conn, count, block, own_pending).await?;
        Ok((
            ds.into_iter().map(|d| self.outer_delivery(k, d)).collect(),
            lost,
        ))
    }

    /// Done with several entries: one round trip per partition they are in.
    pub async fn ack_many(&self, ids: &[&str]) -> Result<(), QueueError> {
        let mut by_part: Vec<Vec<&str>> = vec![Vec::new(); self.parts.len()];
        for id in ids {
            let (k, own) = self.inner(id);
            by_part[k].push(own);
        }
        for (k, own) in by_part.iter().enumerate() {
            self.parts[k].ack_many(own).await?;
        }
        Ok(())
    }

    /// Renew the lease of an entry this consumer is still working on.
    pub async fn touch(&self, id: &str) -> Result<(), QueueError> {
        let (k, own) = self.inner(id);
        self.parts[k].touch(own).await
    }

    /// Done: acknowledge and delete.
    pub async fn ack(&self, id: &str) -> Result<(), QueueError> {
        let (k, own) = self.inner(id);
        self.parts[k].ack(own).await
    }

    /// Try again after `delay`, with the attempt counted; atomic with the ack.
    pub async fn retry(&self, d: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let (k, own) = self.inner_delivery(d);
        self.parts[k].retry(&own, delay).await
    }

    /// Give up: the dead letters of its partition, with the reason; atomic with the ack.
    pub async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        let (k, own) = self.inner_delivery(d);
        self.parts[k].dead_letter(&own, reason).await
    }

    /// Dead-letter an event that never entered the work stream (`ack: processed`).
    pub async fn dead_letter_event(
        &self,
        event: &EventInput,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.parts[self.partition_of(&event.id)]
            .dead_letter_event(event, reason)
            .await
    }

    /// Remember a dedupe key (in its partition); `false` when it was already there.
    pub async fn mark_seen(&self, key: &str, window: Duration) -> Result<bool, QueueError> {
        self.parts[self.partition_of(key)]
            .mark_seen(key, window)
            .await
    }

    /// Forget a dedupe key.
    pub async fn forget_seen(&self, key: &str) -> Result<(), QueueError> {
        self.parts[self.partition_of(key)].forget_seen(key).await
    }

    /// Move partition `partition`'s due retries back to its work stream; how many moved. (Each
    /// partition has workers of its own in every process, and they keep their partition.)
    pub async fn promote_due(&self, partition: usize, limit: usize) -> Result<u64, QueueError> {
        self.parts[partition % self.parts.len()]
            .promote_due(limit)
            .await
    }

    /// Take over partition `partition`'s entries idle longer than `lease`; see
    /// [`Partition::reclaim`].
    pub async fn reclaim(
        &self,
        partition: usize,
        lease: Duration,
        max_deliveries: u64,
    ) -> Result<(Vec<Delivery>, u64), QueueError> {
        let k = partition % self.parts.len();
        let (ds, deleted) = self.parts[k].reclaim(lease, max_deliveries).await?;
        Ok((
            ds.into_iter().map(|d| self.outer_delivery(k, d)).collect(),
            deleted,
        ))
    }

    /// Counts, summed over the partitions (the oldest age is the oldest partition's).
    pub async fn stats(&self) -> Result<Stats, QueueError> {
        let mut total = Stats::default();
        for p in &self.parts {
            let s = p.stats().await?;
            total.depth += s.depth;
            total.pending += s.pending;
            total.delayed += s.delayed;
            total.dead += s.dead;
            total.oldest_age_ms = total.oldest_age_ms.max(s.oldest_age_ms);
        }
        Ok(total)
    }

    /// Dead letters, oldest first, `count` at most.
    pub async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.merged_dead_letters(count, false).await
    }

    /// The newest `count` dead letters, newest first.
    pub async fn newest_dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.merged_dead_letters(count, true).await
    }

    /// The first `count` dead letters of every partition, merged by time: the oldest or the
    /// newest `count` of the queue.
    async fn merged_dead_letters(
        &self,
        count: usize,
        newest: bool,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let mut all = Vec::new();
        for (k, p) in self.parts.iter().enumerate() {
            let letters = p.dead_range(count, newest).await?;
            all.extend(letters.into_iter().map(|mut l| {
                l.id = self.outer(k, l.id);
                l
            }));
        }
        // stable sorts: letters of the same millisecond keep their stream's order
        if newest {
            all.sort_by_key(|l| std::cmp::Reverse(l.at_ms));
        } else {
            all.sort_by_key(|l| l.at_ms);
        }
        all.truncate(count);
        Ok(all)
    }

    /// Put dead letters back on their partitions' work streams (all when `ids` is empty).
    pub async fn replay_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        let mut n = 0;
        for (k, own) in self.by_partition(ids) {
            n += self.parts[k].replay_dead(&own).await?;
        }
        Ok(n)
    }

    /// Delete dead letters (all when `ids` is empty).
    pub async fn purge_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        let mut n = 0;
        for (k, own) in self.by_partition(ids) {
            n += self.parts[k].purge_dead(&own).await?;
        }
        Ok(n)
    }

    /// `ids` grouped by partition, the stream's own ids; every partition with an empty list
    /// ("all") when `ids` is empty.
    fn by_partition(&self, ids: &[String]) -> Vec<(usize, Vec<String>)> {
        if ids.is_empty() {
            return (0..self.parts.len()).map(|k| (k, Vec::new())).collect();
        }
        let mut by: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
        for id in ids {
            let (k, own) = self.inner(id);
            by.entry(k).or_default().push(own.to_string());
        }
        by.into_iter().collect()
    }

    /// Consumers that read within `within`: the most any partition has (each engine process
    /// reads every partition).
    pub async fn active_consumers(&self, within: Duration) -> Result<u64, QueueError> {
        let mut most = 0;
        for p in &self.parts {
            most = most.max(p.active_consumers(within).await?);
        }
        Ok(most)
    }
}

impl super::Outcomes for RedisQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn ack<'a>(&'a self, d: &'a Delivery) -> super::QueueFuture<'a> {
        Box::pin(self.ack(&d.id))
    }

    fn retry<'a>(&'a self, d: &'a Delivery, delay: Duration) -> super::QueueFuture<'a> {
        Box::pin(RedisQueue::retry(self, d, delay))
    }

    fn dead_letter<'a>(&'a self, d: &'a Delivery, reason: &'a str) -> super::QueueFuture<'a> {
        Box::pin(RedisQueue::dead_letter(self, d, reason))
    }

    fn ack_many<'a>(&'a self, ds: &'a [&'a Delivery]) -> super::QueueFuture<'a> {
        Box::pin(async move {
            let ids: Vec<&str> = ds.iter().map(|d| d.id.as_str()).collect();
            RedisQueue::ack_many(self, &ids).await
        })
    }

    fn touch<'a>(&'a self, d: &'a Delivery) -> super::QueueFuture<'a> {
        Box::pin(RedisQueue::touch(self, &d.id))
    }
}

/// Start-up checks of a Redis that holds queues: a warning for each setting that can lose
/// events. An error when Redis cannot be reached at all.
pub async fn configuration_warnings(url: &str) -> Result<Vec<String>, QueueError> {
    let target = Target::parse(url).map_err(QueueError::BadUrl)?;
    // on a cluster, `CONFIG GET` goes to one node: the nodes of a cluster are set up alike
    let mut c = tokio::time::timeout(Duration::from_secs(3), target.dedicated())
        .await
        .map_err(|_| QueueError::Unavailable("timed out connecting".into()))??;
    let get = |name: &'static str| redis::cmd("CONFIG").arg("GET").arg(name).to_owned();
    let mut warnings = Vec::new();
    // Managed Redis services may refuse CONFIG; then nothing can be checked.
    if let Ok(v) = get("appendonly").query_async::<Vec<String>>(&mut c).await
        && v.get(1).map(String::as_str) == Some("no")
    {
        warnings.push("Redis has no AOF persistence (appendonly no): a Redis restart loses queued events that were answered 2xx".to_string());
    }
    if let Ok(v) = get("maxmemory-policy")
        .query_async::<Vec<String>>(&mut c)
        .await
        && let Some(policy) = v.get(1).filter(|p| p.as_str() != "noeviction")
    {
        warnings.push(format!("Redis maxmemory-policy is {policy}: under memory pressure it may evict queued events; set noeviction"));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(partitions: u32) -> RedisQueue {
        // made without connecting
        RedisQueue::partitioned("redis://127.0.0.1:1", "p", "vapi", "c", partitions).unwrap()
    }

    #[test]
    fn one_partition_keeps_the_single_stream_keys_and_ids() {
        let q = queue(1);
        assert_eq!(q.stream_keys(), ["p:{q:vapi}:stream"]);
        assert_eq!(q.outer(0, "1-0".into()), "1-0");
        assert_eq!(q.inner("1-0"), (0, "1-0"));
        assert_eq!(q.partition_of("anything"), 0);
    }

    #[test]
    fn partitions_have_their_own_slots_and_ids_that_name_them() {
        let q = queue(4);
        assert_eq!(
            q.stream_keys(),
            [
                "p:{q:vapi}:stream",
                "p:{q:vapi:1}:stream",
                "p:{q:vapi:2}:stream",
                "p:{q:vapi:3}:stream"
            ]
        );
        let slots: std::collections::BTreeSet<u16> = q
            .stream_keys()
            .iter()
            .map(|k| crate::redis_url::slot(k))
            .collect();
        assert_eq!(slots.len(), 4);
        assert_eq!(q.outer(2, "1-0".into()), "2/1-0");
        assert_eq!(q.inner("2/1-0"), (2, "1-0"));
        assert_eq!(
            q.inner("1-0"),
            (0, "1-0"),
            "a single-stream id is partition 0's"
        );
        assert_eq!(q.inner("9/1-0"), (0, "9/1-0"), "no such partition");
        // a key always lands in the same partition, and keys spread over all of them
        let spread: std::collections::BTreeSet<usize> = (0..200)
            .map(|i| q.partition_of(&format!("call-{i}|status-update")))
            .collect();
        assert_eq!(spread.len(), 4);
        assert_eq!(q.partition_of("call-7"), q.partition_of("call-7"));
    }
}
