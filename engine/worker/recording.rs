//! Recording an outcome in the queue (ack, retry, dead letter) when Redis does not answer for a
//! moment: a Redis Cluster failover, a cut link.
//!
//! The event is written by then. Giving up on the first failed ack left the entries pending
//! until their lease ran out (60 s by default), and the reaper then took them over with the
//! warning meant for a dead consumer, although this one was alive and done. So a failed
//! recording is tried again, with the outage backoff, for up to half the lease; only then does
//! the error stand and the lease decide. Every recording is harmless twice (the queue's scripts
//! acknowledge first and add nothing for an entry no longer pending), so an answer lost after
//! Redis did the work costs nothing.

use std::future::Future;
use std::time::Instant;

use super::Worker;
use crate::ops::outage::{Condition, pause_after};
use crate::queue::QueueError;

impl Worker {
    /// Run `record` until it succeeds, fails for another reason than Redis being unavailable,
    /// or half the lease has passed.
    pub(super) async fn recorded<F, Fut>(&self, record: F) -> Result<(), QueueError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), QueueError>>,
    {
        let deadline = Instant::now() + self.options.lease / 2;
        let mut failures = 0u32;
        loop {
            match record().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            queue = self.outcomes.name(),
                            failed_attempts = failures,
                            "recorded the outcome once Redis answered again"
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    failures += 1;
                    let pause = pause_after(failures);
                    if Condition::of(&e).is_none() || Instant::now() + pause >= deadline {
                        return Err(e);
                    }
                    tracing::debug!(
                        queue = self.outcomes.name(),
                        error = &e as &dyn std::error::Error,
                        "cannot record the outcome yet; retrying"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}
