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

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use salvo::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use salvo::http::{HeaderName, HeaderValue, Method, ParseError, StatusCode};
use salvo::prelude::*;
use serde_json::json;
use tracing::Instrument;

use super::App;
use super::queueing::QueueHandle;
use crate::config::Project;
use crate::config::queue::Ack;
use crate::config::rate_limit::FailMode;
use crate::config::units::HttpMethod;
use crate::queue::redis::{Enqueued, QueueError};
use crate::rate_limit::{Decision, RateLimiter, Rule, ceil_secs};
use crate::request_field::Fields;
use crate::respond::{Inline, Reply};
use crate::route::Lookup;
use crate::transform::EventInput;
use crate::verify::{Context, Inbound, VerifyError};
use crate::worker::Attempt;

/// The engine's single salvo handler.
pub struct Dispatch {
    pub app: Arc<App>,
}

/// An early answer has been written to the response: stop here.
struct Stop;

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
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %req.method(),
            path = %req.uri().path(),
            pipeline = tracing::field::Empty,
            event_id = tracing::field::Empty,
        );
        let mut label = String::from("-");
        // Err(Stop) means a step already answered (404, 429, 401, ...).
        let _ = self.serve(req, res, &mut label).instrument(span).await;
        let status = res.status_code.unwrap_or(StatusCode::OK).as_u16();
        metrics::histogram!("engine_http_request_duration_seconds", "pipeline" => label.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("engine_http_requests_total", "pipeline" => label, "status" => status.to_string())
            .increment(1);
    }
}

const X_REQUEST_ID: &str = "x-request-id";

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
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

impl Dispatch {
    /// The request path, one step per line. `label` names the pipeline (or engine path) for the
    /// request metrics.
    async fn serve(
        &self,
        req: &mut Request,
        res: &mut Response,
        label: &mut String,
    ) -> Result<(), Stop> {
        let app = &*self.app;
        if let Some(own) = own_path(req.uri().path()) {
            *label = own.to_string();
            let seen = Seen::new(app, req, Bytes::new());
            check_rate(app, app.health_rule.as_ref(), &seen, &[], res).await?;
            only_get(req, res)?;
            match own {
                "health" => health(&app.project, &app.clock, res),
                "ready" => ready(app, res).await,
                _ => metrics_text(app, req, res),
            }
            return Ok(());
        }
        let (pipeline, params) = route(app, req, res)?;
        let name = &app.project.pipelines[pipeline].config.name;
        label.clone_from(name);
        tracing::Span::current().record("pipeline", name.as_str());
        maintenance(app, res)?;
        if let Some(flow) = &app.oauth[pipeline] {
            let seen = Seen::new(app, req, Bytes::new());
            check_rate(app, app.rate_rules[pipeline].as_ref(), &seen, &params, res).await?;
            oauth(app, pipeline, flow, req, res).await;
            return Ok(());
        }
        let body = read_body(app, pipeline, req, res).await?;
        let seen = Seen::new(app, req, body);
        let rule = app.rate_rules[pipeline].as_ref();
        // With Redis behind both, a verified request's rate-limit check rides in its enqueue's
        // round trip (checked first there; nothing is stored when it refuses). A request that
        // fails verification is checked on its own before its 401, so it still counts and still
        // meets the 429 exactly as if the limit had come first.
        // A limit that `counts: verified` is checked after verification (in the enqueue's round
        // trip when it can), and a request failing verification counts against the default
        // per-IP limit instead: forged requests cannot spend a real sender's budget.
        let limit_in_enqueue = rule.filter(|_| app.limit_in_enqueue[pipeline]);
        let after_verify = rule.is_some_and(|r| r.verified_only);
        if limit_in_enqueue.is_none() && !after_verify {
            check_rate(app, rule, &seen, &params, res).await?;
        }
        if let Err(refusal) = verify(app, pipeline, &seen, &params).await {
            let counted = if after_verify {
                app.unverified_rules[pipeline].as_ref()
            } else {
                limit_in_enqueue
            };
            check_rate(app, counted, &seen, &params, res).await?;
            return Err(refuse(res, refusal));
        }
        if after_verify && limit_in_enqueue.is_none() {
            check_rate(app, rule, &seen, &params, res).await?;
        }
        if app.project.pipelines[pipeline].config.log_body {
            log_body(app, pipeline, &seen);
        }
        let event = event(app, pipeline, &seen, params);
        tracing::Span::current().record("event_id", event.id.as_str());
        let reply = self.respond(pipeline, &event).await;
        let event_id = app.recorder.as_ref().map(|_| event.id.clone());
        enqueue(app, pipeline, &seen, event, limit_in_enqueue, res).await?;
        send(&reply, res);
        if let (Some(recorder), Some(id)) = (&app.recorder, event_id) {
            record(app, recorder, pipeline, &seen, &id, reply.status);
        }
        Ok(())
    }

