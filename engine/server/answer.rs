//! The answers every part of the request path writes: a JSON error, 413, a computed reply.
//! [`Stop`] means "answered already": a step returns `Err(Stop)` and the path ends there.

use salvo::http::header::CONTENT_TYPE;
use salvo::http::{HeaderName, HeaderValue, StatusCode};
use salvo::prelude::*;
use serde_json::json;

use crate::respond::Reply;

/// An early answer has been written to the response: stop here.
pub struct Stop;

/// Send a computed reply.
pub fn send(r: &Reply, res: &mut Response) {
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

pub fn too_large(res: &mut Response, limit: u64) -> Stop {
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
pub fn error(res: &mut Response, status: StatusCode, code: &str, message: &str) -> Stop {
    res.status_code(status);
    res.render(Json(json!({"error": code, "message": message})));
    Stop
}

/// How long a client is told to wait before retrying an answer of [`unavailable`].
pub const RETRY_AFTER_SECS: u32 = 5;

/// 503 `unavailable` with `Retry-After`: a dependency (the queue, the rate limiter's store, the
/// tenant secrets) cannot serve this request now, and the provider should retry it.
pub fn unavailable(res: &mut Response, message: &str) -> Stop {
    res.headers_mut().insert(
        salvo::http::header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER_SECS),
    );
    error(res, StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

/// Every answer outside the console is sandboxed: a browser shown a webhook answer (a payload
/// reflected into HTML by a template, a JSON error) treats it as an origin of its own with no
/// scripts, so nothing in it can read the console's pages or use its cookie, though both share
/// this host and port. Styles inline stay allowed for the OAuth pages.
pub(super) fn sandbox(res: &mut Response) {
    const CSP: &str =
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";
    let h = res.headers_mut();
    h.insert(
        salvo::http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        salvo::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}
