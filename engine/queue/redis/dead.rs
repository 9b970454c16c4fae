//! Dead letters: an event given up on, appended to the partition's dead stream with its reason
//! and attempts (atomic with the ack), listed, replayed onto the work stream, or purged.

use mobc_redis::redis::{self, AsyncCommands, Value};

use crate::transform::EventInput;

use super::GROUP;
use super::entry::*;
use super::partition::*;
use crate::queue::{DeadLetter, Delivery, QueueError};

impl Partition {
    /// Give up: append to the dead-letter stream with the reason; atomic with the ack.
    pub async fn dead_letter(&self, d: &Delivery, reason: &str) -> Result<(), QueueError> {
        let payload = d.event.stored_meta()?;
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
            .arg(d.event.body.as_ref())
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
        let payload = event.stored_meta()?;
        let mut c = self.conn().await?;
        let r: Result<String, _> = redis::cmd("XADD")
            .arg(&self.dead)
            .arg("*")
            .arg("e")
            .arg(payload)
            .arg("b")
            .arg(event.body.as_ref())
            .arg("reason")
            .arg(reason)
            .arg("attempts")
            .arg(1)
            .query_async(&mut c)
            .await;
        settle(c, r).map(|_| ())
    }

    /// `count` dead letters: the oldest first, or the newest first.
    pub(super) async fn dead_range(
        &self,
        count: usize,
        newest: bool,
    ) -> Result<Vec<DeadLetter>, QueueError> {
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
        Ok(parse_dead(v))
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
            let payload = event.stored_meta()?;
            redis::pipe()
                .atomic()
                .cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("e")
                .arg(payload)
                .arg("b")
                .arg(event.body.as_ref())
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