    /// The static answer, or a template/script computed here within a short budget, else on a
    /// blocking thread (a slow script cannot stall other requests); the fallback when it fails.
    async fn respond(&self, pipeline: usize, event: &EventInput) -> Reply {
        let app = &*self.app;
        let responder = &app.responders[pipeline];
        if !responder.is_computed() {
            return responder.static_reply();
        }
        let name = &app.project.pipelines[pipeline].config.name;
        let computed = match responder.compute_inline(event) {
            Ok(reply) => Ok(reply),
            Err(Inline::Failed(reason)) => Err(reason),
            Err(Inline::Elsewhere) => {
                let input = event.clone();
                let shared = self.app.clone();
                match tokio::task::spawn_blocking(move || {
                    shared.responders[pipeline].compute(&input)
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
fn event(app: &App, pipeline: usize, seen: &Seen<'_>, params: Vec<(String, String)>) -> EventInput {
    let inbound = seen.inbound();
    let fields = Fields::new(&inbound, &params);
    let provider_id = app.queued[pipeline]
        .as_ref()
        .filter(|q| !q.config.event_id.is_empty())
        .and_then(|q| fields.join(&q.config.event_id, ":"));
    let tenant = app.verifiers[pipeline]
        .as_ref()
        .and_then(|v| v.tenant_key())
        .and_then(|k| fields.get(k));
    let id = provider_id.unwrap_or_else(|| app.clock.mint_id());
    let mut event = seen.event_input(
        id,
        &app.project.pipelines[pipeline].config.name,
        params,
        tenant,
    );
    // Credentials never leave the request: not into the queue, dead letters or scripts.
    let keep = app.queued[pipeline]
        .as_ref()
        .map(|q| q.config.keep_headers.as_slice())
        .unwrap_or(&[]);
    let verifier = app.verifiers[pipeline].as_ref();
    event.headers.retain(|(name, _)| {
        let credential = crate::verify::CREDENTIAL_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(name))
            || verifier.is_some_and(|v| v.is_credential_header(name));
        !credential && (keep.is_empty() || keep.iter().any(|k| k.eq_ignore_ascii_case(name)))
    });
    event
}

/// Queue the event of a pipeline with transform steps. A repeat within the dedupe window is
/// answered like the first and not stored again; a queue that cannot take it means 503, so the
/// provider retries: a 2xx is only ever sent for a stored event.
async fn enqueue(
    app: &App,
    pipeline: usize,
    seen: &Seen<'_>,
    event: EventInput,
    limit: Option<&Rule>,
    res: &mut Response,
) -> Result<(), Stop> {
    // The limit rides in the enqueue's script on a Redis queue with a Redis limiter, `ack:
    // queued` (what `limit_rides_on_enqueue` chose at boot); anywhere else a limit handed in is
    // checked here on its own, never skipped.
    let ride = match (limit, app.queued[pipeline].as_ref(), &app.limiter) {
        (Some(rule), Some(q), RateLimiter::Redis(gcra)) if q.config.ack == Ack::Queued => {
            match &q.handle {
                QueueHandle::Redis(queue) => Some((rule, queue, gcra)),
                QueueHandle::Memory(_) => None,
            }
        }
        _ => None,
    };
    if ride.is_none() {
        check_rate(app, limit, seen, &event.params, res).await?;
    }
    let Some(q) = &app.queued[pipeline] else {
        return Ok(());
    };
    let dedupe_key = q.config.dedupe.as_ref().and_then(|d| {
        let inbound = seen.inbound();
        let key = Fields::new(&inbound, &event.params).join(&d.key, "|");
        key.map(|k| (k, d.window.0))
    });
    let event_id = event.id.clone();
    let name = &app.project.pipelines[pipeline].config.name;
    if q.config.ack == Ack::Processed {
        return process_now(q, name, event, dedupe_key, res).await;
    }
    let dedupe = dedupe_key.as_ref().map(|(k, w)| (k.as_str(), *w));
    let stored = match ride {
        Some((rule, queue, gcra)) => {
            let key = rule.key_of(seen.client_ip, &seen.inbound(), &event.params);
            match queue
                .enqueue_limited(&event, dedupe, rule, &gcra.key(rule, &key))
                .await
            {
                Ok((verdict, stored)) => {
                    answer_decision(
                        rule,
                        &crate::rate_limit::redis::decision(rule, verdict),
                        res,
                    )?;
                    stored.ok_or_else(|| QueueError("refused by the rate limit".into()))
                }
                Err(e) => {
                    metrics::counter!("engine_rate_limit_backend_errors_total", "bucket" => rule.bucket.clone()).increment(1);
                    Err(e)
                }
            }
        }
        None => q.handle.enqueue(event, dedupe).await,
    };
    match stored {
        Ok(Enqueued::Added(_)) => {
            metrics::counter!("engine_events_queued_total", "pipeline" => name.clone())
                .increment(1);
            Ok(())
        }
        Ok(Enqueued::Duplicate) => {
            tracing::info!(pipeline = %name, %event_id, "duplicate within the dedupe window: not queued again");
            metrics::counter!("engine_duplicates_total", "pipeline" => name.clone()).increment(1);
            Ok(())
        }
        Err(e) => {
            tracing::error!(pipeline = %name, %event_id, error = %e, "cannot queue the event; answering 503");
            res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(5));
            Err(error(
                res,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
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
        res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(5));
        error(
            res,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The event could not be processed. Please retry.",
        )
    };
    if let Some((key, window)) = &dedupe_key {
        match q.handle.mark_seen(key, *window).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(unavailable(res, &e.to_string())),
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
                .map_err(|e| unavailable(res, &e.to_string()))
        }
    }
}

/// An OAuth pipeline: the start route or the callback (its `route`). Browsers get a redirect or
/// a short HTML page; `Accept: application/json` callers of the start route get JSON.
async fn oauth(
    app: &App,
    pipeline: usize,
    flow: &Result<crate::oauth::Flow, String>,
    req: &Request,
    res: &mut Response,
) {
    use crate::oauth::Answer;
    let flow = match flow {
        Ok(f) => f,
        Err(why) => {
            error(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
            return;
        }
    };
    let cfg = app.project.pipelines[pipeline].config.oauth.as_ref();
    let is_start = cfg.is_some_and(|o| o.start.path == req.uri().path());
    let query = req.uri().query().unwrap_or("");
    let now = app.clock.now_secs();
    let wants_json = req
        .headers()
        .get(salvo::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let answer = if is_start {
        let authorization = req
            .headers()
            .get(salvo::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        flow.start(authorization, query, wants_json, now)
    } else {
        flow.callback(query, now).await
    };
    // the state and code are single-use secrets: never cached, never sent on as a referrer
    res.headers_mut().insert(
        salvo::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    res.headers_mut().insert(
        salvo::http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    match answer {
        Answer::Redirect(url) => {
            res.status_code(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&url) {
                res.headers_mut().insert(salvo::http::header::LOCATION, v);
            }
        }
        Answer::Json(v) => res.render(Json(v)),
        Answer::Refused(status, code, text) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            if is_start || wants_json {
                error(res, status, code, &text);
            } else {
                res.status_code(status);
                res.render(salvo::writing::Text::Html(crate::oauth::page(
                    status.as_u16(),
                    &text,
                )));
            }
        }
    }
}

/// `log_body: true`: the verified request's body, the pipeline's `redact` fields replaced.
fn log_body(app: &App, pipeline: usize, seen: &Seen<'_>) {
    let content_type = seen
        .req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let redact = &app.project.pipelines[pipeline].config.redact;
    let body = crate::record::redacted_body(content_type, &seen.body, redact);
    tracing::info!(body = %body, "request body");
}

/// `--record`: write an accepted request (2xx) as a fixture, credentials removed and the
/// pipeline's `redact` fields redacted.
fn record(
    app: &App,
    recorder: &crate::record::Recorder,
    pipeline: usize,
    seen: &Seen<'_>,
    event_id: &str,
    status: u16,
) {
    let config = &app.project.pipelines[pipeline].config;
    if !config.record || !(200..300).contains(&status) {
        return;
    }
    let verifier = app.verifiers[pipeline].as_ref();
    recorder.record(&crate::record::Recorded {
        pipeline: &config.name,
        method: config.route.method,
        path: seen.req.uri().path(),
        query: seen.req.uri().query().unwrap_or(""),
        headers: seen.req.headers(),
        body: &seen.body,
        now_ms: seen.now_ms,
        event_id,
        status,
        signed: verifier.is_some(),
        credential: &|name: &str| verifier.is_some_and(|v| v.is_credential_header(name)),
        redact: &config.redact,
    });
}

/// What the engine saw of a request once its body is read: who sent it, to which public URL.
struct Seen<'r> {
    req: &'r Request,
    body: Bytes,
    client_ip: IpAddr,
    /// The URL the provider signed: the public one, not the one this process sees.
    url: String,
    now_ms: i64,
}

impl<'r> Seen<'r> {
    fn new(app: &App, req: &'r Request, body: Bytes) -> Seen<'r> {
        let peer = req
            .remote_addr()
            .ip()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        Seen {
            req,
            client_ip: app.proxies.client_ip(peer, req.headers()),
            url: app.public_url(peer, req.headers(), path_and_query),
            body,
            now_ms: app.clock.now_ms(),
        }
    }

    fn inbound(&self) -> Inbound<'_> {
        Inbound {
            method: self.req.method().as_str(),
            url: &self.url,
            headers: self.req.headers(),
            body: &self.body,
            now: self.now_ms.div_euclid(1000),
        }
    }

    fn event_input(
        &self,
        id: String,
        pipeline: &str,
        params: Vec<(String, String)>,
        tenant: Option<String>,
    ) -> EventInput {
        EventInput {
            id,
            pipeline: pipeline.to_string(),
            received_at_ms: self.now_ms,
            method: self.req.method().as_str().to_string(),
            path: self.req.uri().path().to_string(),
            query: self.req.uri().query().unwrap_or("").to_string(),
            headers: self
                .req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            params,
            tenant,
            body: self.body.clone(),
        }
    }
}

/// 404 for an unknown path, 405 (with `Allow`) for a known path and another method.
fn route(
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
        Lookup::NotFound => Err(error(
            res,
            StatusCode::NOT_FOUND,
            "not_found",
            "No route for this path.",
        )),
        Lookup::MethodNotAllowed { allowed } => {
            let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                res.headers_mut().insert(ALLOW, v);
            }
            Err(error(
                res,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "This route does not accept this method.",
            ))
        }
    }
}

/// 503 with `Retry-After` on every pipeline route while maintenance mode is on.
fn maintenance(app: &App, res: &mut Response) -> Result<(), Stop> {
    let m = &app.project.settings.maintenance;
    if !m.enabled {
        return Ok(());
    }
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(m.retry_after_secs));
    Err(error(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        "maintenance",
        &m.message,
    ))
}

/// The body, within the pipeline's limit: refused from its declared length before any of it is
/// read; a body without a length (chunked) is read only up to the limit.
async fn read_body(
    app: &App,
    pipeline: usize,
    req: &mut Request,
    res: &mut Response,
) -> Result<Bytes, Stop> {
    let limit = app.project.body_limit(pipeline);
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(res, limit));
    }
    match req
        .payload_with_max_size(usize::try_from(limit).unwrap_or(usize::MAX))
        .await
    {
        Ok(body) => Ok(body.clone()),
        Err(ParseError::PayloadTooLarge) => Err(too_large(res, limit)),
        Err(_) => Err(error(
            res,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "The request body could not be read.",
        )),
    }
}

/// Count the request against `rule` (if any): 429 over the limit, 503 when the backend is down
/// and the rule fails closed; RateLimit headers on every counted answer.
async fn check_rate(
    app: &App,
    rule: Option<&Rule>,
    seen: &Seen<'_>,
    params: &[(String, String)],
    res: &mut Response,
) -> Result<(), Stop> {
    let Some(rule) = rule else { return Ok(()) };
    let key = rule.key_of(seen.client_ip, &seen.inbound(), params);
    let decision = match app.limiter.check(rule, &key).await {
        Ok(d) => d,
        Err(e) => {
            metrics::counter!("engine_rate_limit_backend_errors_total", "bucket" => rule.bucket.clone()).increment(1);
            warn_throttled(&rule.bucket, &e.0);
            return match rule.fail {
                FailMode::Open => Ok(()),
                FailMode::Closed => {
                    res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(5));
                    Err(error(
                        res,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Rate limiting is temporarily unavailable. Please retry.",
                    ))
                }
            };
        }
    };
    answer_decision(rule, &decision, res)
}

/// The RateLimit headers of a decision; 429 with Retry-After when it refuses.
fn answer_decision(rule: &Rule, decision: &Decision, res: &mut Response) -> Result<(), Stop> {
    let h = res.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(ceil_secs(decision.reset)),
    );
    if let Ok(policy) = HeaderValue::from_str(&format!(
        "{};w={}",
        rule.limit,
        rule.period.as_secs().max(1)
    )) {
        h.insert("ratelimit-policy", policy);
    }
    if decision.allowed {
        return Ok(());
    }
    metrics::counter!("engine_rate_limited_total", "bucket" => rule.bucket.clone()).increment(1);
    let retry = ceil_secs(decision.retry_after).max(1);
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry));
    Err(error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("Too many requests. Retry after {retry} seconds."),
    ))
}

