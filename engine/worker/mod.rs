//! The worker: dequeue -> transform -> sink -> ack / retry / dead-letter.
//!
//! ```text
//! read (new entries, blocking)                           reclaim (every lease/2): entries of dead
//!   -> Program::run in place (a batch)                     consumers, poison -> dead letters
//!        Rows    -> sink.write -> ack                    promote (when due): retries back
//!                           \-> SinkError::Retry -> retry with backoff, or dead-letter when
//!                                                   attempts are used up
//!                           \-> SinkError::Permanent -> dead-letter
//!        Dropped -> ack
//!        Failure(retry)     -> retry with backoff / dead-letter when used up
//!        Failure(permanent) -> dead-letter with the script's reason
//! ```
//!
//! A batch and a single delivery differ only in how they transform and write; each transform
//! result becomes an [`Attempt`] in one place (`Worker::next`), and every attempt becomes what the
//! queue is told in one place (`Worker::finish`). Each batch's outcomes are recorded in the event
//! archive (`archive::Recorder`, one write) before the queue hears of them. Every decision is
//! one atomic queue operation, so a crash between any two steps leaves the entry pending
//! (redelivered later) and never half-acknowledged. Sinks make the redelivery
//! harmless by keying rows on the event id.
//!
//! Who reads is `take`: the workers of one Redis partition in one process are a [`PartitionWorkers`], whose
//! lead reads always and runs the reaper and promoter, its helpers only in a backlog.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::archive;
use crate::queue::Outcomes;
use crate::queue::redis::RedisQueue;
use crate::queue::{Delivery, QueueError};
use crate::transform::{FailureKind, Program};

mod recording;
mod take;
mod traced;
mod transforms;

use transforms::{timed_run, transform_all, transform_timing};

pub use take::PartitionWorkers;
use take::{REDIS, Taker};

use crate::sink::{Batch, Sink, SinkError};

/// How a worker treats failures.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Attempts before an event is dead-lettered (the first delivery counts).
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Idle time after which another consumer takes an entry over.
    pub lease: Duration,
    /// Deliveries without an answer before an entry is treated as poison.
    pub max_deliveries: u64,
    /// Entries read at once.
    pub batch: usize,
    /// Under sustained load (events were already waiting for this read and the previous one),
    /// after a read that returned fewer than `batch`, wait this long and top up; never after an
    /// idle spell, so a lone event is not held back.
    pub batch_wait: Duration,
    /// How long a read waits for new entries.
    pub block: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_attempts: 10,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            lease: Duration::from_secs(60),
            max_deliveries: 5,
            batch: 64,
            batch_wait: BATCH_WAIT,
            block: Duration::from_secs(2),
        }
    }
}

/// The default top-up wait of a small batch under load: at a few thousand events a second it
/// gathers tens of events into one statement and one ack, and it is far below a provider's
/// patience and the lease.
pub const BATCH_WAIT: Duration = Duration::from_millis(2);

/// The result of transforming and writing one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Written,
    Dropped(String),
    Retry(String),
    Permanent(String),
}

/// What happened to one delivery (returned for tests and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Acked,
    Dropped { reason: String },
    Retried { attempt: u32 },
    DeadLettered { reason: String },
}

/// What became of one delivery in a batch: the attempt, and the archive's step of a write.
type Settled<'d> = (&'d Delivery, Attempt, Option<archive::Step>);

/// A batch's rows per sink: the deliveries and their batches, side by side.
type Groups<'d> = BTreeMap<String, (Vec<&'d Delivery>, Vec<Batch>)>;

/// The attempt of an event whose rows name a sink the pipeline does not have.
fn no_sink(sink: &str) -> Attempt {
    Attempt::Permanent(format!("no sink named `{sink}`"))
}

/// The retry reason of an attempt the archive could not record.
fn unrecorded(e: &str) -> String {
    format!("the event archive could not record this attempt ({e}); tried again")
}

/// A failed write to `sink` as the attempt's result (its reason the error's whole chain),
/// counted.
fn sink_attempt(sink: &str, e: &SinkError) -> Attempt {
    let reason = format!("sink `{sink}`: {}", crate::diagnostics::chain(e));
    let (kind, attempt) = match e {
        SinkError::Retry(_) => ("retry", Attempt::Retry(reason)),
        SinkError::Permanent(_) => ("permanent", Attempt::Permanent(reason)),
    };
    metrics::counter!("engine_sink_errors_total", "sink" => sink.to_string(), "kind" => kind)
        .increment(1);
    crate::ops::alerts::sink_failed(sink);
    attempt
}

