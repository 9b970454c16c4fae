//! The request path's last step for a pipeline with transform steps: the event stored in its
//! queue (dedupe and, on Redis, the rate limit in the same round trip), or with `ack: processed`
//! transformed and written before the answer. A 2xx is only ever sent for a stored event; a
//! queue that cannot take it means 503 with `Retry-After`, and Redis down or full is one outage
//! of the process in the logs (`ops::outage`, as `redis_enqueue`), not a line per request.

use salvo::prelude::*;

use super::answer::{Stop, unavailable};
use super::incoming::Incoming;
use super::limit::answer_decision;
use super::route::Route;
use crate::config::queue::Ack;
use crate::ops::outage::Condition;
use crate::queue::{Enqueued, QueueError};
use crate::request_field::RequestFields;
use crate::transform::EventInput;
use crate::worker::Attempt;

/// The request path's writes to the queue, as an outage names them (`ops::outage`): apart from
/// the workers' `redis`, whose reads go on while a full Redis refuses writes.
const ENQUEUE: &str = "redis_enqueue";

/// Queue the event of a pipeline with transform steps. A repeat within the dedupe window is
/// answered like the first and not stored again; a queue that cannot take it means 503, so the
/// provider retries: a 2xx is only ever sent for a stored event.
pub(super) async fn enqueue(
    route: &Route,
    incoming: &Incoming<'_>,
    fields: &RequestFields<'_>,
    event: EventInput,
    res: &mut Response,
) -> Result<(), Stop> {
    let Some(q) = &route.queued else {
        return Ok(());
    };
    let dedupe_key = q
        .config
        .dedupe
        .as_ref()
        .and_then(|d| fields.join(&d.key, "|").map(|k| (k, d.window.0)));
    let event_id = event.id.clone();
    let name = &route.config.name;
    if q.config.ack == Ack::Processed {
        return process_now(q, name, event, dedupe_key, res).await;
    }
    let dedupe = dedupe_key.as_ref().map(|(k, w)| (k.as_str(), *w));
    // the limit rides in this round trip when `route::Limit` says so (checked first there;
    // nothing is stored when it refuses)
    let stored = match route.limit.in_enqueue() {
        Some(ride) => {
            let key = ride.rule.key_from(incoming.client_ip, fields);
            let redis_key = crate::rate_limit::redis::key_in(&ride.prefix, &ride.rule, &key);
            match ride
                .queue
                .enqueue_limited(&event, dedupe, &ride.rule, &redis_key)
                .await
            {
                Ok((verdict, stored)) => {
                    answer_decision(
                        &ride.rule,
                        &crate::rate_limit::redis::decision(&ride.rule, verdict),
                        res,
                    )?;
                    // allowed (a refusal was answered 429 above): the script stored it, or said
                    // it was a duplicate
                    stored.ok_or_else(|| {
                        QueueError::unavailable(crate::queue::RedisStall::NothingStored)
                    })
                }
                Err(e) => {
                    metrics::counter!("engine_rate_limit_backend_errors_total", "bucket" => ride.rule.bucket.clone()).increment(1);
                    Err(e)
                }
            }
        }
        None => q.handle.enqueue(event, dedupe).await,
    };
    if stored.is_ok() {
        crate::ops::outage::ok(ENQUEUE, &q.outage_scope);
    }
    match stored {
        Ok(Enqueued::Added(_)) => {
            route.metrics.queued();
            Ok(())
        }
        Ok(Enqueued::Duplicate) => {
            tracing::info!(pipeline = %name, %event_id, "duplicate within the dedupe window: not queued again");
            metrics::counter!("engine_duplicates_total", "pipeline" => name.clone()).increment(1);
            Ok(())
        }
        Err(e) => {
            // Redis down, full or failing over is one outage of the queue (a line when it
            // starts, summaries, a line when it ends), not a line per refused request
            match Condition::of(&e) {
                Some(condition) => {
                    crate::ops::outage::failed(ENQUEUE, &q.outage_scope, condition, &e);
                }
                None => {
                    tracing::error!(pipeline = %name, %event_id, error = &e as &dyn std::error::Error, "cannot queue the event; answering 503")
                }
            }
            Err(unavailable(
                res,
                "The event could not be stored. Please retry.",
            ))
        }
    }
}

/// `ack: processed`: transform and write now, and answer with the result. A retryable failure
/// answers 503 (and forgets the dedupe key, so the provider's retry is not taken for a repeat);
/// a permanent one goes to the dead letters, as in the queued path.
async fn process_now(
    q: &super::queueing::Queued,
    name: &str,
    event: EventInput,
    dedupe_key: Option<(String, std::time::Duration)>,
    res: &mut Response,
) -> Result<(), Stop> {
    let unavailable = |res: &mut Response, why: &str| {
        tracing::error!(pipeline = %name, event_id = %event.id, reason = %why, "not processed; answering 503");
        unavailable(res, "The event could not be processed. Please retry.")
    };
    if let Some((key, window)) = &dedupe_key {
        match q.handle.mark_seen(key, *window).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(unavailable(res, &crate::diagnostics::chain(&e))),
        }
    }
    match q.worker.attempt(&event).await {
        Attempt::Written | Attempt::Dropped(_) => Ok(()),
        Attempt::Retry(reason) => {
            if let Some((key, _)) = &dedupe_key {
                let _ = q.handle.forget_seen(key).await;
            }
            Err(unavailable(res, &reason))
        }
        Attempt::Permanent(reason) => {
            tracing::error!(pipeline = %name, event_id = %event.id, %reason, "dead-lettered");
            crate::ops::alerts::dead_lettered(name, &reason);
            q.handle
                .dead_letter(&event, &reason)
                .await
                .map_err(|e| unavailable(res, &crate::diagnostics::chain(&e)))
        }
    }
}
