//! What brings entries back: the promoter moves due retries from the delayed set to the stream;
//! the reaper takes over entries a dead consumer left pending longer than the lease (XAUTOCLAIM)
//! and dead-letters those delivered too many times without an answer (poison).

use std::time::Duration;

use mobc_redis::redis::{self, Value};

use super::GROUP;
use super::entry::*;
use super::partition::*;
use crate::queue::{Delivery, QueueError};

/// What one promotion did: how many retries went back to the stream, and when the next one
/// left in the delayed set is due (by Redis's clock; `None`: none left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    pub moved: u64,
    pub next_due: Option<Duration>,
}

impl Partition {
    /// Move retries whose time has come back to the work stream (`limit` at most).
    pub async fn promote_due(&self, limit: usize) -> Result<Promoted, QueueError> {
        let mut c = self.conn().await?;
        let r: Result<(u64, i64), _> = self
            .promote
            .key(&self.delayed)
            .key(&self.stream)
            .arg(limit)
            .invoke_async(&mut c)
            .await;
        settle(c, r).map(|(moved, next)| Promoted {
            moved,
            next_due: u64::try_from(next).ok().map(Duration::from_millis),
        })
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
                (
                    parts
                        .into_iter()
                        .nth(1)
                        .map(parse_entries)
                        .unwrap_or_default(),
                    deleted,
                )
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
}