/// One queue's worker.
pub struct Worker {
    /// Where outcomes are recorded: the Redis queue or the in-process one.
    pub outcomes: Arc<dyn Outcomes>,
    pub program: Arc<Program>,
    pub sinks: HashMap<String, Arc<dyn Sink>>,
    pub options: Options,
    /// Where each attempt's outcome is recorded before the queue hears of it (`None`: the
    /// pipeline's `archive: off`, or `engine replay`).
    pub archive: Option<Arc<archive::Recorder>>,
}

impl Worker {
    /// Process one delivery to its end state, renewing its lease while it takes long (so a slow
    /// sink does not make another worker process the same event at the same time).
    pub async fn handle(&self, d: &Delivery) -> Result<Handled, QueueError> {
        self.leased(std::slice::from_ref(d), self.process(d)).await
    }

    /// Process entries read together: transforms on one blocking thread, the rows of all events
    /// for a batching sink (Postgres) in one statement, acknowledgements in one call. When a
    /// batch write fails permanently (one poisoned row), each event is written on its own, so
    /// only the bad one is dead-lettered.
    pub async fn handle_batch(&self, ds: &[Delivery]) -> Result<(), QueueError> {
        if ds.len() <= 1 {
            for d in ds {
                self.handle(d).await?;
            }
            return Ok(());
        }
        self.leased(ds, self.process_batch(ds)).await
    }

