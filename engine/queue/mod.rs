//! The durable queue stage.
//!
//! The promise: a 2xx answer means the event is durable, and every durable event reaches its sink
//! exactly once in effect. The queue gives at-least-once delivery ([`redis::RedisQueue`] on Redis
//! Streams: atomic dedupe + append, consumer groups, acknowledged deletes, delayed retries, dead
//! letters, reclaiming entries of dead consumers); sinks make redelivery harmless by writing rows
//! keyed by the event id (`ON CONFLICT DO NOTHING`).
//!
//! Without REDIS_URL (development) [`memory::MemoryQueue`] stands in: same outcomes, nothing
//! survives a restart.

pub mod memory;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::transform::EventInput;
use memory::MemoryQueue;
use redis::RedisQueue;

/// What lies under a queue failure: the error Redis, the pool or the engine's own deadline
/// returned. Shared, because one failure of a group commit answers every request waiting on it.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why a queue operation failed. Callers answer 503 (ingest) or retry later (worker); the
/// operator's log line prints the whole chain (`diagnostics::chain`), the client's 503 none of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// Redis refused, failed or did not answer in time.
    #[error("queue unavailable")]
    Unavailable(#[source] Cause),
    /// REDIS_URL cannot be used (why, and the forms it takes: `redis_conn::Target::parse`).
    #[error("queue unavailable")]
    BadUrl(#[source] Arc<crate::redis_conn::RedisUrlError>),
    /// Redis answers but refuses writes: its `maxmemory` is reached under `noeviction` (the policy
    /// a queue needs: Redis never drops an event to make room). Reads, acks and deletes still
    /// work, so workers drain it.
    #[error(
        "queue full: Redis reached its maxmemory and refuses writes (maxmemory-policy noeviction): add workers to drain the backlog, or give Redis more memory"
    )]
    RedisFull,
    /// A Redis Cluster master holding the queue's slots does not answer and no replica has
    /// taken over yet: the cluster redirects to the dead node (MOVED), or says CLUSTERDOWN or
    /// TRYAGAIN. Over once a replica is promoted (the cluster's node timeout and a few seconds).
    #[error("queue unavailable: Redis Cluster failover in progress")]
    Failover(#[source] Cause),
    /// Fewer replicas than `queue.replication.replicas` confirmed the event within its timeout
    /// (`queue.durability: replicated`): the master has it, a failover now could lose it, so the
    /// request is answered 503 and the provider's retry (a duplicate within the dedupe window)
    /// asks again.
    #[error("queue unavailable: not replicated")]
    NotReplicated(#[source] Cause),
    /// An in-process queue holds all it may (its name).
    #[error("queue unavailable: in-process queue `{0}` is full")]
    Full(String),
    /// An event could not be encoded for storage.
    #[error("the event cannot be stored")]
    Encode(#[source] Arc<serde_json::Error>),
    /// The blocking task running a transform failed (panicked or was cancelled).
    #[error("the transform task failed")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

/// What the engine itself saw go wrong with Redis, where no library error says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisStall {
    #[error("no Redis connection within {0} s")]
    NoConnection(u64),
    #[error("Redis did not answer within {0} s")]
    NoAnswer(u64),
    #[error("no answer to a read within {0} s")]
    ReadLost(u64),
    #[error("the enqueue script stored nothing")]
    NothingStored,
}

impl QueueError {
    /// Redis, or the way to it, failed with `cause`.
    pub fn unavailable(cause: impl std::error::Error + Send + Sync + 'static) -> QueueError {
        QueueError::Unavailable(Arc::new(cause))
    }

    /// The Redis error underneath, when there is one (to tell Redis's own refusals apart).
    pub fn redis_cause(&self) -> Option<&::redis::RedisError> {
        match self {
            QueueError::Unavailable(c) | QueueError::Failover(c) | QueueError::NotReplicated(c) => {
                c.downcast_ref()
            }
            _ => None,
        }
    }
}

impl From<::redis::RedisError> for QueueError {
    fn from(e: ::redis::RedisError) -> Self {
        // "OOM command not allowed when used memory > 'maxmemory'": Redis is full, not down
        match e.code() {
            Some("OOM") => QueueError::RedisFull,
            Some("NOREPL") => QueueError::NotReplicated(Arc::new(e)),
            _ if e.is_cluster_error()
                || matches!(
                    e.kind(),
                    ::redis::ErrorKind::MasterDown | ::redis::ErrorKind::ClusterConnectionNotFound
                ) =>
            {
                QueueError::Failover(Arc::new(e))
            }
            _ => QueueError::unavailable(e),
        }
    }
}

impl From<serde_json::Error> for QueueError {
    fn from(e: serde_json::Error) -> Self {
        QueueError::Encode(Arc::new(e))
    }
}

/// Result of an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Appended with this stream id.
    Added(String),
    /// The dedupe key was seen within its window: not appended again.
    Duplicate,
}

/// One entry handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The stream entry id.
    pub id: String,
    pub event: EventInput,
    /// Attempts made before this one (0 on the first delivery).
    pub attempts: u32,
    /// The event's stored form as the queue keeps it (a Redis entry's `e`, beside its raw body),
    /// what the archive keeps as the request (`archive::Recorder::note`) rather than writing
    /// the same JSON again; `None` where the queue keeps no such text.
    pub stored: Option<String>,
}

