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
use std::time::Duration;

use self::redis::{Delivery, QueueError};

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

    #[test]
    fn consumer_names_differ_per_start() {
        assert_ne!(consumer_name(), consumer_name());
    }
}
