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
}