    /// Run `work` while renewing the lease of every delivery it holds every third of the lease.
    async fn leased<T>(&self, ds: &[Delivery], work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let every = (self.options.lease / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => {
                    for d in ds {
                        if let Err(e) = self.outcomes.touch(d).await {
                            tracing::debug!(event_id = %d.event.id, error = &e as &dyn std::error::Error, "lease renewal failed");
                        }
                    }
                }
            }
        }
    }

    async fn process_batch(&self, ds: &[Delivery]) -> Result<(), QueueError> {
        let spans = traced::Spans::open(ds, self.outcomes.name());
        let outcomes =
            transform_all(&self.program, ds, self.outcomes.name(), spans.parents()).await?;
        let (mut settled, groups) = self.sort(ds, outcomes);
        for (name, (delivered, batches)) in &groups {
            self.write_group(name, delivered, batches, &spans, &mut settled)
                .await;
        }
        self.finish(settled, &spans).await.map(|_| ())
    }

    /// One sink's batches: in one statement when the sink batches, else (and after a permanent
    /// failure of the statement: that of one event, not its neighbours) one at a time.
    async fn write_group<'d>(
        &self,
        name: &str,
        delivered: &[&'d Delivery],
        batches: &[Batch],
        spans: &traced::Spans<'_>,
        settled: &mut Vec<Settled<'d>>,
    ) {
        let sink = &self.sinks[name];
        if sink.batches() && batches.len() > 1 {
            let rows: Vec<usize> = batches.iter().map(|b| b.rows.len()).collect();
            let writing = spans.sink_writes(delivered, name, &rows);
            let together = sink.write_many(batches).await;
            drop(writing);
            match together {
                Ok(()) => {
                    self.written(delivered.iter().map(|d| &d.event), name, rows.iter().sum());
                    for (d, b) in delivered.iter().zip(batches) {
                        settled.push((d, Attempt::Written, self.wrote(d.attempts + 1, b, &**sink)));
                    }
                    return;
                }
                Err(e @ SinkError::Retry(_)) => {
                    let attempt = sink_attempt(name, &e);
                    for d in delivered {
                        settled.push((d, attempt.clone(), None));
                    }
                    return;
                }
                Err(SinkError::Permanent(_)) => {}
            }
        }
        for (d, b) in delivered.iter().copied().zip(batches) {
            let attempt = self.write_one(&**sink, b, &d.event, &spans.of(d)).await;
            let wrote = (attempt == Attempt::Written)
                .then(|| self.wrote(d.attempts + 1, b, &**sink))
                .flatten();
            settled.push((d, attempt, wrote));
        }
    }

    /// The one place attempts become what the queue is told, for batches and single deliveries
    /// alike: record them in the archive, then ack (in one call), retry or dead-letter each, in
    /// the span of its attempt. An archive that cannot record them retries every delivery (none
    /// leaves the queue unrecorded). What became of each, in the order given.
    async fn finish(
        &self,
        mut settled: Vec<Settled<'_>>,
        spans: &traced::Spans<'_>,
    ) -> Result<Vec<Handled>, QueueError> {
        if let Some(e) = self
            .archive(settled.iter().map(|(d, a, w)| (*d, a, w.as_ref())))
            .await
        {
            for (_, attempt, _) in &mut settled {
                *attempt = Attempt::Retry(unrecorded(&e));
            }
        }
        let mut acks: Vec<&Delivery> = Vec::new();
        let mut handled = Vec::with_capacity(settled.len());
        for (d, attempt, _) in settled {
            spans.settle(d, &attempt, self.gives_up(d).is_some());
            handled.push(match attempt {
                Attempt::Written => {
                    acks.push(d);
                    Handled::Acked
                }
                Attempt::Dropped(reason) => {
                    tracing::debug!(event_id = %d.event.id, %reason, "event dropped");
                    self.count("dropped", 1);
                    acks.push(d);
                    Handled::Dropped { reason }
                }
                Attempt::Retry(reason) => self.again(d, reason).instrument(spans.of(d)).await?,
                Attempt::Permanent(reason) => self.dead(d, reason).instrument(spans.of(d)).await?,
            });
        }
        self.recorded(|| self.outcomes.ack_many(&acks)).await?;
        Ok(handled)
    }

    /// One event's rows written by themselves, counted (in a `sink.write` span under
    /// `attempt`): the attempt's result. The one decision of a write, for batches and single
    /// deliveries alike.
    async fn write_one(
        &self,
        sink: &dyn Sink,
        b: &Batch,
        event: &crate::transform::EventInput,
        attempt: &tracing::Span,
    ) -> Attempt {
        let writing = traced::sink_write(attempt, &b.sink, b.rows.len());
        match sink.write(b).instrument(writing).await {
            Ok(()) => {
                self.written(std::iter::once(event), &b.sink, b.rows.len());
                Attempt::Written
            }
            Err(e) => sink_attempt(&b.sink, &e),
        }
    }

    /// The archive's step of attempt `n` whose rows `b` were written to `sink`: with the rows'
    /// digest where a replay needs it to tell a repeat (a sink that is not idempotent).
    fn wrote(&self, n: u32, b: &Batch, sink: &dyn Sink) -> Option<archive::Step> {
        self.archive.as_ref()?;
        Some(archive::Step::new(archive::Outcome::Written, n).wrote(
            &b.sink,
            &b.rows,
            !sink.idempotent(),
        ))
    }

    /// Record what became of each delivery in the archive (one write), before the queue hears
    /// of it; the error when the archive could not be written (the caller then retries every
    /// delivery with backoff, so no event leaves the queue unrecorded).
    async fn archive<'d>(
        &self,
        settled: impl Iterator<Item = (&'d Delivery, &'d Attempt, Option<&'d archive::Step>)>,
    ) -> Option<String> {
        let recorder = self.archive.as_ref()?;
        let notes: Vec<archive::Note> = settled
            .map(|(d, attempt, wrote)| {
                let step = match wrote {
                    Some(step) => step.clone(),
                    None => self.step(d, attempt),
                };
                recorder.note(&d.event, d.stored.as_deref(), step)
            })
            .collect();
        let e = recorder.store.write(&notes).await.err()?;
        metrics::counter!("engine_archive_errors_total", "queue" => self.outcomes.name().to_string())
            .increment(1);
        Some(crate::diagnostics::chain(&e))
    }

    /// The archive's step for an attempt (a write without its rows at hand: no digest).
    fn step(&self, d: &Delivery, attempt: &Attempt) -> archive::Step {
        let n = d.attempts + 1;
        match attempt {
            Attempt::Written => archive::Step::new(archive::Outcome::Written, n),
            Attempt::Dropped(r) => archive::Step::new(archive::Outcome::Dropped, n).reason(r),
            Attempt::Retry(r) => match self.gives_up(d) {
                Some(reason) => archive::Step::new(archive::Outcome::Dead, n).reason(reason(r)),
                None => archive::Step::new(archive::Outcome::Retrying, n).reason(r),
            },
            Attempt::Permanent(r) => archive::Step::new(archive::Outcome::Dead, n).reason(r),
        }
    }

    /// One delivery: its transform on the blocking pool (a panicking script fails this event
    /// alone), its write, then [`Worker::finish`] as for a batch.
    async fn process(&self, d: &Delivery) -> Result<Handled, QueueError> {
        let one = std::slice::from_ref(d);
        let spans = traced::Spans::open(one, self.outcomes.name());
        let span = spans.of(d);
        let (attempt, wrote) = self
            .attempt_rows(&d.event, d.attempts + 1, &span)
            .instrument(span.clone())
            .await;
        let handled = self.finish(vec![(d, attempt, wrote)], &spans).await?;
        Ok(handled
            .into_iter()
            .next()
            .expect("finish answers every delivery it is given"))
    }

    /// Transform one event and write its rows: the decision, without recording it anywhere
    /// (the queued path records it in the queue; `ack: processed` answers the caller with it).
    pub async fn attempt(&self, event: &crate::transform::EventInput) -> Attempt {
        let span = traced::attempt(event, self.outcomes.name(), 1);
        let (attempt, _) = self
            .attempt_rows(event, 1, &span)
            .instrument(span.clone())
            .await;
        traced::settle(&span, &attempt, false);
        attempt
    }

    /// [`Worker::attempt`], with the archive's step of a write (its rows' digest) when the
    /// pipeline archives; `n` is the attempt's number.
    async fn attempt_rows(
        &self,
        event: &crate::transform::EventInput,
        n: u32,
        span: &tracing::Span,
    ) -> (Attempt, Option<archive::Step>) {
        let program = self.program.clone();
        let input = event.clone();
        let queue = self.outcomes.name().to_string();
        let parents = [span.clone()];
        let outcome = tokio::task::spawn_blocking(move || {
            let _in = traced::transform(&parents, 0);
            timed_run(&program, &input, &transform_timing(queue))
        })
        .await
        .unwrap_or_else(|e| {
            Err(crate::transform::Failure {
                kind: FailureKind::Permanent,
                reason: format!("the transform panicked: {e}"),
            })
        });
        match self.next(event, outcome) {
            transforms::Next::Settled(attempt) => (attempt, None),
            transforms::Next::Write(batch) => {
                // `next` settled rows for a sink the pipeline lacks
                let target = &self.sinks[&batch.sink];
                let attempt = self.write_one(&**target, &batch, event, span).await;
                let step = (attempt == Attempt::Written)
                    .then(|| self.wrote(n, &batch, &**target))
                    .flatten();
                (attempt, step)
            }
        }
    }

    /// Count a worker result.
    fn count(&self, outcome: &'static str, events: usize) {
        metrics::counter!("engine_events_processed_total", "queue" => self.outcomes.name().to_string(), "outcome" => outcome)
            .increment(events as u64);
    }

    fn transform_failed(&self, kind: &'static str) {
        metrics::counter!("engine_transform_failures_total", "queue" => self.outcomes.name().to_string(), "kind" => kind)
            .increment(1);
    }

    /// Events' rows are written (one event, or a batch by one statement): counted once, each
    /// event's time since its request arrived recorded through one histogram handle.
    fn written<'e>(
        &self,
        events: impl ExactSizeIterator<Item = &'e crate::transform::EventInput>,
        sink: &str,
        rows: usize,
    ) {
        self.count("written", events.len());
        metrics::counter!("engine_sink_rows_total", "sink" => sink.to_string())
            .increment(rows as u64);
        let latency = metrics::histogram!("engine_event_latency_seconds", "queue" => self.outcomes.name().to_string());
        let now = chrono::Utc::now().timestamp_millis();
        for e in events {
            latency.record((now - e.received_at_ms).max(0) as f64 / 1000.0);
        }
        crate::ops::alerts::sink_ok(sink);
    }

    /// Retry with backoff, or dead-letter once the attempts are used up.
    /// Whether a failed attempt at `d` uses up its attempts: then the dead letter's reason for
    /// an error (one rule for the queue and the archive's step).
    fn gives_up(&self, d: &Delivery) -> Option<impl Fn(&str) -> String> {
        let attempt = d.attempts + 1;
        (attempt >= self.options.max_attempts)
            .then_some(move |error: &str| format!("{error} (gave up after {attempt} attempts)"))
    }

    async fn again(&self, d: &Delivery, error: String) -> Result<Handled, QueueError> {
        let attempt = d.attempts + 1;
        if let Some(reason) = self.gives_up(d) {
            return self.dead(d, reason(&error)).await;
        }
        let delay = crate::queue::backoff(
            attempt,
            self.options.backoff_initial,
            self.options.backoff_max,
        );
        tracing::warn!(event_id = %d.event.id, attempt, delay_ms = delay.as_millis() as u64, %error, "will retry");
        self.count("retried", 1);
        self.recorded(|| self.outcomes.retry(d, delay)).await?;
        Ok(Handled::Retried { attempt })
    }

    async fn dead(&self, d: &Delivery, reason: String) -> Result<Handled, QueueError> {
        tracing::error!(event_id = %d.event.id, pipeline = %d.event.pipeline, %reason, "dead-lettered");
        metrics::counter!("engine_dead_lettered_total", "queue" => self.outcomes.name().to_string())
            .increment(1);
        self.count("dead_lettered", 1);
        self.recorded(|| self.outcomes.dead_letter(d, &reason))
            .await?;
        crate::ops::alerts::dead_lettered(self.outcomes.name(), &reason);
        Ok(Handled::DeadLettered { reason })
    }

    /// Run on `queue` until `stop` turns true: one loop for both kinds of queue — take what is
    /// waiting ([`Taker`]), handle it, and on a failing queue back off (the outage is logged
    /// once per process by `ops::outage`, not once per attempt and worker). On Redis the
    /// workers of one partition in one process form a [`PartitionWorkers`]: its lead (`PartitionWorkers::lead`) runs
    /// the partition's reaper and promoter beside it (the others would repeat the same Redis
    /// calls for nothing) and always reads; the others read only while the lead
    /// finds a backlog. In-flight deliveries finish; on Redis unfinished ones stay pending and
    /// are reclaimed after the lease. On a partitioned Redis queue this worker, its reaper and
    /// its promoter keep to `partition`.
    ///
    /// A worker waits far more than it works, so its task holds only the loop's own state: each
    /// step's future (a read, a batch, the group's creation) is boxed while it runs. Inline they
    /// made the task 5.8 KB, held by four idle workers of every pipeline from the start (a
    /// thousand pipelines: 23 MiB; docs/benchmarks.md, "Many pipelines").
    pub async fn run(
        self: Arc<Self>,
        queue: crate::queue::Queue,
        partition: usize,
        mut team: PartitionWorkers,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut taker = Taker::new(&queue, partition, self.options);
        let scope = crate::ops::outage::scope_of(&queue);
        let helpers = match &queue {
            crate::queue::Queue::Redis(q) => {
                // every worker needs the group; one per queue and process tells about it
                if !Box::pin(take::group_made(
                    q,
                    &mut stop,
                    team.leads() && partition == 0,
                ))
                .await
                {
                    return;
                }
                if team.leads() {
                    vec![
                        tokio::spawn(self.clone().reap(q.clone(), partition, stop.clone())),
                        tokio::spawn(promote(q.clone(), partition, stop.clone())),
                        tokio::spawn(beat(q.clone(), partition, stop.clone())),
                    ]
                } else {
                    Vec::new()
                }
            }
            crate::queue::Queue::Memory(_) => Vec::new(),
        };
        let mut failures = 0u32;
        while !*stop.borrow() {
            if !team.turn(&taker, &mut stop).await {
                break;
            }
            let taken = tokio::select! {
                t = Box::pin(taker.take()) => t,
                _ = stop.changed() => break,
            };
            match taken {
                Ok((deliveries, lost)) => {
                    failures = 0;
                    team.took(&taker, deliveries.len(), self.options.batch);
                    if let Some(dependency) = taker.dependency() {
                        crate::ops::outage::ok(dependency, scope);
                    }
                    if lost {
                        tracing::error!(
                            queue = self.outcomes.name(),
                            "the queue's consumer group was gone (Redis restarted without persistence?): recreated; events queued before are lost"
                        );
                        metrics::counter!("engine_queue_lost_total", "queue" => self.outcomes.name().to_string()).increment(1);
                        crate::ops::alerts::queue_lost(self.outcomes.name());
                    }
                    if let Err(e) = Box::pin(self.handle_batch(&deliveries)).await {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "could not record outcomes; the entries stay pending and are redelivered"
                        );
                    }
                }
                Err(e) => {
                    failures += 1;
                    let condition = crate::ops::outage::Condition::of(&e)
                        .unwrap_or(crate::ops::outage::Condition::Unreachable);
                    crate::ops::outage::failed(
                        taker.dependency().unwrap_or(REDIS),
                        scope,
                        condition,
                        &e,
                    );
                    pause(&mut stop, crate::ops::outage::pause_after(failures)).await;
                }
            }
        }
        for h in helpers {
            let _ = h.await;
        }
    }

    /// Take over entries of `partition` whose consumers stopped answering, every lease/2.
    async fn reap(
        self: Arc<Self>,
        queue: Arc<RedisQueue>,
        partition: usize,
        mut stop: watch::Receiver<bool>,
    ) {
        let every = (self.options.lease / 2).max(Duration::from_millis(50));
        while !*stop.borrow() {
            pause(&mut stop, every).await;
            match Box::pin(queue.reclaim(
                partition,
                self.options.lease,
                self.options.max_deliveries,
            ))
            .await
            {
                Ok((claimed, deleted)) => {
                    if deleted > 0 {
                        tracing::error!(
                            queue = queue.name(),
                            deleted,
                            "pending entries were deleted from the stream: data lost"
                        );
                    }
                    for d in &claimed {
                        tracing::warn!(event_id = %d.event.id, "took over an entry whose consumer stopped answering");
                        if let Err(e) = Box::pin(self.handle(d)).await {
                            tracing::warn!(event_id = %d.event.id, error = &e as &dyn std::error::Error, "could not record the outcome");
                        }
                    }
                }
                Err(e) => tracing::debug!(error = &e as &dyn std::error::Error, "reclaim failed"),
            }
        }
    }
}

