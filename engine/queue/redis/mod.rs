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
//! commit, `redis_conn::group_commit`, with the rate-limit check before it when the limit rides along); ack +
//! delete; retry (schedule + ack); dead-letter (append + ack); promote due retries. A consumer
//! that dies leaves its entries pending;
//! [`RedisQueue::reclaim`] moves entries idle longer than the lease to a live consumer
//! (XAUTOCLAIM) and dead-letters entries delivered too many times (poison messages).
//!
//! The rooms, in the order an event meets them:
//!
//! ```text
//! partition  one stream's keys, scripts and connections; enqueue (dedupe + append, on the
//!            request path's group commit), dedupe markers
//! entry      the stored form of an event: fields `e` (the event without its body, JSON) and `b`
//!            (the raw body), read back in either form (`e` alone: the full form with a base64
//!            body, as retries and entries written before the raw-body form carry)
//! deliver    reads (XREADGROUP), acks (+ XDEL), lease renewal, retries
//! reclaim    the promoter (due retries back on the stream) and the reaper (XAUTOCLAIM)
//! dead       dead letters: append with the reason, list, replay, purge
//! stats      counts and active consumers
//! scripts    the Lua scripts every state change runs as (atomic)
//! mod        RedisQueue: one or several partitions behind one queue, partition-qualified ids;
//!            QueuePool: the connections every queue of a process shares on one Redis
//! ```

mod dead;
mod deliver;
mod entry;
mod partition;
mod reclaim;
mod scripts;
mod stats;

use std::time::Duration;

use mobc_redis::RedisConnectionManager;
use mobc_redis::mobc::Pool;
use mobc_redis::redis::{self};

use crate::rate_limit::Rule;
use crate::rate_limit::redis::Verdict;
use crate::redis_conn::group_commit::{GroupCommit, ReplicaWait};
use crate::redis_conn::{Conn, Target};

pub use partition::Partition;
pub use reclaim::Promoted;

use super::{DeadLetter, Delivery, Enqueued, QueueError, Stats};
use crate::transform::EventInput;

/// The consumer group every engine instance reads with.
pub const GROUP: &str = "engine";

/// How long a queue operation waits for a pooled connection, and an enqueue for its answer.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most pooled connections a process keeps to one Redis node for its queues' own commands. An
/// operation holds one for a round trip, so 16 carry every queue's acks and retries at the
/// engine's measured rates (docs/benchmarks.md); a checkout waits at most `CHECKOUT_TIMEOUT`.
const POOL_SIZE: u64 = 16;

/// How often each process says its workers read a queue's partition.
pub const BEAT: Duration = Duration::from_secs(10);
/// A process that has not said so for this long is not reading.
pub const ALIVE: Duration = Duration::from_secs(30);

/// The connections every queue of a process on one Redis shares: on one node, a pool for the
/// workers' and admin commands (acks, retries, the reaper and promoter, group creation); on a
/// cluster none (its client multiplexes per node, the operations go over `shared`); and `shared`,
/// the request path's group commit, which carries the enqueues.
///
/// One pool per process rather than one per queue: a pool keeps up to its size of connections
/// open, so a thousand queued pipelines held thousands of idle connections (and their buffers)
/// for what a handful carry (docs/benchmarks.md, "Many pipelines").
#[derive(Clone)]
pub struct QueuePool {
    pool: Option<Pool<RedisConnectionManager>>,
    shared: GroupCommit,
}

impl QueuePool {
    /// Connections of its own to `url` (a process with one queue: the CLI's commands).
    pub fn open(url: &str) -> Result<QueuePool, QueueError> {
        let target = Target::parse(url).map_err(|e| QueueError::BadUrl(std::sync::Arc::new(e)))?;
        Ok(QueuePool::new(&GroupCommit::new(target)))
    }

    /// Connections to `shared`'s Redis, enqueues over `shared` itself (not connected yet).
    pub fn new(shared: &GroupCommit) -> QueuePool {
        // No mobc get_timeout: mobc times checkouts with futures-timer, whose global thread
        // is woken (a futex and two context switches) on every checkout; `conn` bounds the wait
        // with tokio's timer instead (see docs/benchmarks.md, "Whole process").
        let pool = match shared.target() {
            Target::Single(client) => Some(
                Pool::builder()
                    .max_open(POOL_SIZE)
                    .max_idle(POOL_SIZE)
                    .health_check_interval(Some(Duration::from_secs(5)))
                    .get_timeout(None)
                    .build(RedisConnectionManager::new(client.clone())),
            ),
            Target::Cluster(_) => None,
        };
        QueuePool {
            pool,
            shared: shared.clone(),
        }
    }
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
    parts: Vec<Partition>,
}

