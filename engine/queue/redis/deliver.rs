//! Deliveries: reads for a consumer (XREADGROUP: its own pending entries, or new ones), the
//! outcomes that end them (ack + delete, many at once), lease renewal, and retries (scheduled in
//! the delayed set, atomic with the ack).

use std::time::Duration;

use mobc_redis::redis::{self, Value};

use crate::redis_conn::Conn;

use super::GROUP;
use super::entry::*;
use super::partition::*;
use crate::queue::{Delivery, QueueError, RedisStall};

/// How long past its block time a read may take before it counts as lost.
const READ_MARGIN: Duration = Duration::from_secs(5);

impl Partition {
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
        // A read that outlives its block time by READ_MARGIN has lost its answer (a node that
        // was blackholed and came back: the cluster client has been seen to wait on such a read
        // for ever, the worker wedged with events waiting). Failing it drops the connection; the
        // worker's outage handling retries with a new one.
        let answer = tokio::time::timeout(block + READ_MARGIN, cmd.query_async::<Value>(conn))
            .await
            .map_err(|_| {
                QueueError::unavailable(RedisStall::ReadLost((block + READ_MARGIN).as_secs()))
            })?;
        match answer {
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
        let scheduled = settle(c, r).map(|_| ());
        if scheduled.is_ok() {
            // a permit is kept when the promoter is not waiting: it looks again either way
            self.retry_scheduled.notify_one();
        }
        scheduled
    }
}