/// A dead-lettered event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub event_id: String,
    pub reason: String,
    pub attempts: u32,
    /// When it was dead-lettered (Unix milliseconds).
    pub at_ms: i64,
    #[serde(skip)]
    pub event: Option<EventInput>,
}

/// Counts for `engine queue stats` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Entries in the work stream (waiting or being processed).
    pub depth: u64,
    /// Entries delivered to a consumer and not yet acknowledged.
    pub pending: u64,
    /// Retries waiting for their time.
    pub delayed: u64,
    pub dead: u64,
    /// Age of the oldest entry in the work stream, milliseconds.
    pub oldest_age_ms: Option<u64>,
}

/// Where a pipeline's events go.
#[derive(Clone)]
pub enum Queue {
    Redis(Arc<RedisQueue>),
    Memory(Arc<MemoryQueue>),
}

impl Queue {
    /// The queue's name (its pipeline's, unless `queue.name` says otherwise).
    pub fn name(&self) -> &str {
        match self {
            Queue::Redis(q) => q.name(),
            Queue::Memory(q) => Outcomes::name(&**q),
        }
    }

    /// Its counts: what `engine queue stats` prints and the gauges show. The in-process queue
    /// knows what waits and what is dead.
    pub async fn stats(&self) -> Result<Stats, QueueError> {
        match self {
            Queue::Redis(q) => q.stats().await,
            Queue::Memory(q) => Ok(Stats {
                depth: q.len() as u64,
                dead: q.dead_count() as u64,
                ..Stats::default()
            }),
        }
    }

    /// Store an event durably (Redis) or in process; `dedupe` skips a repeat within its window.
    pub async fn enqueue(
        &self,
        event: EventInput,
        dedupe: Option<(&str, Duration)>,
    ) -> Result<Enqueued, QueueError> {
        match self {
            Queue::Redis(q) => q.enqueue(&event, dedupe).await,
            Queue::Memory(q) => q.enqueue(event, dedupe),
        }
    }

    /// Remember a dedupe key for its window: `false` for a repeat.
    pub async fn mark_seen(&self, key: &str, window: Duration) -> Result<bool, QueueError> {
        match self {
            Queue::Redis(q) => q.mark_seen(key, window).await,
            Queue::Memory(q) => Ok(q.mark_seen(key, window)),
        }
    }

    /// Forget a dedupe key (the event was not processed after all).
    pub async fn forget_seen(&self, key: &str) -> Result<(), QueueError> {
        match self {
            Queue::Redis(q) => q.forget_seen(key).await,
            Queue::Memory(q) => {
                q.forget_seen(key);
                Ok(())
            }
        }
    }

    /// The newest `limit` dead letters, newest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        match self {
            Queue::Redis(q) => q.newest_dead_letters(limit).await,
            Queue::Memory(q) => Ok(q.dead_letters().into_iter().rev().take(limit).collect()),
        }
    }

    /// Put dead letters back on the queue with a fresh attempt count (all when `ids` is empty);
    /// how many went back.
    pub async fn replay_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        match self {
            Queue::Redis(q) => q.replay_dead(ids).await,
            Queue::Memory(q) => q.replay_dead(ids),
        }
    }

    /// Delete dead letters (all when `ids` is empty); how many.
    pub async fn purge_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        match self {
            Queue::Redis(q) => q.purge_dead(ids).await,
            Queue::Memory(q) => Ok(q.purge_dead(ids)),
        }
    }

    /// Engine processes whose workers read this queue now: on Redis, those whose workers said
    /// so within the last 30 s (any instance; each says so every 10 s while it runs, and leaves
    /// when it stops); in process, `None` (the caller is the only one).
    pub async fn instances_reading(&self) -> Result<Option<u64>, QueueError> {
        match self {
            Queue::Redis(q) => q
                .reading(chrono::Utc::now().timestamp_millis())
                .await
                .map(Some),
            Queue::Memory(_) => Ok(None),
        }
    }

    /// Keep a permanently failed event with its reason.
    pub async fn dead_letter(&self, event: &EventInput, reason: &str) -> Result<(), QueueError> {
        match self {
            Queue::Redis(q) => q.dead_letter_event(event, reason).await,
            Queue::Memory(q) => {
                let d = Delivery {
                    id: String::new(),
                    event: event.clone(),
                    attempts: 0,
                    stored: None,
                };
                Outcomes::dead_letter(&**q, &d, reason).await
            }
        }
    }
}