impl RedisQueue {
    /// A queue `name` under `prefix` in one partition; `consumer` must be unique per process
    /// start (a reused name would hide a dead process's pending entries). Its connections are its
    /// own; [`RedisQueue::on`] puts it on connections shared with other queues.
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
        Ok(RedisQueue::on(
            &QueuePool::open(url)?,
            prefix,
            name,
            consumer,
            partitions,
        ))
    }

    /// [`RedisQueue::partitioned`] over `pool`, the connections it shares with every other queue
    /// of the process on the same Redis.
    pub fn on(
        pool: &QueuePool,
        prefix: &str,
        name: &str,
        consumer: &str,
        partitions: u32,
    ) -> RedisQueue {
        let parts = (0..partitions.max(1))
            .map(|k| {
                let base = if k == 0 {
                    format!("{prefix}:{{q:{name}}}")
                } else {
                    format!("{prefix}:{{q:{name}:{k}}}")
                };
                Partition::build(pool.pool.clone(), pool.shared.clone(), &base, consumer)
            })
            .collect();
        RedisQueue {
            name: name.to_string(),
            parts,
        }
    }

    /// This queue answering an enqueue only once `replication` says enough replicas have it
    /// (`queue.durability: replicated`).
    pub fn replicated(mut self, replication: ReplicaWait) -> RedisQueue {
        for p in &mut self.parts {
            p.replication = Some(replication);
        }
        self
    }

    /// Whether it lives on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.target().is_cluster()
    }

    /// Whether its enqueues wait for replicas (`queue.durability: replicated`).
    pub fn is_replicated(&self) -> bool {
        self.parts.iter().any(|p| p.replication.is_some())
    }

    /// The stream keys of its partitions (each lies in its queue's slot: on a cluster, a keyed
    /// command on one reaches the master that owns the queue).
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| p.stream.as_str())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Redis it lives on (every partition's: they share one `QueuePool`).
    fn target(&self) -> &Target {
        self.parts[0].shared.target()
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
            n => usize::from(crate::redis_conn::slot(key)) % n,
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
        Ok(self.target().dedicated().await?)
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
    pub async fn promote_due(
        &self,
        partition: usize,
        limit: usize,
    ) -> Result<Promoted, QueueError> {
        self.parts[partition % self.parts.len()]
            .promote_due(limit)
            .await
    }

    /// Told when this process schedules a retry on partition `partition` (its promoter waits on
    /// it).
    pub fn retry_scheduled(&self, partition: usize) -> &tokio::sync::Notify {
        &self.parts[partition % self.parts.len()].retry_scheduled
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

    /// Say that this process's workers read `partition` now (the lead of each partition's
    /// workers beat every [`BEAT`]).
    pub async fn beat(&self, partition: usize, now_ms: i64) -> Result<(), QueueError> {
        self.parts[partition % self.parts.len()]
            .beat(now_ms, ALIVE)
            .await
    }

    /// This process's workers of `partition` stopped.
    pub async fn leave(&self, partition: usize) -> Result<(), QueueError> {
        self.parts[partition % self.parts.len()].leave().await
    }

    /// How many engine processes have workers reading this queue (beat within [`ALIVE`]; the
    /// most of any partition, as every process reads every partition).
    pub async fn reading(&self, now_ms: i64) -> Result<u64, QueueError> {
        let mut most = 0;
        for p in &self.parts {
            most = most.max(p.reading(now_ms, ALIVE).await?);
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
    let target = Target::parse(url).map_err(|e| QueueError::BadUrl(std::sync::Arc::new(e)))?;
    // on a cluster, `CONFIG GET` goes to one node: the nodes of a cluster are set up alike
    const CONNECT: Duration = Duration::from_secs(3);
    let mut c = tokio::time::timeout(CONNECT, target.dedicated())
        .await
        .map_err(|_| {
            QueueError::unavailable(super::RedisStall::NoConnection(CONNECT.as_secs()))
        })??;
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

/// A Redis reply read back the way the worker reads its queue: as deliveries (an XREADGROUP or
/// XRANGE reply) and as dead letters. Only for the fuzz targets (`fuzz/`, feature `fuzzing`):
/// whatever bytes Redis hands back, decoding skips what it cannot read and never panics.
#[cfg(feature = "fuzzing")]
pub fn read_back(reply: redis::Value) -> (Vec<Delivery>, Vec<DeadLetter>) {
    let mut deliveries = entry::parse_read(reply.clone());
    deliveries.extend(entry::parse_entries(reply.clone()));
    (deliveries, entry::parse_dead(reply))
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
            .map(|k| crate::redis_conn::slot(k))
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
