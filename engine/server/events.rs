//! The console's Events routes: the archive searched, one event shown, a replay offered with its
//! dry-run count and run in this instance as a job (cancel, resume), pages drawn by
//! [`crate::console::archive`]. A pipeline with `archive: off` (or an app without an archive)
//! shows the per-instance sample of recent requests instead.
//!
//! ```text
//! GET  /console/events?pipeline=P[&since&outcome&where]  -> search (newest 100)
//! GET  /console/events/show?pipeline=P&id=ID              -> story + redacted request
//! POST /console/events/replay-preview                     -> dry run: count + sample, nothing written
//! POST /console/events/replay                             -> job stored, run here -> /console/events/jobs
//! GET  /console/events/jobs; POST .../cancel, .../resume
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use salvo::http::{Method, StatusCode};
use salvo::prelude::*;

use super::App;
use super::answer::Stop;
use super::console::{Form, checked, form_of, html, not_found, problem, redirect};
use super::queueing::WiringError;
use crate::archive::replay::{Job, Runner};
use crate::archive::search::SearchError;
use crate::archive::{Filter, Store};
use crate::console::archive::{self as pages, Search};
use crate::console::session::Session;
use crate::console::{Console, recent};

/// Events listed on a search page.
const SHOWN: usize = 100;
/// The pace of a replay started from the console, events a second.
const RATE: u32 = 2000;

/// Who is asking: the signed-in session, its CSRF token and the client's address.
pub struct Visit<'a> {
    pub session: &'a Session,
    pub csrf: &'a str,
    pub client_ip: std::net::IpAddr,
}

/// Answer a path under `/console/events` for a signed-in session.
pub async fn serve(
    app: &App,
    console: &Console,
    visit: &Visit<'_>,
    path: &str,
    query: &HashMap<String, String>,
    req: &mut Request,
    res: &mut Response,
) -> Result<(), Stop> {
    let store = app.archive.as_ref();
    let csrf = visit.csrf;
    match (req.method().clone(), path) {
        (Method::GET, "/console/events") => match query.get("pipeline") {
            None => {
                let names: Vec<&str> = app
                    .project
                    .pipelines
                    .iter()
                    .map(|p| p.config.name.as_str())
                    .collect();
                html(
                    res,
                    StatusCode::OK,
                    crate::console::pages::event_index(&names, csrf),
                );
                Ok(())
            }
            Some(name) => events_of(app, name, query, csrf, res).await,
        },
        (Method::GET, "/console/events/show") => {
            let (Some(store), Some(name), Some(id)) =
                (store, query.get("pipeline"), query.get("id"))
            else {
                return not_found(res, csrf);
            };
            let Some(p) = pipeline(app, name) else {
                return not_found(res, csrf);
            };
            let stored = match store.show(name, id).await {
                Ok(Some(s)) => s,
                Ok(None) => return not_found(res, csrf),
                Err(e) => return Err(unavailable(res, &e.to_string())),
            };
            let keyring = super::queueing::keyring(&app.project).ok().flatten();
            let request = stored.event(keyring.as_ref()).map_err(|e| e.to_string());
            html(
                res,
                StatusCode::OK,
                pages::event(&stored, request, &p.config.redact, csrf),
            );
            Ok(())
        }
        (Method::GET, "/console/events/jobs") => {
            let Some(store) = store else {
                return not_found(res, csrf);
            };
            match store.jobs().list(None).await {
                Ok(jobs) => {
                    let now = app.clock.now_ms();
                    html(res, StatusCode::OK, pages::jobs(&jobs, now, csrf));
                    Ok(())
                }
                Err(e) => Err(unavailable(res, &e.to_string())),
            }
        }
        (Method::POST, action) => {
            let form = form_of(req, res).await?;
            checked(console, visit.session, &form, visit.client_ip, res)?;
            let Some(store) = store else {
                return not_found(res, csrf);
            };
            act(app, store, action, &form, csrf, res).await
        }
        _ => not_found(res, csrf),
    }
}

