//! The request path, in the order a request meets it:
//!
//! ```text
//! route lookup (404 / 405) -> maintenance (503) -> body size limit (413)
//!   -> rate limit (429; before verify: a request over the limit is refused whatever its
//!      signature, and a flood of forged requests counts against the limit)
//!   -> verify (401, or 503 when tenant secrets are unreachable)
//!   -> rate limit of a pipeline whose limit `counts: verified` (a provider's sender key; a
//!      request failing verification counts against the default per-IP limit before its 401)
//!   -> respond (static, or a template / script: inline within 250 µs, else on a blocking thread;
//!      fallback on failure)
//!   -> enqueue (pipelines with transform steps: 2xx only once the event is queued; 503 if not)
//! ```
//!
//! One Redis round trip per verified request: when the rate limit and the queue are both on Redis
//! (and verification needs no tenant lookup), the limit is checked inside the enqueue's script,
//! before anything is stored, and the local signature check is done first. A request that fails
//! verification gets its own rate-limit check before its 401, so what a client sees — 429 over
//! the limit whatever the signature, 401 under it — is what the order above says.
//!
//! CORS runs as a salvo hoop around this handler (see `server::chain`), so every answer,
//! errors included, carries `Access-Control-Allow-Origin` for allowed origins only.
//! `/health` is answered here too, before the route table, and is never in maintenance.

use std::sync::Arc;

use bytes::Bytes;
use salvo::http::header::CONTENT_LENGTH;
use salvo::http::{HeaderValue, ParseError, StatusCode};
use salvo::prelude::*;
use tracing::Instrument;

use super::App;
use super::answer::{ErrorAnswer, Stop, send};
use super::aside::{self, Aside};
use super::incoming::Incoming;
use super::limit::check_rate;
use super::route::Route;
use crate::config::units::HttpMethod;

use crate::request_field::RequestFields;
use crate::respond::{Inline, Reply};
use crate::route::Lookup;
use crate::transform::EventInput;
use crate::verify::{Context, VerifyError};

/// The engine's single salvo handler.
pub struct Dispatch {
    pub app: Arc<App>,
}

#[async_trait]
impl Handler for Dispatch {
    /// One request: a request id (the caller's `X-Request-Id` when sane, else a new one) echoed
    /// in the answer and carried by every log line of the request's span; counted and timed.
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let started = std::time::Instant::now();
        let request_id = request_id(req);
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            res.headers_mut().insert(X_REQUEST_ID, v);
        }
        // text fields as `&str`, not `%` (Display): a traced span copies a string where it
        // would run the formatter
        let span = tracing::info_span!(
            "request",
            request_id = request_id.as_str(),
            method = req.method().as_str(),
            path = req.uri().path(),
            pipeline = tracing::field::Empty,
            event_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        // an incoming `traceparent` (a proxy's, a provider's) is the trace this request joins
        if crate::ops::trace::on() {
            crate::ops::trace::adopt_caller(&span, req.headers());
        }
        let mut served = RequestTally {
            label: "-",
            pipeline: None,
            verify_failed: false,
        };
        // Err(Stop) means a step already answered (404, 429, 401, ...).
        // the span kept past the request only while traces are exported (its status recorded
        // for the trace; logs have no line after this)
        let traced = crate::ops::trace::on().then(|| span.clone());
        let _ = self.serve(req, res, &mut served).instrument(span).await;
        if served.label != "console" {
            super::answer::sandbox(res);
        }
        let status = res.status_code.unwrap_or(StatusCode::OK).as_u16();
        if let Some(span) = traced {
            span.record("status", status);
        }
        let took = started.elapsed();
        let Some(route) = served.pipeline.map(|i| &self.app.routes[i]) else {
            crate::ops::metrics::own_path_answered(served.label, status, took);
            return;
        };
        if let Some(console) = &self.app.console {
            console.samples.traffic.record(
                &route.config.name,
                self.app.clock.now_ms().div_euclid(1000),
                status,
                served.verify_failed,
                took,
            );
        }
        route.metrics.answered(status, took);
    }
}

const X_REQUEST_ID: &str = "x-request-id";