/// Why verification refused a request; answered by [`refuse`].
enum Refusal {
    /// Not genuine: 401 (the reason goes to the log only).
    Rejected,
    /// Tenant secrets cannot be read: 503, so the provider retries.
    Unavailable,
}

/// Whether the request is genuine; the refusal is logged and counted here, answered by the caller.
async fn verify(
    app: &App,
    pipeline: usize,
    seen: &Seen<'_>,
    params: &[(String, String)],
) -> Result<(), Refusal> {
    let Some(verifier) = &app.verifiers[pipeline] else {
        return Ok(());
    };
    let ctx = Context {
        client_ip: seen.client_ip,
        path_params: params,
        tenants: app.tenants.as_ref(),
    };
    let name = &app.project.pipelines[pipeline].config.name;
    match verifier.verify(&seen.inbound(), &ctx).await {
        Ok(()) => Ok(()),
        Err(VerifyError::Rejected(reason)) => {
            tracing::warn!(pipeline = %name, reason = reason.code(), client_ip = %seen.client_ip, "verification failed");
            metrics::counter!("engine_verify_failures_total", "pipeline" => name.clone(), "reason" => reason.code())
                .increment(1);
            Err(Refusal::Rejected)
        }
        Err(VerifyError::Unavailable(why)) => {
            tracing::error!(pipeline = %name, error = %why, "verification unavailable");
            Err(Refusal::Unavailable)
        }
    }
}