/// One pipeline's events: the archive searched by `query`, or (a pipeline the archive does not
/// keep) this instance's sample; its refused requests below either.
async fn events_of(
    app: &App,
    name: &str,
    query: &HashMap<String, String>,
    csrf: &str,
    res: &mut Response,
) -> Result<(), Stop> {
    let Some(p) = pipeline(app, name) else {
        return not_found(res, csrf);
    };
    let refused = app
        .console
        .as_ref()
        .map(|c| c.samples.recent.of(name, true))
        .unwrap_or_default();
    let shown_as = crate::console::pages::EventView {
        redact: &p.config.redact,
        kind: recent::kind_field(&p.config),
    };
    let (Some(store), Some(kept)) = (app.archive.as_ref(), p.config.archive.kept()) else {
        let samples = app
            .console
            .as_ref()
            .map(|c| c.samples.recent.of(name, false))
            .unwrap_or_default();
        let page = crate::console::pages::events(name, &samples, &refused, shown_as, csrf);
        html(res, StatusCode::OK, page);
        return Ok(());
    };
    let refused = crate::console::pages::refused_requests(&refused, shown_as);
    let search = search_of(query);
    let index: Vec<String> = kept.index.keys().cloned().collect();
    let found = match filter(app, &search) {
        Ok(f) => match (store.list(&f, SHOWN).await, store.count(&f).await) {
            (Ok(events), Ok(total)) => Ok((events, total)),
            (Err(e), _) | (_, Err(e)) => Err(format!("The archive did not answer: {e}")),
        },
        Err(e) => Err(e.to_string()),
    };
    html(
        res,
        StatusCode::OK,
        pages::events(&search, &index, found, refused, csrf),
    );
    Ok(())
}

/// The POST actions: preview, replay, cancel, resume.
async fn act(
    app: &App,
    store: &Arc<Store>,
    action: &str,
    form: &Form,
    csrf: &str,
    res: &mut Response,
) -> Result<(), Stop> {
    let search = Search {
        pipeline: form.first("pipeline").unwrap_or_default().to_string(),
        since: form.first("since").unwrap_or_default().to_string(),
        outcome: form.first("outcome").unwrap_or_default().to_string(),
        field: form.first("where").unwrap_or_default().to_string(),
    };
    match action {
        "/console/events/replay-preview" | "/console/events/replay" => {
            let f = filter(app, &search).map_err(|e| bad(res, &e.to_string()))?;
            let runner = runner(app, store, &search.pipeline)
                .map_err(|e| bad(res, &crate::diagnostics::chain(&e)))?;
            if action.ends_with("preview") {
                let (matched, sample) = runner
                    .dry_run(&f, 10, false)
                    .await
                    .map_err(|e| unavailable(res, &e.to_string()))?;
                html(
                    res,
                    StatusCode::OK,
                    pages::preview(&search, matched, &sample, csrf),
                );
                return Ok(());
            }
            let matched = store
                .count(&f)
                .await
                .map_err(|e| unavailable(res, &e.to_string()))?;
            let job = Job::new(f, matched, RATE, false);
            store
                .jobs()
                .create(&job)
                .await
                .map_err(|e| unavailable(res, &e.to_string()))?;
            tracing::info!(action = "replay", pipeline = %job.pipeline, job = %job.id, matched, "console: archived events replayed");
            spawn(runner, job);
            redirect(res, "/console/events/jobs")
        }
        "/console/events/cancel" => {
            let id = form.first("job").unwrap_or_default();
            let _ = store.jobs().cancel(id).await;
            tracing::info!(action = "cancel", job = %id, "console: replay cancelled");
            redirect(res, "/console/events/jobs")
        }
        "/console/events/resume" => {
            let id = form.first("job").unwrap_or_default();
            let job = match store.jobs().claim(id).await {
                Ok(Ok(job)) => job,
                Ok(Err(why)) => return Err(bad(res, &why.to_string())),
                Err(e) => return Err(unavailable(res, &e.to_string())),
            };
            let runner = runner(app, store, &job.pipeline)
                .map_err(|e| bad(res, &crate::diagnostics::chain(&e)))?;
            tracing::info!(action = "resume", job = %id, "console: replay resumed");
            spawn(runner, job);
            redirect(res, "/console/events/jobs")
        }
        _ => not_found(res, csrf),
    }
}

