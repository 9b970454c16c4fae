//! CORS: the answers a browser page on an allowed origin (`CORS_ORIGIN`, settings'
//! `cors.allow_origins`) needs to call the engine, and nothing for any other origin.
//!
//! ```text
//! request with Origin ─ allowed? ── yes ─> salvo's Cors: Allow-Origin (+ credentials for a named
//!                      │                   origin); a preflight answered 204 with methods,
//!                      │                   headers and max-age
//!                      └─ no ─────> no CORS header at all (`Vary: Origin` only, so a cache keeps
//!                                   the answers apart); a preflight answered 204 without grants
//! request without Origin ─────────> untouched
//! ```
//!
//! salvo's handler alone sends `access-control-allow-methods`, `-max-age` and `-credentials` to
//! a refused origin's preflight too: harmless to a browser (no Allow-Origin), but it tells a
//! prober what the engine would grant, and docs/pipelines.md promises nothing.

use salvo::cors::{AllowHeaders, AllowOrigin, CorsHandler};
use salvo::http::header::{ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY};
use salvo::http::{HeaderValue, Method, StatusCode};
use salvo::prelude::*;

/// The CORS hoop for the configured origins.
pub(super) struct Cors {
    inner: CorsHandler,
    /// `None`: every origin (`*`).
    origins: Option<Vec<HeaderValue>>,
}

impl Cors {
    /// `None` when no origin is allowed: no cross-origin calls, no hoop.
    pub(super) fn new(origins: &[String]) -> Option<Cors> {
        if origins.is_empty() {
            return None;
        }
        let any = origins.iter().any(|o| o == "*");
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        let allow = if any {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(list.clone())
        };
        // named origins may send credentials: the web app's `fetch(start, {credentials:
        // "include"})` keeps the OAuth flow's browser cookie (never with `*`, which browsers
        // refuse to combine)
        let inner = salvo::cors::Cors::new()
            .allow_origin(allow)
            .allow_credentials(!any)
            .allow_methods(vec![
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(AllowHeaders::mirror_request())
            .max_age(600)
            .into_handler();
        Some(Cors {
            inner,
            origins: (!any).then_some(list),
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.origins
            .as_ref()
            .is_none_or(|list| list.iter().any(|o| o == origin))
    }
}

#[async_trait]
impl Handler for Cors {
    async fn handle(
        &self,
        req: &mut Request,
        depot: &mut Depot,
        res: &mut Response,
        ctrl: &mut FlowCtrl,
    ) {
        let Some(origin) = req.headers().get(ORIGIN) else {
            return;
        };
        if self.allows(origin) {
            return self.inner.handle(req, depot, res, ctrl).await;
        }
        res.headers_mut()
            .append(VARY, HeaderValue::from_static("origin"));
        if req.method() == Method::OPTIONS
            && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            res.status_code(StatusCode::NO_CONTENT);
            ctrl.skip_rest();
        }
    }
}
