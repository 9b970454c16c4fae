//! The engine's own routes: `/health` (liveness, never in maintenance), `/ready` (Redis and
//! Postgres answer) and `/metrics` (Prometheus text behind METRICS_TOKEN), answered before the
//! route table; each counted against the default rate limit unless exempt, GET or HEAD only.

use salvo::http::header::CONTENT_TYPE;
use salvo::http::{HeaderValue, Method, StatusCode};
use salvo::prelude::*;
use serde_json::json;

use super::App;
use super::answer::{ErrorAnswer, Stop};
use super::incoming::Incoming;
use super::limit::check_rate;
use crate::config::Project;

/// Answer an own path (`health`, `ready` or `metrics`).
pub async fn serve(app: &App, own: &str, req: &Request, res: &mut Response) -> Result<(), Stop> {
    let incoming = Incoming::new(app, req, bytes::Bytes::new());
    check_rate(app, app.health_rule.as_ref(), &incoming, &[], res).await?;
    only_get(req, res)?;
    match own {
        "health" => health(&app.project, &app.clock, res),
        "ready" => ready(app, res).await,
        _ => metrics_text(app, req, res),
    }
    Ok(())
}

/// The engine's own paths: `/health`, `/ready`, `/metrics`.
pub fn own_path(path: &str) -> Option<&'static str> {
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
    Err(ErrorAnswer::MethodNotAllowed { allow: "GET, HEAD" }.write(res))
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
/// Logged when the answer changes, not per probe: a load balancer asks every few seconds, and
/// an outage was a WARN line per probe.
async fn ready(app: &App, res: &mut Response) {
    let (ok, body) = app.ready.run().await;
    // what is down, by name: its error's wording may change from one probe to the next
    let down = (!ok).then(|| {
        body["checks"]
            .as_object()
            .map(|c| {
                c.iter()
                    .filter(|(_, v)| v.as_str() != Some("ok"))
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    });
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if *said != down {
        match &down {
            Some(_) => tracing::warn!(checks = %body["checks"], "not ready"),
            None => tracing::info!("ready again"),
        }
        *said = down;
    }
    drop(said);
    if !ok {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
    }
    res.render(Json(body));
}

/// The names of the failing checks `/ready` last logged (`None`: ready), one per process.
static SAID: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// `/metrics`: Prometheus text, behind METRICS_TOKEN (open in development without one).
fn metrics_text(app: &App, req: &Request, res: &mut Response) {
    use crate::ops::metrics::{Access, allowed, render};
    let authorization = req
        .headers()
        .get(salvo::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match allowed(
        app.metrics_token.as_ref().map(|t| t.expose()),
        app.project.env.is_production(),
        authorization,
    ) {
        Access::Unauthorized => {
            ErrorAnswer::Unauthorized {
                message: "Metrics need Authorization: Bearer <METRICS_TOKEN>.",
                challenge: Some("Bearer"),
            }
            .write(res);
        }
        Access::Disabled => {
            ErrorAnswer::NotFound("Metrics are off in production until METRICS_TOKEN is set.")
                .write(res);
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
                ErrorAnswer::Unavailable("Another metrics recorder is installed in this process.")
                    .write(res);
            }
        },
    }
}
