//! What a partition holds (depth, pending, delayed, dead, the oldest entry's age) and how many
//! consumers read from it recently.

use std::time::Duration;

use mobc_redis::redis::{self, AsyncCommands, Value};

use super::GROUP;
use super::entry::*;
use super::partition::*;
use crate::queue::{QueueError, Stats};

impl Partition {
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
        let oldest_age_ms = parse_entries(first).first().and_then(|d| {
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

    /// Say that this process's workers read this partition now (`now_ms`): one member per
    /// process in a sorted set, scored by its last beat; members older than `alive` leave, and
    /// the key expires on its own once no process beats.
    pub async fn beat(&self, now_ms: i64, alive: Duration) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let alive_ms = alive.as_millis() as i64;
        let r: Result<(), redis::RedisError> = redis::pipe()
            .cmd("ZADD")
            .arg(&self.workers)
            .arg(now_ms)
            .arg(&self.consumer)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.workers)
            .arg("-inf")
            .arg(now_ms - alive_ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&self.workers)
            .arg(alive_ms * 2)
            .ignore()
            .query_async(&mut c)
            .await;
        settle(c, r)
    }

    /// This process's workers stopped reading this partition.
    pub async fn leave(&self) -> Result<(), QueueError> {
        let mut c = self.conn().await?;
        let r: Result<(), redis::RedisError> = redis::cmd("ZREM")
            .arg(&self.workers)
            .arg(&self.consumer)
            .query_async(&mut c)
            .await;
        settle(c, r)
    }

    /// How many processes' workers beat within `alive` of `now_ms`.
    pub async fn reading(&self, now_ms: i64, alive: Duration) -> Result<u64, QueueError> {
        let mut c = self.conn().await?;
        let r: Result<u64, redis::RedisError> = redis::cmd("ZCOUNT")
            .arg(&self.workers)
            .arg(now_ms - alive.as_millis() as i64)
            .arg("+inf")
            .query_async(&mut c)
            .await;
        settle(c, r)
    }
}
