//! Who reads a queue, and how: a worker's [`Taker`] (the in-process queue one delivery at a
//! time, Redis in batches topped up under load) and the [`PartitionWorkers`] of the workers of one Redis
//! partition in one process, which decides which of them read; and the consumer group a worker
//! needs before its first read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Options;
use crate::queue::memory::MemoryQueue;
use crate::queue::redis::RedisQueue;
use crate::queue::{Delivery, QueueError};

/// The workers of one queue partition in one engine process. At pace, workers reading side by
/// side each take a fraction of what arrived (four workers: batches of a quarter), and each
/// batch costs its reads, its statement, its ack and the wake-ups between them whatever its
/// size. So one worker, the lead, always reads; the helpers read only while the lead's reads
/// come back full, two or more in a row (more is waiting than one worker keeps up with: a
/// backlog), and go back to waiting once one is not. A backlog is drained by every worker; a
/// steady flow by one, in whole batches.
#[derive(Debug)]
pub struct PartitionWorkers {
    /// The lead's side of the backlog signal; `None` for a helper.
    lead: Option<watch::Sender<bool>>,
    backlog: watch::Receiver<bool>,
    /// The lead's full reads in a row.
    full_reads: u32,
}

impl PartitionWorkers {
    /// The lead of a partition's workers; [`PartitionWorkers::helper`] makes its helpers.
    pub fn lead() -> PartitionWorkers {
        let (tx, rx) = watch::channel(false);
        PartitionWorkers {
            lead: Some(tx),
            backlog: rx,
            full_reads: 0,
        }
    }

    /// A helper of these workers.
    pub fn helper(&self) -> PartitionWorkers {
        PartitionWorkers {
            lead: None,
            backlog: self.backlog.clone(),
            full_reads: 0,
        }
    }

    /// Whether this worker leads (and so runs the partition's reaper and promoter).
    pub(super) fn leads(&self) -> bool {
        self.lead.is_some()
    }

    /// Wait until this worker may read: at once for the lead, for a worker of the in-process
    /// queue and for one still reading its own pending entries; a helper of a settled Redis
    /// reader waits for a backlog. `false` when `stop` changed first.
    pub(super) async fn turn(&mut self, taker: &Taker, stop: &mut watch::Receiver<bool>) -> bool {
        if self.leads() || !taker.settled() {
            return true;
        }
        tokio::select! {
            waited = self.backlog.wait_for(|b| *b) => waited.is_ok(),
            _ = stop.changed() => false,
        }
    }

    /// What the lead's read took: two full batches in a row call the helpers in, one that is
    /// not sends them back (one full batch happens at pace too, when a burst lands).
    pub(super) fn took(&mut self, taker: &Taker, got: usize, batch: usize) {
        let Some(lead) = &self.lead else { return };
        if !taker.settled() {
            return;
        }
        self.full_reads = if got >= batch { self.full_reads + 1 } else { 0 };
        let backlog = self.full_reads >= 2;
        lead.send_if_modified(|b| std::mem::replace(b, backlog) != backlog);
    }
}

/// The dependency name of the Redis queue in outage logs and metrics.
pub(super) const REDIS: &str = "redis";

/// What a worker takes deliveries from: the in-process queue one at a time, or Redis in batches
/// (new entries; a short wait tops up a small batch), over a reader connection made again after
/// a failure.
pub(super) enum Taker {
    Memory {
        queue: Arc<MemoryQueue>,
        block: Duration,
    },
    Redis {
        queue: Arc<RedisQueue>,
        /// The partition this worker reads (`queue.partitions`).
        partition: usize,
        reader: Option<crate::redis_conn::Conn>,
        own_pending: bool,
        /// Events were already waiting for the previous read: the queue is busy, and a small
        /// batch is worth topping up.
        busy: bool,
        options: Options,
    },
}

impl Taker {
    pub(super) fn new(queue: &crate::queue::Queue, partition: usize, options: Options) -> Taker {
        match queue {
            crate::queue::Queue::Memory(q) => Taker::Memory {
                queue: q.clone(),
                block: options.block,
            },
            crate::queue::Queue::Redis(q) => Taker::Redis {
                queue: q.clone(),
                partition,
                reader: None,
                // not its "own" pending entries first: the consumer name is new with every
                // process start (`queue::consumer_name`), so at a worker's start that list holds
                // only the in-flight entries of the other workers of this process, and reading
                // them processed an event twice (seen as a second dead letter). Entries of a
                // stopped process come back through the reaper after their lease.
                own_pending: false,
                busy: false,
                options,
            },
        }
    }

