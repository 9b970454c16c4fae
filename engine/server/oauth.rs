//! The routes of an `oauth` pipeline (its start path and its callback): after maintenance and
//! its rate limit, [`crate::oauth::Flow`] decides; browsers get a redirect or a short HTML page,
//! `Accept: application/json` callers of the start route JSON.

use salvo::http::{HeaderValue, StatusCode};
use salvo::prelude::*;

use super::App;
use super::answer::error;

/// An OAuth pipeline: the start route or the callback (its `route`). Browsers get a redirect or
/// a short HTML page; `Accept: application/json` callers of the start route get JSON.
pub async fn answer(
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
        let (answer, cookie) = flow.start(authorization, query, wants_json, now);
        if let (Some(value), Some(o)) = (cookie, cfg) {
            // scoped to the callback: sent back only there, with the provider's redirect
            set_cookie(
                res,
                &crate::oauth::browser_cookie(&o_name(app, pipeline)),
                &value,
                &o_callback(app, pipeline),
                o.state_ttl.0.as_secs(),
            );
        }
        answer
    } else {
        let name = crate::oauth::browser_cookie(&o_name(app, pipeline));
        let cookie = cookie_value(req, &name);
        let answer = flow.callback(query, cookie.as_deref(), now).await;
        // spent or refused, the flow is over for this browser
        set_cookie(res, &name, "", &o_callback(app, pipeline), 0);
        answer
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

fn o_name(app: &App, pipeline: usize) -> String {
    app.project.pipelines[pipeline].config.name.clone()
}

fn o_callback(app: &App, pipeline: usize) -> String {
    app.project.pipelines[pipeline].config.route.path.clone()
}

/// `Set-Cookie` for the flow's browser binding: HttpOnly (no script reads it), Secure (browsers
/// keep it on https, and on http://localhost in development), SameSite=Lax (the provider's
/// top-level redirect back carries it; no cross-site subrequest does).
fn set_cookie(res: &mut Response, name: &str, value: &str, path: &str, max_age: u64) {
    let cookie =
        format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().append(salvo::http::header::SET_COOKIE, v);
    }
}

/// The value of cookie `name` in the request.
fn cookie_value(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get_all(salvo::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}
