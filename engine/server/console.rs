//! The operator console's HTTP side: routes under `/console`, sign-in, sessions checked, forms
//! read, CSRF checked, actions run on the queues and logged, pages answered. What it draws and
//! keeps lives in [`crate::console`].

use std::collections::HashMap;
use std::net::IpAddr;

use bytes::Bytes;
use salvo::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use salvo::http::{HeaderValue, Method, StatusCode};
use salvo::prelude::*;

use super::App;
use super::answer::{ErrorAnswer, Stop};
use super::incoming::Incoming;
use super::limit::check_rate;
use crate::console::archive::encode;
use crate::console::session::{self, Session};
use crate::console::{Console, DEAD_LETTERS_SHOWN, QueueRow, pages};
use crate::queue::Queue;

/// Largest form a console POST may send.
const FORM_LIMIT: usize = 256 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Answer a console path (the caller checked [`crate::route::is_console_path`]).
pub async fn serve(app: &App, req: &mut Request, res: &mut Response) -> Result<(), Stop> {
    let Some(console) = &app.console else {
        return Err(ErrorAnswer::NotFound("No route for this path.").write(res));
    };
    protect(res);
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let now_ms = app.clock.now_ms();
    if let Some(answered) = without_session(app, console, &method, &path, req, res, now_ms).await {
        return answered;
    }
    let client_ip = client_ip(app, req);
    let Some(session) = signed_in(console, req, now_ms).await else {
        if path.starts_with("/console/api/") {
            let answer = ErrorAnswer::Unauthorized {
                message: "Sign in to the console first.",
                challenge: None,
            };
            return Err(answer.write(res));
        }
        return redirect(res, "/console/login");
    };
    let csrf = console.keys.csrf(&session);
    let query = query_of(req);
    let pipeline = query.get("pipeline").cloned();
    match (method, path.as_str()) {
        (Method::GET, "/console" | "/console/") => redirect(res, "/console/pipelines"),
        (Method::GET, "/console/pipelines") => {
            let queues: Vec<Option<(&str, &crate::config::queue::QueueConfig)>> = app
                .routes
                .iter()
                .map(|r| r.queued.as_ref().map(|q| (q.handle.name(), &q.config)))
                .collect();
            let page = pages::pipelines(&app.project, &queues, app.built_at_ms, &csrf);
            html(res, StatusCode::OK, page);
            Ok(())
        }
        (Method::GET, "/console/traffic") => {
            let now = now_ms.div_euclid(1000);
            let series = console.samples.traffic.snapshot(&names(app), now);
            html(res, StatusCode::OK, pages::traffic(&series, &csrf));
            Ok(())
        }
        (Method::GET, "/console/api/traffic") => {
            let now = now_ms.div_euclid(1000);
            let series = console.samples.traffic.snapshot(&names(app), now);
            res.render(Json(serde_json::json!({ "now": now, "pipelines": series })));
            Ok(())
        }
        (Method::GET, "/console/queues") => {
            let rows = queue_rows(app).await;
            html(res, StatusCode::OK, pages::queues(&rows, &csrf));
            Ok(())
        }
        (Method::GET, "/console/dead-letters") => match pipeline {
            None => {
                let rows = queue_rows(app).await;
                html(res, StatusCode::OK, pages::dead_letter_index(&rows, &csrf));
                Ok(())
            }
            Some(name) => {
                let done = query.get("done").map(String::as_str);
                dead_letters_page(app, &name, done, &csrf, res).await
            }
        },
        (_, p) if p == "/console/events" || p.starts_with("/console/events/") => {
            let visit = super::events::Visit {
                session: &session,
                csrf: &csrf,
                client_ip,
            };
            super::events::serve(app, console, &visit, p, &query, req, res).await
        }
        (Method::POST, "/console/logout") => {
            let form = form_of(req, res).await?;
            checked(console, &session, &form, client_ip, res)?;
            sign_out(console, &session, &form, client_ip, now_ms, res).await
        }
        (Method::POST, "/console/dead-letters/replay" | "/console/dead-letters/purge") => {
            let form = form_of(req, res).await?;
            checked(console, &session, &form, client_ip, res)?;
            let replay = path.ends_with("/replay");
            act_on_dead_letters(app, &form, replay, res).await
        }
        (Method::GET | Method::HEAD | Method::POST, _) => not_found(res, &csrf),
        _ => Err(problem(
            res,
            StatusCode::METHOD_NOT_ALLOWED,
            "This console page does not accept this method.",
        )),
    }
}

/// The paths open without a session: the assets and the sign-in page and form; `None` for
/// every other path.
async fn without_session(
    app: &App,
    console: &Console,
    method: &Method,
    path: &str,
    req: &mut Request,
    res: &mut Response,
    now_ms: i64,
) -> Option<Result<(), Stop>> {
    Some(match (method.clone(), path) {
        (Method::GET, "/console/assets/console.js") => {
            asset(res, "text/javascript; charset=utf-8", pages::SCRIPT)
        }
        (Method::GET, "/console/assets/console.css") => {
            asset(res, "text/css; charset=utf-8", pages::STYLE)
        }
        (Method::GET, "/console/assets/favicon.svg") => asset(res, "image/svg+xml", pages::FAVICON),
        (Method::GET, "/console/login") => {
            let done = req.query::<String>("done");
            let note = (done.as_deref() == Some("signed-out")).then_some("Signed out.");
            html(res, StatusCode::OK, pages::login(None, note));
            Ok(())
        }
        (Method::POST, "/console/login") => login(app, console, req, res, now_ms).await,
        _ => return None,
    })
}

