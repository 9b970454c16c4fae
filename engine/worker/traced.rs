//! The worker's spans, while traces are exported (`ops::trace`): one `attempt` span per
//! delivery, continuing the trace its request began (the stored `traceparent`: in this process
//! or another, at once or an hour later), with the attempt's outcome (`written`, `dropped`,
//! `retry`, `dead_letter`) as an attribute, and `transform` and `sink.write` children with
//! `TRACE_DETAIL=steps`. Without them the attempt span stands in for both: entered on the
//! transform thread and around a sink's write, so a connection call or an HTTP sink's request
//! carries the attempt's `traceparent`.
//!
//! Tracing off, [`Spans::open`] makes nothing and every call here is a check of an empty list.

use tracing::Span;

use super::Attempt;
use crate::queue::Delivery;

/// The attempt spans of the deliveries handled together (empty while tracing is off).
pub(super) struct Spans<'d> {
    ds: &'d [Delivery],
    spans: Vec<Span>,
}

impl<'d> Spans<'d> {
    /// An attempt span per delivery, each the child of its event's request span.
    pub(super) fn open(ds: &'d [Delivery], queue: &str) -> Spans<'d> {
        if !crate::ops::trace::on() {
            return Spans {
                ds,
                spans: Vec::new(),
            };
        }
        let spans = ds
            .iter()
            .map(|d| attempt(&d.event, queue, d.attempts + 1))
            .collect();
        Spans { ds, spans }
    }

    /// The attempt span of `d` (`Span::none()` while tracing is off).
    pub(super) fn of(&self, d: &Delivery) -> Span {
        if self.spans.is_empty() {
            return Span::none();
        }
        // `d` is one of `ds` (the deliveries the spans were opened for): its place is its
        // address's distance from the first, checked, rather than a search through the batch
        let i = (d as *const Delivery as usize).wrapping_sub(self.ds.as_ptr() as usize)
            / std::mem::size_of::<Delivery>();
        match self.ds.get(i) {
            Some(x) if std::ptr::eq(x, d) => self.spans[i].clone(),
            _ => Span::none(),
        }
    }

    /// The attempt spans in delivery order, for the transform thread ([`transform`]).
    pub(super) fn parents(&self) -> Vec<Span> {
        self.spans.clone()
    }

    /// A `sink.write` span under the attempt of `d`.
    pub(super) fn sink_write(&self, d: &Delivery, sink: &str, rows: usize) -> Span {
        sink_write(&self.of(d), sink, rows)
    }

    /// A `sink.write` span per delivery whose rows one statement writes together (none but
    /// with `TRACE_DETAIL=steps`: the statement's spans are timings only, entered by nothing).
    pub(super) fn sink_writes(&self, ds: &[&Delivery], sink: &str, rows: &[usize]) -> Vec<Span> {
        if self.spans.is_empty() || !crate::ops::trace::steps() {
            return Vec::new();
        }
        ds.iter()
            .zip(rows)
            .map(|(d, n)| self.sink_write(d, sink, *n))
            .collect()
    }

    /// The attempt's outcome on its span; `gives_up` when a failure used up its attempts.
    pub(super) fn settle(&self, d: &Delivery, attempt: &Attempt, gives_up: bool) {
        settle(&self.of(d), attempt, gives_up);
    }
}

/// An attempt's outcome on its span.
pub(super) fn settle(span: &Span, attempt: &Attempt, gives_up: bool) {
    if span.is_none() {
        return;
    }
    let (outcome, failure) = match attempt {
        Attempt::Written => ("written", None),
        Attempt::Dropped(_) => ("dropped", None),
        Attempt::Retry(reason) if !gives_up => ("retry", Some(reason)),
        Attempt::Retry(reason) | Attempt::Permanent(reason) => ("dead_letter", Some(reason)),
    };
    span.record("outcome", outcome);
    if let Some(reason) = failure {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", reason.as_str());
    }
}

/// The attempt span of `event`'s `n`th attempt, continuing its request's trace (made only while
/// tracing is on).
pub(super) fn attempt(event: &crate::transform::EventInput, queue: &str, n: u32) -> Span {
    if !crate::ops::trace::on() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "attempt",
        pipeline = event.pipeline.as_str(),
        event_id = event.id.as_str(),
        queue,
        attempt = n,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    crate::ops::trace::continue_in(&span, event.trace.as_deref());
    span
}

/// The span a sink's write runs in: a `sink.write` span under the attempt span with
/// `TRACE_DETAIL=steps`, else the attempt span itself (none while tracing is off).
pub(super) fn sink_write(attempt: &Span, sink: &str, rows: usize) -> Span {
    if attempt.is_none() || !crate::ops::trace::steps() {
        return attempt.clone();
    }
    tracing::info_span!(parent: attempt, "sink.write", sink, rows)
}

/// The span the `i`th event's transform runs in, entered on the thread running it (a
/// connection call from a script carries its `traceparent`): a `transform` span under its
/// attempt with `TRACE_DETAIL=steps`, else the attempt span.
pub(super) fn transform(parents: &[Span], i: usize) -> Option<tracing::span::EnteredSpan> {
    let parent = parents.get(i).filter(|p| !p.is_none())?;
    Some(if crate::ops::trace::steps() {
        tracing::info_span!(parent: parent, "transform").entered()
    } else {
        parent.clone().entered()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_delivery_finds_its_own_attempt_span() {
        crate::ops::trace::on_for_tests();
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let ds: Vec<Delivery> = (0..5)
                .map(|i| {
                    let mut event = crate::transform::event::sample("application/json", "{}");
                    event.id = format!("evt-{i}");
                    Delivery {
                        id: format!("1-{i}"),
                        event,
                        attempts: i,
                        stored: None,
                    }
                })
                .collect();
            let spans = Spans::open(&ds, "q");
            for (i, d) in ds.iter().enumerate() {
                let found = spans.of(d);
                assert!(!found.is_none());
                assert_eq!(found.id(), spans.spans[i].id(), "delivery {i}");
            }
            // a delivery of another batch, even an equal one, has no span here
            let other = Delivery {
                id: ds[1].id.clone(),
                event: ds[1].event.clone(),
                attempts: 1,
                stored: None,
            };
            assert!(spans.of(&other).is_none());
            // nor does one of a sub-slice's neighbours
            let part = Spans::open(&ds[1..3], "q");
            assert!(part.of(&ds[0]).is_none() && part.of(&ds[3]).is_none());
            assert_eq!(part.of(&ds[2]).id(), part.spans[1].id());
        });
    }
}
