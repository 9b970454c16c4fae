//! The request path, in the order a request meets it:
//!
//! ```text
//! route lookup (404 / 405) -> maintenance (503) -> body size limit (413)
//!   -> rate limit (429; before verify, so a forged flood costs one GCRA check, not an HMAC)
//!   -> verify (401, or 503 when tenant secrets are unreachable)
//!   -> respond (static, or a template / script on a blocking thread, fallback on failure)
//! ```
//!
//! CORS runs as a salvo hoop around this handler (see `server::service`), so every answer,
//! errors included, carries `Access-Control-Allow-Origin` for allowed origins only.
//! `/health` is answered here too, before the route table, and is never in maintenance.

use std::sync::Arc;

use salvo::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use salvo::http::{HeaderName, HeaderValue, Method, ParseError, StatusCode};
use salvo::prelude::*;
use serde_json::json;

use super::App;
use crate::config::Project;
use crate::config::rate_limit::FailMode;
use crate::config::units::HttpMethod;
use crate::rate_limit::{Rule, ceil_secs};
use crate::respond::Reply;
use crate::route::Lookup;
use crate::transform::EventInput;
use crate::verify::{Context, Inbound, VerifyError};

/// The engine's single salvo handler.
pub struct Dispatch {
    pub app: Arc<App>,
}

#[async_trait]
impl Handler for Dispatch {
    async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        let app = &*self.app;
        let project = &app.project;
        if req.uri().path() == "/health" {
            if let Some(rule) = &app.health_rule {
                let peer = peer_ip(req);
                let client_ip = app.proxies.client_ip(peer, req.headers());
                let inbound = Inbound {
                    method: req.method().as_str(),
                    url: "",
                    headers: req.headers(),
                    body: &[],
                    now: 0,
                };
                let key = rule.key_of(client_ip, &inbound, &[]);
                if !rate_limit(app, rule, &key, res).await {
                    return;
                }
            }
            return health(project, req, res);
        }
        let method = HttpMethod::from_http(req.method());
        let pipeline = match project.routes.lookup(method, req.uri().path()) {
            Lookup::NotFound => {
                return error(
                    res,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "No route for this path.",
                );
            }
            Lookup::MethodNotAllowed { allowed } => {
                let allow: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
                if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                    res.headers_mut().insert(ALLOW, v);
                }
                return error(
                    res,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "This route does not accept this method.",
                );
            }
            Lookup::Found { pipeline, params } => (pipeline, params),
        };
        let (pipeline, params) = pipeline;

        if project.settings.maintenance.enabled {
            let m = &project.settings.maintenance;
            res.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(m.retry_after_secs));
            return error(
                res,
                StatusCode::SERVICE_UNAVAILABLE,
                "maintenance",
                &m.message,
            );
        }

        // Refuse an oversized body from its declared length before reading any of it; a body
        // without a length (chunked) is read only up to the limit.
        let limit = project.body_limit(pipeline);
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return too_large(res, limit);
        }
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        let body = match req.payload_with_max_size(limit_usize).await {
            Ok(body) => body.clone(),
            Err(ParseError::PayloadTooLarge) => return too_large(res, limit),
            Err(_) => {
                return error(
                    res,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "The request body could not be read.",
                );
            }
        };

        let peer = peer_ip(req);
        let client_ip = app.proxies.client_ip(peer, req.headers());
        // The URL the provider signed: the public one, not the one this process sees.
        let base = match &project.settings.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => app.proxies.public_base(peer, req.headers()),
        };
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let url = format!("{base}{path_and_query}");
        let inbound = Inbound {
            method: req.method().as_str(),
            url: &url,
            headers: req.headers(),
            body: &body,
            now: chrono::Utc::now().timestamp(),
        };

        if let Some(rule) = &app.rate_rules[pipeline] {
            let key = rule.key_of(client_ip, &inbound, &params);
            if !rate_limit(app, rule, &key, res).await {
                return;
            }
        }

        if let Some(verifier) = &app.verifiers[pipeline] {
            let ctx = Context {
                client_ip,
                path_params: &params,
                tenants: app.tenants.as_ref(),
            };
            let name = &project.pipelines[pipeline].config.name;
            match verifier.verify(&inbound, &ctx).await {
                Ok(()) => {}
                Err(VerifyError::Rejected(reason)) => {
                    tracing::warn!(pipeline = %name, reason = reason.code(), client_ip = %client_ip, "verification failed");
                    return error(
                        res,
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "Request verification failed.",
                    );
                }
                Err(VerifyError::Unavailable(why)) => {
                    tracing::error!(pipeline = %name, error = %why, "verification unavailable");
                    res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(5));
                    return error(
                        res,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Verification is temporarily unavailable. Please retry.",
                    );
                }
            }
        }

        let responder = &app.responders[pipeline];
        let reply = if responder.is_computed() {
            let input = EventInput {
                id: uuid::Uuid::new_v4().to_string(),
                pipeline: project.pipelines[pipeline].config.name.clone(),
                received_at_ms: chrono::Utc::now().timestamp_millis(),
                method: req.method().as_str().to_string(),
                path: req.uri().path().to_string(),
                query: req.uri().query().unwrap_or("").to_string(),
                headers: req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                params: params.clone(),
                tenant: app.verifiers[pipeline]
                    .as_ref()
                    .and_then(|v| v.tenant_key())
                    .and_then(|k| crate::request_field::extract(k, &inbound, &params)),
                body: body.clone(),
            };
            // Scripts run off the async threads: a slow one cannot stall other requests.
            let app = self.app.clone();
            let computed =
                tokio::task::spawn_blocking(move || app.responders[pipeline].compute(&input)).await;
            match computed {
                Ok(Ok(reply)) => reply,
                Ok(Err(reason)) => {
                    tracing::warn!(pipeline = %project.pipelines[pipeline].config.name, %reason, "respond failed; sent the fallback");
                    responder.fallback()
                }
                Err(e) => {
                    tracing::error!(pipeline = %project.pipelines[pipeline].config.name, error = %e, "respond task failed; sent the fallback");
                    responder.fallback()
                }
            }
        } else {
            responder.static_reply()
        };
        send(&reply, res);
    }
}