/// One queued pipeline's dead letters (`done`: what the last action did, for its banner).
async fn dead_letters_page(
    app: &App,
    name: &str,
    done: Option<&str>,
    csrf: &str,
    res: &mut Response,
) -> Result<(), Stop> {
    let Some((config, queue)) = queue_of(app, name) else {
        return not_found(res, csrf);
    };
    let shown_as = pages::EventView {
        redact: &config.redact,
        kind: crate::console::recent::kind_field(config),
    };
    let view = match queue.dead_letters(DEAD_LETTERS_SHOWN).await {
        Ok(letters) => {
            let total = queue.stats().await.map(|s| s.dead).ok();
            Ok(pages::DeadLetters {
                pipeline: name,
                letters,
                total,
                shown_as,
                done,
            })
        }
        Err(e) => Err(e.to_string()),
    };
    html(res, StatusCode::OK, pages::dead_letters(name, view, csrf));
    Ok(())
}

/// End this session (`scope=everywhere`: every session), on every instance sharing the Redis,
/// then back to the sign-in page.
async fn sign_out(
    console: &Console,
    session: &Session,
    form: &Form,
    client_ip: IpAddr,
    now_ms: i64,
    res: &mut Response,
) -> Result<(), Stop> {
    let everywhere = form.first("scope") == Some("everywhere");
    let shared = if everywhere {
        console.revoked.revoke_all(now_ms).await
    } else {
        console.revoked.revoke(session, now_ms).await
    };
    let action = if everywhere {
        "logout-everywhere"
    } else {
        "logout"
    };
    tracing::info!(action, %client_ip, shared, "console: signed out");
    set_header(res, SET_COOKIE, &session::clear_cookie());
    redirect(res, "/console/login?done=signed-out")
}

/// The configured pipelines' names, in file order.
fn names(app: &App) -> Vec<&str> {
    app.project
        .pipelines
        .iter()
        .map(|p| p.config.name.as_str())
        .collect()
}

/// A queued pipeline's index and queue.
fn queue_of<'a>(app: &'a App, name: &str) -> Option<(&'a crate::config::Pipeline, &'a Queue)> {
    app.routes
        .iter()
        .find(|r| r.config.name == name)
        .and_then(|r| Some((&*r.config, &r.queued.as_ref()?.handle)))
}

async fn queue_rows(app: &App) -> Vec<QueueRow> {
    let mut rows = Vec::new();
    for route in &app.routes {
        let Some(q) = &route.queued else { continue };
        let backend = match &q.handle {
            Queue::Redis(_) => "redis",
            Queue::Memory(_) => "in-process",
        };
        rows.push(QueueRow {
            pipeline: route.config.name.clone(),
            queue: q.handle.name().to_string(),
            backend,
            stats: q
                .handle
                .stats()
                .await
                .map_err(|e| crate::diagnostics::chain(&e)),
            per_instance: q.config.concurrency,
            instances: q.handle.instances_reading().await.ok().flatten(),
        });
    }
    rows
}

/// Replay or purge the dead letters a form names (`id`, repeated) or all of them (`all`).
async fn act_on_dead_letters(
    app: &App,
    form: &Form,
    replay: bool,
    res: &mut Response,
) -> Result<(), Stop> {
    let name = form.first("pipeline").unwrap_or_default().to_string();
    let Some((_, queue)) = queue_of(app, &name) else {
        return Err(problem(
            res,
            StatusCode::NOT_FOUND,
            "No queued pipeline of that name.",
        ));
    };
    let all = form.first("all") == Some("1");
    // an empty list means "all" to the queue: only pass one when the operator asked for all
    let ids: Vec<String> = match all {
        true => Vec::new(),
        false => form.all("id").map(str::to_string).collect(),
    };
    if !all && ids.is_empty() {
        let back = format!("/console/dead-letters?pipeline={}&done=none", encode(&name));
        return redirect(res, &back);
    }
    let (action, done, result) = if replay {
        ("replay", "replayed", queue.replay_dead(&ids).await)
    } else {
        ("purge", "purged", queue.purge_dead(&ids).await)
    };
    match result {
        Ok(n) => {
            tracing::info!(action, pipeline = %name, count = n, all, "console: dead letters {done}");
            let back = format!(
                "/console/dead-letters?pipeline={}&done={done}-{n}",
                encode(&name)
            );
            redirect(res, &back)
        }
        Err(e) => {
            tracing::error!(action, pipeline = %name, error = &e as &dyn std::error::Error, "console: dead-letter action failed");
            Err(problem(
                res,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "The queue did not answer: {}",
                    crate::diagnostics::chain(&e)
                ),
            ))
        }
    }
}