/// What the request path reports about a request for the metrics and the console's traffic.
struct RequestTally {
    /// The engine path's name (`health`, `console`, ...); `-` when unrouted.
    label: &'static str,
    /// The route of the pipeline it reached (its index in `App::routes`), whose metrics count it.
    pipeline: Option<usize>,
    /// Whether its verification failed.
    verify_failed: bool,
}

/// The caller's request id when it is 1-128 characters of `[A-Za-z0-9._:-]` (a proxy's, e.g.
/// Render's), else a new UUID.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| crate::clock::random_uuid().to_string())
}

impl Dispatch {
    /// The request path, one step per line. `served` names the pipeline (or engine path) for
    /// the request metrics.
    async fn serve(
        &self,
        req: &mut Request,
        res: &mut Response,
        served: &mut RequestTally,
    ) -> Result<(), Stop> {
        let app = &*self.app;
        if let Some(own) = super::own::own_path(req.uri().path()) {
            served.label = own;
            return super::own::serve(app, own, req, res).await;
        }
        if crate::route::is_console_path(req.uri().path()) {
            served.label = "console";
            return super::console::serve(app, req, res).await;
        }
        let (pipeline, params) = lookup(app, req, res)?;
        let route = &app.routes[pipeline];
        served.pipeline = Some(pipeline);
        tracing::Span::current().record("pipeline", route.config.name.as_str());
        maintenance(app, res)?;
        if let Some(flow) = &route.oauth {
            let incoming = Incoming::new(app, req, Bytes::new());
            check_rate(app, route.limit.first(), &incoming, &params, res).await?;
            super::oauth::answer(app, route, flow, req, res).await;
            return Ok(());
        }
        let body = read_body(app, route, req, res).await?;
        let incoming = Incoming::new(app, req, body);
        // Which limit is checked where was decided at boot (`route::Limit`): first, on its own;
        // inside the enqueue's Redis round trip (a request failing verification is checked on
        // its own before its 401, so it still counts and meets the 429 as if the limit came
        // first); or after verification (`counts: verified`: a request failing verification
        // counts against the per-IP default instead, so forged requests cannot spend a real
        // sender's budget).
        async {
            check_rate(app, route.floor.as_ref(), &incoming, &params, res).await?;
            check_rate(app, route.limit.first(), &incoming, &params, res).await
        }
        .instrument(crate::ops::trace::step!("rate_limit"))
        .await?;
        // the tenant the request names, read once: counted before its lookup, verified, stored
        let tenant_id = route
            .verifier
            .as_ref()
            .and_then(|v| v.tenant_id(&incoming.inbound(), &params));
        let counted =
            count_lookup(app, route, &incoming, tenant_id.as_deref(), &params, res).await?;
        let verified = verify(app, route, &incoming, tenant_id.as_deref())
            .instrument(crate::ops::trace::step!("verify"))
            .await;
        if let Err(refusal) = verified {
            served.verify_failed = true;
            if !counted {
                check_rate(app, route.limit.when_unverified(), &incoming, &params, res).await?;
            }
            aside::sample_refused(app, route, &incoming, params, tenant_id, refusal);
            return Err(refuse(res, refusal));
        }
        check_rate(app, route.limit.after_verify(), &incoming, &params, res).await?;
        if route.config.log_body {
            aside::log_body(route, &incoming);
        }
        // the JSON fields read from here on (`when`, event id, dedupe and rate-limit keys): one
        // pass through the body
        let inbound = incoming.inbound();
        let fields = RequestFields::reading(&inbound, &params, &route.json_fields);
        let computes = route.responder.computes_for(&fields);
        let mut event = event(app, route, &incoming, &fields, params.clone(), tenant_id);
        tracing::Span::current().record("event_id", event.id.as_str());
        // the worker continues this request's trace from the stored event
        event.trace = crate::ops::trace::traceparent_of(&tracing::Span::current());
        let reply = self
            .respond(pipeline, &event, computes)
            .instrument(crate::ops::trace::step!("respond"))
            .await;
        let aside = Aside::before(app, route, &incoming, &event);
        super::enqueue::enqueue(route, &incoming, &fields, event, res)
            .instrument(crate::ops::trace::step!("enqueue"))
            .await?;
        send(&reply, res);
        aside.after(app, route, &incoming, reply.status);
        Ok(())
    }