    /// Whether it reads new entries of a Redis stream (its own pending ones, read first after a
    /// start, are read by every worker: no other would).
    pub(super) fn settled(&self) -> bool {
        matches!(
            self,
            Taker::Redis {
                own_pending: false,
                ..
            }
        )
    }

    /// The dependency whose outage a failure is.
    pub(super) fn dependency(&self) -> Option<&'static str> {
        match self {
            Taker::Memory { .. } => None,
            Taker::Redis { .. } => Some(REDIS),
        }
    }

    /// The next deliveries (possibly none, after the block time), and whether the queue was
    /// found lost (Redis restarted empty: the data-loss alarm).
    pub(super) async fn take(&mut self) -> Result<(Vec<Delivery>, bool), QueueError> {
        let (queue, partition, reader, own_pending, busy, options) = match self {
            Taker::Memory { queue, block } => {
                return Ok((queue.next(*block).await.into_iter().collect(), false));
            }
            Taker::Redis {
                queue,
                partition,
                reader,
                own_pending,
                busy,
                options,
            } => (queue, *partition, reader, own_pending, busy, *options),
        };
        // Each Redis step boxed: the taker's future is what an idle worker holds while it waits,
        // and inline these made it kilobytes for every worker of the in-process queue too.
        let conn = match reader {
            Some(c) => c,
            None => reader.insert(Box::pin(queue.reader()).await?),
        };
        // First without blocking: whether events were already waiting is what tells a busy
        // queue from an idle one (a blocking read returns as soon as one event arrives, busy or
        // not). Only when nothing waits does the read block for the next event.
        let mut read =
            Box::pin(queue.read(partition, conn, options.batch, Duration::ZERO, *own_pending))
                .await;
        let waiting = matches!(&read, Ok((got, _)) if !got.is_empty());
        if !*own_pending && matches!(&read, Ok((got, false)) if got.is_empty()) {
            read = Box::pin(queue.read(partition, conn, options.batch, options.block, false)).await;
        }
        let (mut got, lost) = match read {
            Ok(r) => r,
            Err(e) => {
                *reader = None;
                return Err(e);
            }
        };
        // At pace a read finds only the few events that arrived while the last batch was being
        // written; waiting a moment turns more of them into one statement and one ack. Only
        // under sustained load (events were waiting for this read and the previous one): after
        // an idle spell, or for a lone burst, the events go at once.
        if !*own_pending
            && waiting
            && *busy
            && got.len() < options.batch
            && !options.batch_wait.is_zero()
        {
            // held under a tenth of the lease: the entries in hand are not renewed while waiting
            tokio::time::sleep(options.batch_wait.min(options.lease / 10)).await;
            if let Ok((more, _)) = Box::pin(queue.read(
                partition,
                conn,
                options.batch - got.len(),
                Duration::ZERO,
                false,
            ))
            .await
            {
                got.extend(more);
            }
        }
        *busy = waiting;
        // After a restart the own pending list is read once; then new entries.
        if *own_pending && got.is_empty() {
            *own_pending = false;
        }
        Ok((got, lost))
    }
}

/// Make `queue`'s consumer group (nothing can be read before it exists), retrying with backoff
/// while Redis does not answer (a restart while the queue's master is down): a line when it
/// first fails and one when it is made at last, so the operator is not left with "retrying".
/// False when `stop` turned true first. Only a worker that `tells` logs.
pub(super) async fn group_made(
    queue: &RedisQueue,
    stop: &mut watch::Receiver<bool>,
    tells: bool,
) -> bool {
    let since = Instant::now();
    let mut failures = 0u32;
    loop {
        match queue.ensure_group().await {
            Ok(()) => {
                if failures > 0 && tells {
                    tracing::info!(
                        queue = queue.name(),
                        failed_attempts = failures,
                        waited_secs = since.elapsed().as_secs(),
                        "created the consumer group at last; the workers read"
                    );
                }
                return true;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 && tells {
                    tracing::error!(
                        queue = queue.name(),
                        error = &e as &dyn std::error::Error,
                        "cannot create the consumer group; retrying with backoff (a line follows when it is made)"
                    );
                }
                super::pause(stop, crate::ops::outage::pause_after(failures)).await;
                if *stop.borrow() {
                    return false;
                }
            }
        }
    }
}
