//! What a served request leaves beside its answer, off the request path's main line: the
//! console's sample of recent requests (accepted and refused), the body logged with
//! `log_body: true`, and the fixture written with `--record`. `Dispatch::serve` names each once
//! ([`Aside::before`] the enqueue takes the event, [`Aside::after`] the answer is sent); none
//! of them can fail a request or change its answer.

use salvo::http::header::CONTENT_TYPE;

use super::App;
use super::dispatch::Refusal;
use super::dispatch::without_credentials;
use super::incoming::Incoming;
use super::route::Route;
use crate::transform::EventInput;

/// What a request will leave once answered: the console's copy of its event (when sampled) and
/// the event id its fixture is written under (when recording).
pub(super) struct Aside {
    sampled: Option<EventInput>,
    recorded: Option<String>,
}

impl Aside {
    /// Taken from `event` before the enqueue takes it. The console samples pipelines the archive
    /// does not keep (it shows archived ones, and an erasure leaves nothing behind in this
    /// sample): at most one every few hundred ms per pipeline.
    pub(super) fn before(
        app: &App,
        route: &Route,
        incoming: &Incoming<'_>,
        event: &EventInput,
    ) -> Aside {
        let sampled = app
            .console
            .as_ref()
            .filter(|_| {
                route
                    .queued
                    .as_ref()
                    .is_none_or(|q| q.worker.archive.is_none())
            })
            .is_some_and(|c| {
                c.samples
                    .recent
                    .offer(&route.config.name, incoming.now_ms, false)
            })
            .then(|| event.clone());
        Aside {
            sampled,
            recorded: app.recorder.as_ref().map(|_| event.id.clone()),
        }
    }

    /// Once the answer (`status`) is sent: the sample kept, the fixture written.
    pub(super) fn after(self, app: &App, route: &Route, incoming: &Incoming<'_>, status: u16) {
        if let (Some(event), Some(console)) = (self.sampled, &app.console) {
            console.samples.recent.keep(crate::console::recent::Sample {
                at_ms: incoming.now_ms,
                status,
                event,
                refused: None,
            });
        }
        if let (Some(recorder), Some(id)) = (&app.recorder, self.recorded) {
            record(recorder, route, incoming, &id, status);
        }
    }
}

/// A refused request in the console's sample of recent requests (console on; sampled apart from
/// accepted ones, at most one every few hundred ms per pipeline), with its status and reason:
/// an operator hunting forged or misconfigured senders needs exactly those. Its body is not
/// parsed (it was not verified); credential headers are removed as from any event.
pub(super) fn sample_refused(
    app: &App,
    route: &Route,
    incoming: &Incoming<'_>,
    params: Vec<(String, String)>,
    tenant: Option<String>,
    refusal: Refusal,
) {
    let Some(recent) = app.console.as_ref().map(|c| &c.samples.recent) else {
        return;
    };
    if !recent.offer(&route.config.name, incoming.now_ms, true) {
        return;
    }
    let mut event = incoming.event_input(app.clock.mint_id(), &route.config.name, params, tenant);
    without_credentials(route, &mut event);
    let (status, reason) = match refusal {
        Refusal::Rejected(reason) => (401, reason.code()),
        Refusal::Unavailable => (503, "verify_unavailable"),
    };
    recent.keep(crate::console::recent::Sample {
        at_ms: incoming.now_ms,
        status,
        event,
        refused: Some(reason),
    });
}

/// `log_body: true`: the verified request's body, the pipeline's `redact` fields replaced.
pub(super) fn log_body(route: &Route, incoming: &Incoming<'_>) {
    let content_type = incoming
        .req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let redact = &route.config.redact;
    let body = crate::fixture::redact::redacted_body(content_type, &incoming.body, redact);
    tracing::info!(body = %body, "request body");
}

/// `--record`: write an accepted request (2xx) as a fixture, credentials removed and the
/// pipeline's `redact` fields redacted.
fn record(
    recorder: &crate::fixture::record::FixtureRecorder,
    route: &Route,
    incoming: &Incoming<'_>,
    event_id: &str,
    status: u16,
) {
    let config = &route.config;
    if !config.record || !(200..300).contains(&status) {
        return;
    }
    let verifier = route.verifier.as_ref();
    recorder.record(&crate::fixture::record::Recorded {
        pipeline: &config.name,
        method: config.route.method,
        path: incoming.req.uri().path(),
        query: incoming.req.uri().query().unwrap_or(""),
        headers: incoming.req.headers(),
        body: &incoming.body,
        now_ms: incoming.now_ms,
        event_id,
        status,
        signed: verifier.is_some(),
        credential: &|name: &str| verifier.is_some_and(|v| v.reads_credential_from(name)),
        redact: &config.redact,
    });
}