    /// The static answer (`computes` false: no template or script, or `when` does not match),
    /// or a template/script computed here within a short budget, else on a blocking thread (a
    /// slow script cannot stall other requests); the fallback when it fails.
    async fn respond(&self, pipeline: usize, event: &EventInput, computes: bool) -> Reply {
        let app = &*self.app;
        let responder = &app.routes[pipeline].responder;
        if !computes {
            return responder.static_reply();
        }
        let name = &app.routes[pipeline].config.name;
        let computed = match responder.compute_inline(event) {
            Ok(reply) => Ok(reply),
            Err(Inline::Failed(reason)) => Err(reason),
            Err(Inline::Elsewhere) => {
                let input = event.clone();
                let shared = self.app.clone();
                // in the respond span there too: a connection call from the script carries it
                let span = tracing::Span::current();
                match tokio::task::spawn_blocking(move || {
                    let _in = span.enter();
                    shared.routes[pipeline].responder.compute(&input)
                })
                .await
                {
                    Ok(result) => result,
                    Err(e) => {
                        tracing::error!(pipeline = %name, error = %e, "respond task failed; sent the fallback");
                        return responder.fallback();
                    }
                }
            }
        };
        computed.unwrap_or_else(|reason| {
            tracing::warn!(pipeline = %name, %reason, "respond failed; sent the fallback");
            responder.fallback()
        })
    }
}

/// The event as scripts and the queue see it: the provider's id (the queue's `event_id` fields)
/// or one minted here, once; the tenant named by the verifier's tenant key.
fn event(
    app: &App,
    route: &Route,
    incoming: &Incoming<'_>,
    fields: &RequestFields<'_>,
    params: Vec<(String, String)>,
    tenant: Option<String>,
) -> EventInput {
    let provider_id = route
        .queued
        .as_ref()
        .filter(|q| !q.config.event_id.is_empty())
        .and_then(|q| fields.join(&q.config.event_id, ":"));
    let id = provider_id.unwrap_or_else(|| app.clock.mint_id());
    let mut event = incoming.event_input(id, &route.config.name, params, tenant);
    without_credentials(route, &mut event);
    if route.index_in_pass
        && let Some(kept) = route.config.archive.kept()
    {
        let index = crate::archive::index_of(&kept.index, &event, |_, ptr| fields.json(ptr));
        event.index = Some(index);
    }
    event
}

/// Credentials never leave the request: not into the queue, dead letters, scripts or the
/// console's sample.
pub(super) fn without_credentials(route: &Route, event: &mut EventInput) {
    let keep = route
        .queued
        .as_ref()
        .map(|q| q.config.keep_headers.as_slice())
        .unwrap_or(&[]);
    let verifier = route.verifier.as_ref();
    event.headers.retain(|(name, _)| {
        let credential = crate::verify::is_credential_name(name)
            || verifier.is_some_and(|v| v.reads_credential_from(name));
        !credential && (keep.is_empty() || keep.iter().any(|k| k.eq_ignore_ascii_case(name)))
    });
}

/// 404 for an unknown path, 405 (with `Allow`) for a known path and another method.
fn lookup(
    app: &App,
    req: &Request,
    res: &mut Response,
) -> Result<(usize, Vec<(String, String)>), Stop> {
    match app
        .project
        .routes
        .lookup(HttpMethod::from_http(req.method()), req.uri().path())
    {
        Lookup::Found { pipeline, params } => Ok((pipeline, params)),
        Lookup::NotFound => Err(ErrorAnswer::NotFound("No route for this path.").write(res)),
        Lookup::MethodNotAllowed { allowed } => {
            let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            let allow = allow.join(", ");
            Err(ErrorAnswer::MethodNotAllowed { allow: &allow }.write(res))
        }
    }
}