fn pipeline<'a>(app: &'a App, name: &str) -> Option<&'a crate::config::LoadedPipeline> {
    app.project.pipelines.iter().find(|p| p.config.name == name)
}

fn search_of(query: &HashMap<String, String>) -> Search {
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    Search {
        pipeline: get("pipeline"),
        since: get("since"),
        outcome: get("outcome"),
        field: get("where"),
    }
}

/// The archive filter a search names.
fn filter(app: &App, s: &Search) -> Result<Filter, SearchError> {
    let p =
        pipeline(app, &s.pipeline).ok_or_else(|| SearchError::NoPipeline(s.pipeline.clone()))?;
    let list: Vec<String> = (!s.field.trim().is_empty())
        .then(|| s.field.trim().to_string())
        .into_iter()
        .collect();
    crate::archive::search::filter(
        &p.config,
        Some(&s.since),
        None,
        Some(&s.outcome),
        &list,
        None,
    )
}

/// A replay runner for `name` in this instance: its live program, its sinks built to overwrite.
fn runner(app: &App, store: &Arc<Store>, name: &str) -> Result<Runner, WiringError> {
    let (i, p) = app
        .project
        .pipelines
        .iter()
        .enumerate()
        .find(|(_, p)| p.config.name == name)
        .ok_or_else(|| WiringError::NoPipeline(name.to_string()))?;
    let program = app.routes[i]
        .queued
        .as_ref()
        .map(|q| q.worker.program.clone())
        .ok_or_else(|| WiringError::NoTransform(name.to_string()))?;
    super::queueing::replay_runner(&app.project, &p.config, program, app.pool.as_ref(), store)
}

/// Take over the replay jobs whose process stopped (running or cancelling, no heartbeat for
/// [`crate::archive::replay::STALE`]) for this app's pipelines, and run them here from their
/// cursor: a replay started by `engine events replay` or another instance survives its
/// process. Claiming is one conditional update, so two instances never run the same job.
pub async fn adopt_stopped_replays(app: &App) {
    let Some(store) = &app.archive else {
        return;
    };
    let Ok(jobs) = store.jobs().list(None).await else {
        return;
    };
    let now = chrono::Utc::now().timestamp_millis();
    for job in jobs {
        let stopped = matches!(
            job.status,
            crate::archive::replay::Status::Running | crate::archive::replay::Status::Cancelling
        ) && now - job.heartbeat_at_ms
            > crate::archive::replay::STALE.as_millis() as i64;
        if !stopped || pipeline(app, &job.pipeline).is_none() {
            continue;
        }
        let Ok(Ok(job)) = store.jobs().claim(&job.id).await else {
            continue;
        };
        match runner(app, store, &job.pipeline) {
            Ok(runner) => {
                tracing::warn!(job = %job.id, pipeline = %job.pipeline, done = job.done, matched = job.matched,
                    "replay job whose process stopped: taken over, going on from its cursor");
                spawn(runner, job);
            }
            Err(e) => {
                let e = &e as &dyn std::error::Error;
                tracing::error!(job = %job.id, error = e, "replay job cannot be taken over")
            }
        }
    }
}

/// Run a replay job in this instance; its end is logged.
fn spawn(runner: Runner, mut job: Job) {
    tokio::spawn(async move {
        let result = runner.run(&mut job, &|_| {}).await;
        if let Err(e) = &result {
            job.status = crate::archive::replay::Status::Failed;
            job.error = Some(e.to_string());
            let _ = runner.store.jobs().progress(&job).await;
        }
        tracing::info!(job = %job.id, status = job.status.as_str(), done = job.done,
            written = job.counts.written, unchanged = job.counts.unchanged,
            failed = job.counts.failed, "replay finished");
    });
}

fn bad(res: &mut Response, why: &str) -> Stop {
    problem(res, StatusCode::BAD_REQUEST, why)
}

fn unavailable(res: &mut Response, why: &str) -> Stop {
    problem(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("The archive did not answer: {why}"),
    )
}