/// The future of a queue outcome operation.
pub type QueueFuture<'a> = Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send + 'a>>;

/// What a worker does with a delivery once it knows the outcome: the same three operations on
/// Redis and in process.
pub trait Outcomes: Send + Sync {
    fn name(&self) -> &str;
    /// Done.
    fn ack<'a>(&'a self, d: &'a Delivery) -> QueueFuture<'a>;
    /// Try again after `delay`, the attempt counted.
    fn retry<'a>(&'a self, d: &'a Delivery, delay: Duration) -> QueueFuture<'a>;
    /// Give up, keeping the event and the reason.
    fn dead_letter<'a>(&'a self, d: &'a Delivery, reason: &'a str) -> QueueFuture<'a>;
    /// Done, for several at once.
    fn ack_many<'a>(&'a self, ds: &'a [&'a Delivery]) -> QueueFuture<'a> {
        Box::pin(async move {
            for d in ds {
                self.ack(d).await?;
            }
            Ok(())
        })
    }
    /// Still working on it: renew the lease so nobody takes the entry over.
    fn touch<'a>(&'a self, _d: &'a Delivery) -> QueueFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// A consumer name unique to this process start: a restarted process must not inherit (and so
/// hide) the pending entries of its previous life; the reaper hands those to live consumers.
pub fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "engine".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Delay before retry number `attempt` (1 for the first retry): `initial × 2^(attempt−1)`, capped
/// at `max`, with equal jitter (half fixed, half random) so a burst of failures does not retry in
/// lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(30)));
    let capped = exp.min(max);
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(600));
        for _ in 0..100 {
            let d1 = backoff(1, initial, max);
            assert!(
                d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1),
                "{d1:?}"
            );
            let d4 = backoff(4, initial, max);
            assert!(
                d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8),
                "{d4:?}"
            );
            let d30 = backoff(30, initial, max);
            assert!(d30 >= Duration::from_secs(300) && d30 <= max, "{d30:?}");
        }
        assert!(backoff(u32::MAX, initial, max) <= max);
    }

    /// Redis's own words reach the operator's line through the chain, sorted into the outage
    /// conditions by what Redis said, never by matching text; the 503 a client gets says none.
    #[test]
    fn redis_errors_keep_their_cause() {
        let refused = ::redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        let e = QueueError::from(refused);
        assert!(matches!(e, QueueError::Unavailable(_)), "{e:?}");
        assert_eq!(e.to_string(), "queue unavailable");
        let chain = crate::diagnostics::chain(&e);
        assert!(chain.starts_with("queue unavailable: "), "{chain}");
        assert!(chain.contains("connection refused"), "{chain}");
        assert!(e.redis_cause().is_some());

        // an error reply as Redis sends it
        let reply = |text: &str| match ::redis::parse_redis_value(text.as_bytes()) {
            Ok(::redis::Value::ServerError(e)) => ::redis::RedisError::from(e),
            other => panic!("{other:?}"),
        };
        let e = QueueError::from(reply("-NOREPL 1 of 2 replicas confirmed\r\n"));
        assert!(matches!(e, QueueError::NotReplicated(_)), "{e:?}");
        assert!(crate::diagnostics::chain(&e).contains("1 of 2 replicas confirmed"));

        let oom = reply("-OOM command not allowed when used memory > 'maxmemory'.\r\n");
        assert!(matches!(QueueError::from(oom), QueueError::RedisFull));

        // the engine's own deadlines say what they waited for, and carry no Redis error
        let e = QueueError::unavailable(RedisStall::NoAnswer(2));
        assert_eq!(
            crate::diagnostics::chain(&e),
            "queue unavailable: Redis did not answer within 2 s"
        );
        assert!(e.redis_cause().is_none());
        // shared by every request of a failed group, each with the same cause
        let copy = e.clone();
        assert_eq!(
            crate::diagnostics::chain(&copy),
            crate::diagnostics::chain(&e)
        );
    }

    #[test]
    fn consumer_names_differ_per_start() {
        assert_ne!(consumer_name(), consumer_name());
    }
}