fn refuse(res: &mut Response, refusal: Refusal) -> Stop {
    match refusal {
        Refusal::Rejected => error(
            res,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Request verification failed.",
        ),
        Refusal::Unavailable => {
            res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(5));
            error(
                res,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Verification is temporarily unavailable. Please retry.",
            )
        }
    }
}

/// One warning per 10 s while the backend is down, not one per request.
fn warn_throttled(bucket: &str, error: &str) {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp();
    let last = LAST.load(Ordering::Relaxed);
    if now - last >= 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            bucket,
            error,
            "rate-limit backend unavailable; applying the rule's fail mode"
        );
    }
}

fn send(r: &Reply, res: &mut Response) {
    res.status_code(StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK));
    for (name, value) in &r.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            res.headers_mut().insert(n, v);
        }
    }
    if let Ok(ct) = HeaderValue::from_str(&r.content_type) {
        res.headers_mut().insert(CONTENT_TYPE, ct);
    }
    let _ = res.write_body(r.body.clone());
}

/// The engine's own paths: `/health`, `/ready`, `/metrics`.
fn own_path(path: &str) -> Option<&'static str> {
    match path {
        "/health" => Some("health"),
        "/ready" => Some("ready"),
        "/metrics" => Some("metrics"),
        _ => None,
    }
}

