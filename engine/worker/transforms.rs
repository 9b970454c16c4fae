//! Running transform steps from the worker: CPU work kept off the async threads (a batch in
//! place with `block_in_place`, or on the blocking pool), each run timed in
//! `engine_transform_duration_seconds` and, while traces are exported, inside its `transform`
//! span; and their outcomes sorted: settled at once, or rows grouped per sink.

use std::sync::Arc;

use super::{Attempt, Groups, Settled, Worker, no_sink, traced};
use crate::queue::{Delivery, QueueError};
use crate::sink::Batch;
use crate::transform::FailureKind;
use crate::transform::{Output, Program};

/// Run the transform steps on one event, its duration recorded in `timing` (the queue's
/// `engine_transform_duration_seconds`, looked up once by the caller for a whole batch).
pub(super) fn timed_run(
    program: &Program,
    event: &crate::transform::EventInput,
    timing: &metrics::Histogram,
) -> Result<Output, crate::transform::Failure> {
    let started = std::time::Instant::now();
    let out = program.run(event);
    timing.record(started.elapsed().as_secs_f64());
    out
}

/// The transform-duration histogram of `queue`.
pub(super) fn transform_timing(queue: String) -> metrics::Histogram {
    metrics::histogram!("engine_transform_duration_seconds", "queue" => queue)
}

/// Run the transforms of a batch, which are CPU work that must not stall the runtime: on a
/// multi-threaded runtime in place (`block_in_place`: this thread runs them and hands its other
/// tasks to the other threads; no hand-off of the batch to another thread and back, and the
/// deliveries are read where they are, not copied), elsewhere (a current-thread runtime: tests,
/// one-shot commands) on the blocking pool, with a copy of the events.
pub(super) async fn transform_all(
    program: &Arc<Program>,
    ds: &[Delivery],
    queue: &str,
    spans: Vec<tracing::Span>,
) -> Result<Vec<Result<Output, crate::transform::Failure>>, QueueError> {
    let run = |program: &Program,
               events: &mut dyn Iterator<Item = &crate::transform::EventInput>,
               queue: String,
               spans: &[tracing::Span]| {
        // one histogram handle for the batch, not one label lookup per event
        let timing = transform_timing(queue);
        events
            .enumerate()
            .map(|(i, e)| {
                let _in = traced::transform(spans, i);
                timed_run(program, e, &timing)
            })
            .collect::<Vec<_>>()
    };
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(|| {
            run(
                program,
                &mut ds.iter().map(|d| &d.event),
                queue.to_string(),
                &spans,
            )
        })),
        _ => {
            let program = program.clone();
            let events: Vec<crate::transform::EventInput> =
                ds.iter().map(|d| d.event.clone()).collect();
            let queue = queue.to_string();
            tokio::task::spawn_blocking(move || run(&program, &mut events.iter(), queue, &spans))
                .await
                .map_err(|e| QueueError::Task(std::sync::Arc::new(e)))
        }
    }
}

/// A transform's result, as the worker acts on it ([`Worker::next`]).
pub(super) enum Next {
    Settled(Attempt),
    Write(Batch),
}

impl Worker {
    /// Each delivery's transform outcome: settled already (dropped, failed, no such sink), or its
    /// rows grouped per sink, the deliveries and their batches side by side (the batches are
    /// handed to the sink as a slice, not copied).
    pub(super) fn sort<'d>(
        &self,
        ds: &'d [Delivery],
        outcomes: Vec<Result<Output, crate::transform::Failure>>,
    ) -> (Vec<Settled<'d>>, Groups<'d>) {
        let mut settled = Vec::new();
        let mut groups = Groups::new();
        for (d, outcome) in ds.iter().zip(outcomes) {
            match self.next(&d.event, outcome) {
                Next::Settled(attempt) => settled.push((d, attempt, None)),
                Next::Write(batch) => {
                    let group = groups.entry(batch.sink.clone()).or_default();
                    group.0.push(d);
                    group.1.push(batch);
                }
            }
        }
        (settled, groups)
    }

    /// What a transform's result asks of the worker: an attempt settled at once (dropped, a
    /// failed transform, rows for a sink the pipeline lacks), or rows to write. The one place a
    /// result becomes an attempt, for batches ([`Worker::sort`]) and single deliveries alike.
    pub(super) fn next(
        &self,
        event: &crate::transform::EventInput,
        outcome: Result<Output, crate::transform::Failure>,
    ) -> Next {
        match outcome {
            Ok(Output::Dropped { reason }) => Next::Settled(Attempt::Dropped(reason)),
            Ok(Output::Rows { sink, .. }) if !self.sinks.contains_key(&sink) => {
                Next::Settled(no_sink(&sink))
            }
            Ok(Output::Rows { sink, step, rows }) => Next::Write(Batch {
                event_id: event.id.clone(),
                pipeline: event.pipeline.clone(),
                sink,
                step,
                rows,
            }),
            Err(f) => Next::Settled(self.transform_failure(f)),
        }
    }

    /// A transform's failure as the attempt's result, counted.
    pub(super) fn transform_failure(&self, f: crate::transform::Failure) -> Attempt {
        if f.kind == FailureKind::Retry {
            self.transform_failed("retry");
            Attempt::Retry(f.reason)
        } else {
            self.transform_failed("permanent");
            Attempt::Permanent(f.reason)
        }
    }
}
