//! One stream of a queue with its retries, dead letters and dedupe markers, all in one slot: its
//! keys, scripts and connections, and the enqueue (dedupe + append in one script, run on the
//! request path's group commit).

use std::time::Duration;

use mobc_redis::RedisConnectionManager;
use mobc_redis::mobc::Pool;
use mobc_redis::redis::{self, Value};

use crate::rate_limit::Rule;
use crate::rate_limit::redis::Verdict;
use crate::redis_conn::Conn;
use crate::redis_conn::group_commit::{Append, GroupCommit, Op, ReplicaWait, verdict};
use crate::transform::EventInput;

use super::entry::*;
use super::scripts::*;
use super::{CHECKOUT_TIMEOUT, GROUP};
use crate::queue::{Enqueued, QueueError, RedisStall};

/// One stream of a queue with its retries, dead letters and dedupe markers, all in one slot.
pub struct Partition {
    /// Pooled connections on one node; `None` on a cluster, whose client is multiplexed per node
    /// already (its operations go over the shared connection).
    pub(super) pool: Option<Pool<RedisConnectionManager>>,
    /// The request path's enqueues, pipelined on one connection (see `redis_conn::group_commit`); workers
    /// and admin commands take pooled connections.
    pub(super) shared: GroupCommit,
    pub(super) stream: String,
    pub(super) delayed: String,
    pub(super) dead: String,
    pub(super) seen_prefix: String,
    /// The processes whose workers read this partition lately: consumer name -> last beat (ms).
    pub(super) workers: String,
    pub(super) consumer: String,
    pub(super) ack: redis::Script,
    pub(super) retry: redis::Script,
    pub(super) dead_letter: redis::Script,
    pub(super) promote: redis::Script,
    /// Replicas an enqueue must reach before it is answered (`queue.durability: replicated`).
    pub(super) replication: Option<ReplicaWait>,
    /// Told when this process schedules a retry here, so the promoter sleeping until the next
    /// one is due (or for its idle bound) looks again.
    pub(super) retry_scheduled: tokio::sync::Notify,
}

impl Partition {
    /// The partition whose keys start with `base` (`<prefix>:{q:<name>}` or
    /// `<prefix>:{q:<name>:<k>}`), on the queue's connections.
    pub(super) fn build(
        pool: Option<Pool<RedisConnectionManager>>,
        shared: GroupCommit,
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
            workers: format!("{base}:workers"),
            consumer: consumer.to_string(),
            ack: redis::Script::new(ACK),
            retry: redis::Script::new(RETRY),
            dead_letter: redis::Script::new(DEAD),
            promote: redis::Script::new(PROMOTE),
            replication: None,
            retry_scheduled: tokio::sync::Notify::new(),
        }
    }

    pub(super) async fn conn(&self) -> Result<QueueConn, QueueError> {
        let got = match &self.pool {
            Some(pool) => tokio::time::timeout(CHECKOUT_TIMEOUT, pool.get())
                .await
                .map(|c| c.map(QueueConn::Pooled).map_err(QueueError::unavailable)),
            None => tokio::time::timeout(CHECKOUT_TIMEOUT, self.shared.get())
                .await
                .map(|c| c.map(QueueConn::Shared).map_err(QueueError::from)),
        };
        got.unwrap_or_else(|_| {
            Err(QueueError::unavailable(RedisStall::NoConnection(
                CHECKOUT_TIMEOUT.as_secs(),
            )))
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
            // a full Redis refuses XGROUP CREATE before it looks for the group: one that
            // exists (made with its stream) is all a worker needs to drain it
            Err(e) if e.code() == Some("OOM") && self.group_exists().await? => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the stream has the workers' consumer group (`XINFO GROUPS`, a read a full Redis
    /// still answers).
    async fn group_exists(&self) -> Result<bool, QueueError> {
        let mut c = self.conn().await?;
        let r: Result<Value, _> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(&mut c)
            .await;
        match settle(c, r) {
            Ok(groups) => {
                let groups: Vec<std::collections::HashMap<String, Value>> =
                    redis::from_redis_value(&groups).map_err(QueueError::from)?;
                Ok(groups.iter().any(|g| {
                    g.get("name")
                        .and_then(|n| redis::from_redis_value::<String>(n).ok())
                        .is_some_and(|n| n == GROUP)
                }))
            }
            // no such stream: no group either
            Err(e)
                if e.redis_cause()
                    .is_some_and(|r| r.to_string().contains("no such key")) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Append an event, unless `dedupe` names a key seen within its window: one op of the
    /// request path's next Redis group (see `redis_conn::group_commit`), answered within 2 s.
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
        let (v, id) = verdict(&answer)?;
        Ok((v, (v[0] == 1).then(|| stored(id.to_string()))))
    }

    /// The append of `event`: the payload, the dedupe key and window.
    pub(super) fn append(
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
            payload: event.stored_meta()?,
            body: event.body.clone(),
            dedupe: dedupe.is_some(),
            window_secs,
            replication: self.replication,
        })
    }

    /// An op on the request path's shared connection, answered within 2 s.
    pub(super) async fn shared_run(&self, op: Op) -> Result<Value, QueueError> {
        match tokio::time::timeout(CHECKOUT_TIMEOUT, self.shared.run(op)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(QueueError::unavailable(RedisStall::NoAnswer(
                CHECKOUT_TIMEOUT.as_secs(),
            ))),
        }
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
}

/// A connection for the queue's own operations: pooled on one node, the shared one on a cluster.
pub(super) enum QueueConn {
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
pub(super) fn settle<T>(
    conn: QueueConn,
    result: Result<T, redis::RedisError>,
) -> Result<T, QueueError> {
    if result.is_err()
        && let QueueConn::Pooled(c) = conn
    {
        drop(c.into_inner());
    }
    Ok(result?)
}