/// 503 with `Retry-After` on every pipeline route while maintenance mode is on.
fn maintenance(app: &App, res: &mut Response) -> Result<(), Stop> {
    let m = &app.project.settings.maintenance;
    if !m.enabled {
        return Ok(());
    }
    let answer = ErrorAnswer::Maintenance {
        message: &m.message,
        retry_after: m.retry_after_secs,
    };
    Err(answer.write(res))
}

/// The body, within the pipeline's limit: refused from its declared length before any of it is
/// read; a body without a length (chunked) is read only up to the limit.
async fn read_body(
    app: &App,
    route: &Route,
    req: &mut Request,
    res: &mut Response,
) -> Result<Bytes, Stop> {
    let limit = route.body_limit;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ErrorAnswer::TooLarge { limit }.write(res));
    }
    // the whole body within `timeouts.body_secs` (the server's own timeout only bounds the gap
    // between two reads: a body dripped a byte every few seconds would hold its connection open)
    let whole = std::time::Duration::from_secs(app.project.settings.timeouts.body_secs);
    let read = req.payload_with_max_size(usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(whole, read).await {
        Err(_) => Err(ErrorAnswer::BodyTimeout.write(res)),
        Ok(Ok(body)) => Ok(body.clone()),
        Ok(Err(ParseError::PayloadTooLarge)) => Err(ErrorAnswer::TooLarge { limit }.write(res)),
        Ok(Err(_)) => Err(ErrorAnswer::BadBody.write(res)),
    }
}

/// A request whose verification would read its tenant's secret from the database (an id of the
/// right shape the tenant store has not cached) counts against the per-IP limit that forged
/// requests meet before the query is made, so a sender making up tenant ids meets its 429 before
/// the database does. Whether it was counted (a failed verification then is not counted again).
async fn count_lookup(
    app: &App,
    route: &Route,
    incoming: &Incoming<'_>,
    tenant_id: Option<&str>,
    params: &[(String, String)],
    res: &mut Response,
) -> Result<bool, Stop> {
    let (Some(verifier), Some(store), Some(rule)) = (
        &route.verifier,
        app.tenants.as_ref(),
        route.limit.when_unverified(),
    ) else {
        return Ok(false);
    };
    if !verifier.would_look_up(tenant_id, store) {
        return Ok(false);
    }
    check_rate(app, Some(rule), incoming, params, res).await?;
    Ok(true)
}

/// Why verification refused a request; answered by [`refuse`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Refusal {
    /// Not genuine: 401 (the reason goes to the log, the metrics and the console's sample, never
    /// to the caller).
    Rejected(crate::verify::Reject),
    /// Tenant secrets cannot be read: 503, so the provider retries.
    Unavailable,
}

/// Whether the request is genuine; the refusal is logged and counted here, answered by the caller.
async fn verify(
    app: &App,
    route: &Route,
    incoming: &Incoming<'_>,
    tenant_id: Option<&str>,
) -> Result<(), Refusal> {
    let Some(verifier) = &route.verifier else {
        return Ok(());
    };
    let ctx = Context {
        client_ip: incoming.client_ip,
        tenant_id,
        tenants: app.tenants.as_ref(),
    };
    let name = &route.config.name;
    match verifier.verify(&incoming.inbound(), &ctx).await {
        Ok(()) => Ok(()),
        Err(VerifyError::Rejected(reason)) => {
            tracing::warn!(pipeline = %name, reason = reason.code(), client_ip = %incoming.client_ip, "verification failed");
            metrics::counter!("engine_verify_failures_total", "pipeline" => name.clone(), "reason" => reason.code())
                .increment(1);
            Err(Refusal::Rejected(reason))
        }
        Err(VerifyError::Unavailable(why)) => {
            tracing::error!(pipeline = %name, error = %why, "verification unavailable");
            Err(Refusal::Unavailable)
        }
    }
}

fn refuse(res: &mut Response, refusal: Refusal) -> Stop {
    match refusal {
        Refusal::Rejected(_) => ErrorAnswer::Unauthorized {
            message: "Request verification failed.",
            challenge: None,
        }
        .write(res),
        Refusal::Unavailable => super::answer::unavailable(
            res,
            "Verification is temporarily unavailable. Please retry.",
        ),
    }
}
