//! The routes of an `oauth` pipeline (its start path and its callback): after maintenance and
//! its rate limit, [`crate::oauth::Flow`] decides; browsers get a redirect or a short HTML page,
//! `Accept: application/json` callers of the start route JSON.

use salvo::http::{HeaderValue, StatusCode};
use salvo::prelude::*;

use super::App;
use super::answer::{ErrorAnswer, unavailable};

/// An OAuth pipeline: the start route or the callback (its `route`). Browsers get a redirect or
/// a short HTML page; `Accept: application/json` callers of the start route get JSON.
pub async fn answer(
    app: &App,
    route: &super::route::Route,
    flow: &Result<crate::oauth::Flow, crate::oauth::FlowSetupError>,
    req: &Request,
    res: &mut Response,
) {
    use crate::oauth::{FlowAnswer, FlowRefusal};
    let flow = match flow {
        Ok(f) => f,
        Err(why) => {
            unavailable(res, &crate::diagnostics::chain(why));
            return;
        }
    };
    let config = &route.config;
    let cfg = config.oauth.as_ref();
    // the route table answered this path as the start's or the callback's, with a trailing
    // slash and letter case as the route allows: compare the same way
    let is_start = cfg.is_some_and(|o| {
        let (a, b) = (
            o.start.path.trim_end_matches('/'),
            req.uri().path().trim_end_matches('/'),
        );
        a == b || (!config.route.case_sensitive && a.eq_ignore_ascii_case(b))
    });
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
        match flow.start(authorization, query, wants_json, now) {
            Ok((answer, cookie)) => {
                set_cookie(res, &flow.set_cookie(&cookie));
                answer
            }
            Err(refused) => refused,
        }
    } else {
        let cookie = crate::request_field::cookie(req.headers(), flow.cookie_name());
        let answer = flow.callback(query, cookie, now).await;
        set_cookie(res, &flow.clear_cookie());
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
        FlowAnswer::Redirect(url) => {
            res.status_code(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&url) {
                res.headers_mut().insert(salvo::http::header::LOCATION, v);
            }
        }
        FlowAnswer::Json(v) => res.render(Json(v)),
        FlowAnswer::Refused(why, text) => {
            let answer = match why {
                FlowRefusal::Unauthorized => ErrorAnswer::Unauthorized {
                    message: &text,
                    challenge: None,
                },
                FlowRefusal::Forbidden => ErrorAnswer::Forbidden(&text),
                FlowRefusal::Unavailable => ErrorAnswer::Unavailable(&text),
                FlowRefusal::InvalidState => ErrorAnswer::InvalidState(&text),
                FlowRefusal::TokenExchangeFailed => ErrorAnswer::TokenExchangeFailed(&text),
            };
            let status = answer.status();
            if is_start || wants_json {
                answer.write(res);
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

fn set_cookie(res: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().append(salvo::http::header::SET_COOKIE, v);
    }
}