/// How long the promoter sleeps at most when no retry of this process is due sooner. A retry
/// another process scheduled is its own promoter's to bring back; this bounds how late it comes
/// if that process died first. (Polling every 250 ms instead cost Redis ~4 scripts a second per
/// quiet queued pipeline: 4,000 a second for a thousand; docs/scaling.md.)
const PROMOTE_IDLE: Duration = Duration::from_secs(5);
/// How long the promoter waits before trying again after a failed promotion (Redis away).
const PROMOTE_AFTER_FAILURE: Duration = Duration::from_millis(250);
/// Retries moved per promotion (more due: it looks again at once).
const PROMOTE_LIMIT: usize = 100;

/// Move `partition`'s due retries back to its stream: when the next one is due (the promotion
/// says when), when this process schedules one (`retry` wakes it), and at least every
/// [`PROMOTE_IDLE`].
async fn promote(queue: Arc<RedisQueue>, partition: usize, mut stop: watch::Receiver<bool>) {
    let mut wait = Duration::ZERO;
    while !*stop.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = queue.retry_scheduled(partition).notified() => {}
            _ = stop.changed() => break,
        }
        // more due than one promotion moves: the next is due now (0), so it looks again at once
        wait = match Box::pin(queue.promote_due(partition, PROMOTE_LIMIT)).await {
            Ok(p) => p.next_due.map_or(PROMOTE_IDLE, |due| due.min(PROMOTE_IDLE)),
            Err(e) => {
                tracing::debug!(error = &e as &dyn std::error::Error, "promote failed");
                PROMOTE_AFTER_FAILURE
            }
        };
    }
}

/// Say every [`crate::queue::redis::BEAT`] that this process's workers read `partition` (what
/// the console's Queues page counts as instances reading), and leave when they stop.
async fn beat(queue: Arc<RedisQueue>, partition: usize, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        let now = chrono::Utc::now().timestamp_millis();
        if let Err(e) = Box::pin(queue.beat(partition, now)).await {
            tracing::debug!(
                error = &e as &dyn std::error::Error,
                "worker heartbeat failed"
            );
        }
        pause(&mut stop, crate::queue::redis::BEAT).await;
    }
    let _ = queue.leave(partition).await;
}

/// Sleep, or return early when `stop` changes.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