/// The login form's answer: a session cookie for the right token, 401 otherwise; each attempt
/// counts against the per-IP login limit first.
async fn login(
    app: &App,
    console: &Console,
    req: &mut Request,
    res: &mut Response,
    now_ms: i64,
) -> Result<(), Stop> {
    let form = form_of(req, res).await?;
    let incoming = Incoming::new(app, req, Bytes::new());
    if check_rate(app, Some(&console.login), &incoming, &[], res)
        .await
        .is_err()
    {
        tracing::warn!(client_ip = %incoming.client_ip, "console: too many sign-in attempts");
        // the limiter wrote its JSON answer and its headers (Retry-After, RateLimit-*): the
        // headers stay, the answer becomes the sign-in page saying the same
        let wait = res
            .headers()
            .get(salvo::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(60);
        res.headers_mut().remove(CONTENT_TYPE);
        let message = format!(
            "Too many attempts from this address. Try again in {wait} second{}.",
            if wait == 1 { "" } else { "s" }
        );
        html(
            res,
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(&message), None),
        );
        return Err(Stop);
    }
    let token = form.first("token").unwrap_or_default();
    if !console.keys.token_matches(token) {
        tracing::warn!(client_ip = %incoming.client_ip, "console: sign-in refused (wrong token)");
        html(
            res,
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the console token."), None),
        );
        return Err(Stop);
    }
    let (_, cookie) = console.keys.open(now_ms);
    tracing::info!(client_ip = %incoming.client_ip, action = "login", "console: signed in");
    set_header(res, SET_COOKIE, &session::set_cookie(&cookie));
    redirect(res, "/console/pipelines")
}

/// The request's session: a valid cookie of a session not signed out (here or on any instance).
async fn signed_in(console: &Console, req: &Request, now_ms: i64) -> Option<Session> {
    let session = session_of(console, req, now_ms)?;
    (!console.revoked.contains(&session).await).then_some(session)
}

fn session_of(console: &Console, req: &Request, now_ms: i64) -> Option<Session> {
    let cookie = crate::request_field::cookie(req.headers(), session::COOKIE)?;
    console.keys.check(cookie, now_ms)
}

/// 403 unless the form carries the session's CSRF token.
pub(super) fn checked(
    console: &Console,
    session: &Session,
    form: &Form,
    client_ip: IpAddr,
    res: &mut Response,
) -> Result<(), Stop> {
    if console
        .keys
        .csrf_matches(session, form.first("csrf").unwrap_or_default())
    {
        return Ok(());
    }
    tracing::warn!(%client_ip, "console: a state change without this session's CSRF token was refused");
    Err(problem(
        res,
        StatusCode::FORBIDDEN,
        "This form was not sent from this session's page (its CSRF token is missing or not this session's). Reload the page and try again.",
    ))
}

/// The address the request came from, as the trusted proxies say.
fn client_ip(app: &App, req: &Request) -> IpAddr {
    let peer = req
        .remote_addr()
        .ip()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    app.proxies.client_ip(peer, req.headers())
}

/// A console page saying what went wrong: the browser shows a page, never raw JSON (the
/// console's JSON API answers JSON).
pub(super) fn problem(res: &mut Response, status: StatusCode, message: &str) -> Stop {
    html(res, status, pages::problem(status, message));
    Stop
}

/// A posted urlencoded form: every value of every field.
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    pub fn first(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) async fn form_of(req: &mut Request, res: &mut Response) -> Result<Form, Stop> {
    match req.payload_with_max_size(FORM_LIMIT).await {
        Ok(body) => Ok(Form::parse(body)),
        Err(_) => Err(problem(
            res,
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form is too large.",
        )),
    }
}

fn query_of(req: &Request) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Headers on every console answer.
fn protect(res: &mut Response) {
    set_header(res, "content-security-policy", CSP);
    set_header(res, CACHE_CONTROL, "no-store");
    set_header(res, "x-frame-options", "DENY");
    set_header(res, "x-content-type-options", "nosniff");
    set_header(res, "referrer-policy", "same-origin");
}

fn set_header<K: salvo::http::header::IntoHeaderName>(res: &mut Response, name: K, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        res.headers_mut().append(name, v);
    }
}

/// Answer `page`: its content type and body replace whatever an earlier step wrote.
pub(super) fn html(res: &mut Response, status: StatusCode, page: maud::Markup) {
    res.status_code(status);
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.body(page.into_string());
}

fn asset(res: &mut Response, content_type: &str, text: &'static str) -> Result<(), Stop> {
    set_header(res, CONTENT_TYPE, content_type);
    let _ = res.write_body(text);
    Ok(())
}

pub(super) fn redirect(res: &mut Response, to: &str) -> Result<(), Stop> {
    res.status_code(StatusCode::SEE_OTHER);
    set_header(res, LOCATION, to);
    Ok(())
}

pub(super) fn not_found(res: &mut Response, csrf: &str) -> Result<(), Stop> {
    html(res, StatusCode::NOT_FOUND, pages::not_found(csrf));
    Err(Stop)
}