/// 405 unless GET or HEAD.
fn only_get(req: &Request, res: &mut Response) -> Result<(), Stop> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(());
    }
    res.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    Err(error(
        res,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not accept this method.",
    ))
}

/// `/health`: liveness for Render, `"status":"maintenance"` (still 200) in maintenance mode.
fn health(project: &Project, clock: &crate::clock::Clock, res: &mut Response) {
    let status = if project.settings.maintenance.enabled {
        "maintenance"
    } else {
        "ok"
    };
    res.render(Json(json!({
        "status": status,
        "timestamp": chrono::DateTime::from_timestamp_millis(clock.now_ms())
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "environment": project.env.environment(),
    })));
}

/// `/ready`: 200 when Redis and Postgres (those configured) answer, else 503 naming what is down.
async fn ready(app: &App, res: &mut Response) {
    let (ok, body) = app.ready.run().await;
    if !ok {
        tracing::warn!(checks = %body["checks"], "not ready");
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
    }
    res.render(Json(body));
}

/// `/metrics`: Prometheus text, behind METRICS_TOKEN (open in development without one).
fn metrics_text(app: &App, req: &Request, res: &mut Response) {
    use crate::ops::metrics::{Access, allowed, render};
    let authorization = req
        .headers()
        .get(salvo::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match allowed(
        app.metrics_token.as_deref(),
        app.project.env.is_production(),
        authorization,
    ) {
        Access::Unauthorized => {
            res.headers_mut().insert(
                salvo::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            error(
                res,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Metrics need Authorization: Bearer <METRICS_TOKEN>.",
            );
        }
        Access::Disabled => {
            error(
                res,
                StatusCode::NOT_FOUND,
                "not_found",
                "Metrics are off in production until METRICS_TOKEN is set.",
            );
        }
        Access::Open => match render() {
            Some(text) => {
                res.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                let _ = res.write_body(text);
            }
            None => {
                error(
                    res,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Another metrics recorder is installed in this process.",
                );
            }
        },
    }
}

fn too_large(res: &mut Response, limit: u64) -> Stop {
    error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!(
            "The request body is larger than this route accepts ({}).",
            crate::config::units::ByteSize(limit)
        ),
    )
}

/// A JSON error answer: `{"error": code, "message": text}`.
fn error(res: &mut Response, status: StatusCode, code: &str, message: &str) -> Stop {
    res.status_code(status);
    res.render(Json(json!({"error": code, "message": message})));
    Stop
}