fn peer_ip(req: &Request) -> std::net::IpAddr {
    req.remote_addr()
        .ip()
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// Check `rule` for `key`; answer 429 (or 503 when the backend is down and the rule fails closed)
/// and return `false` to stop, or set the RateLimit headers and return `true`.
async fn rate_limit(app: &App, rule: &Rule, key: &str, res: &mut Response) -> bool {
    let decision = match app.limiter.check(rule, key).await {
        Ok(d) => d,
        Err(e) => {
            metrics::counter!("engine_rate_limit_backend_errors_total", "bucket" => rule.bucket.clone())
                .increment(1);
            warn_throttled(&rule.bucket, &e.0);
            return match rule.fail {
                FailMode::Open => true,
                FailMode::Closed => {
                    res.headers_mut().insert(RETRY_AFTER, HeaderValue::from(5));
                    error(
                        res,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Rate limiting is temporarily unavailable. Please retry.",
                    );
                    false
                }
            };
        }
    };
    let h = res.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(ceil_secs(decision.reset)),
    );
    h.insert(
        "ratelimit-policy",
        HeaderValue::from_str(&format!(
            "{};w={}",
            rule.limit,
            rule.period.as_secs().max(1)
        ))
        .unwrap_or(HeaderValue::from_static("")),
    );
    if decision.allowed {
        return true;
    }
    metrics::counter!("engine_rate_limited_total", "bucket" => rule.bucket.clone()).increment(1);
    let retry = ceil_secs(decision.retry_after).max(1);
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry));
    error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("Too many requests. Retry after {retry} seconds."),
    );
    false
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

fn health(project: &Project, req: &Request, res: &mut Response) {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return error(
            res,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "This route does not accept this method.",
        );
    }
    let status = if project.settings.maintenance.enabled {
        "maintenance"
    } else {
        "ok"
    };
    res.render(Json(json!({
        "status": status,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "environment": project.env.environment(),
    })));
}

fn too_large(res: &mut Response, limit: u64) {
    error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!(
            "The request body is larger than this route accepts ({}).",
            crate::config::units::ByteSize(limit)
        ),
    );
}

/// A JSON error answer: `{"error": code, "message": text}`.
pub fn error(res: &mut Response, status: StatusCode, code: &str, message: &str) {
    res.status_code(status);
    res.render(Json(json!({"error": code, "message": message})));
}
