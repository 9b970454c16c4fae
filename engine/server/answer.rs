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

/// How long a client is told to wait before retrying an [`ErrorAnswer::Unavailable`].
pub const RETRY_AFTER_SECS: u32 = 5;

/// Every JSON error the engine answers with (`{"error": code, "message": text}`): its status,
/// code and headers are decided here and nowhere else, and docs/operations.md's table of
/// answers is checked against [`ErrorAnswer::catalogue`] by a test. (The console's pages answer
/// people with HTML pages of their own; its API's refusals are these.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAnswer<'a> {
    /// 404 `not_found`: no route for the path, or a part that is off (metrics in production
    /// without `METRICS_TOKEN`, the console without `CONSOLE_TOKEN`).
    NotFound(&'a str),
    /// 405 `method_not_allowed`, with `Allow` naming the methods the path takes.
    MethodNotAllowed { allow: &'a str },
    /// 400 `bad_request`: the body could not be read.
    BadBody,
    /// 408 `request_timeout`, with `Connection: close`: the body did not arrive within
    /// `timeouts.body_secs`.
    BodyTimeout,
    /// 413 `payload_too_large`: the body is over the route's `max_body`.
    TooLarge { limit: u64 },
    /// 401 `unauthorized`: verification failed, or a sign-in is missing or wrong; `challenge`
    /// is the `WWW-Authenticate` value when there is one.
    Unauthorized {
        message: &'a str,
        challenge: Option<&'static str>,
    },
    /// 403 `forbidden`: signed in, but not for this (an OAuth start for another organisation).
    Forbidden(&'a str),
    /// 429 `rate_limited`, with `Retry-After` (the `RateLimit-*` headers are set beside it).
    RateLimited { retry_after: u64 },
    /// 503 `maintenance`, with the configured `Retry-After`: maintenance mode is on.
    Maintenance { message: &'a str, retry_after: u32 },
    /// 503 `unavailable`, with `Retry-After: 5`: a dependency (the queue, the rate limiter's
    /// store, the tenant secrets, a database) cannot serve this request now; retry it.
    Unavailable(&'a str),
    /// 400 `invalid_state`: an OAuth callback whose `state` is missing, expired or not ours.
    InvalidState(&'a str),
    /// 502 `token_exchange_failed`: the OAuth provider did not give tokens for the code.
    TokenExchangeFailed(&'a str),
    /// 500 `respond_failed`: a `respond` template or script failed or ran out of time and the
    /// pipeline sets no `fallback` (`respond::Responder::fallback` writes this body; a test
    /// holds the two together).
    RespondFailed,
}

impl ErrorAnswer<'_> {
    pub fn status(&self) -> StatusCode {
        match self {
            ErrorAnswer::NotFound(_) => StatusCode::NOT_FOUND,
            ErrorAnswer::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ErrorAnswer::BadBody | ErrorAnswer::InvalidState(_) => StatusCode::BAD_REQUEST,
            ErrorAnswer::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorAnswer::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorAnswer::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ErrorAnswer::Forbidden(_) => StatusCode::FORBIDDEN,
            ErrorAnswer::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ErrorAnswer::Maintenance { .. } | ErrorAnswer::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorAnswer::TokenExchangeFailed(_) => StatusCode::BAD_GATEWAY,
            ErrorAnswer::RespondFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorAnswer::NotFound(_) => "not_found",
            ErrorAnswer::MethodNotAllowed { .. } => "method_not_allowed",
            ErrorAnswer::BadBody => "bad_request",
            ErrorAnswer::BodyTimeout => "request_timeout",
            ErrorAnswer::TooLarge { .. } => "payload_too_large",
            ErrorAnswer::Unauthorized { .. } => "unauthorized",
            ErrorAnswer::Forbidden(_) => "forbidden",
            ErrorAnswer::RateLimited { .. } => "rate_limited",
            ErrorAnswer::Maintenance { .. } => "maintenance",
            ErrorAnswer::Unavailable(_) => "unavailable",
            ErrorAnswer::InvalidState(_) => "invalid_state",
            ErrorAnswer::TokenExchangeFailed(_) => "token_exchange_failed",
            ErrorAnswer::RespondFailed => "respond_failed",
        }
    }

    /// The `message` field.
    pub fn message(&self) -> String {
        match self {
            ErrorAnswer::MethodNotAllowed { .. } => {
                "This route does not accept this method.".into()
            }
            ErrorAnswer::BadBody => "The request body could not be read.".into(),
            ErrorAnswer::BodyTimeout => "The request body was not received in time.".into(),
            ErrorAnswer::RespondFailed => "The response could not be computed.".into(),
            ErrorAnswer::TooLarge { limit } => format!(
                "The request body is larger than this route accepts ({}).",
                crate::config::units::ByteSize(*limit)
            ),
            ErrorAnswer::RateLimited { retry_after } => {
                format!("Too many requests. Retry after {retry_after} seconds.")
            }
            ErrorAnswer::NotFound(m)
            | ErrorAnswer::Unauthorized { message: m, .. }
            | ErrorAnswer::Forbidden(m)
            | ErrorAnswer::Maintenance { message: m, .. }
            | ErrorAnswer::Unavailable(m)
            | ErrorAnswer::InvalidState(m)
            | ErrorAnswer::TokenExchangeFailed(m) => (*m).to_string(),
        }
    }

    /// The headers that go with it.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        use salvo::http::header::{ALLOW, CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
        match self {
            ErrorAnswer::MethodNotAllowed { allow } => HeaderValue::from_str(allow)
                .map(|v| vec![(ALLOW, v)])
                .unwrap_or_default(),
            ErrorAnswer::BodyTimeout => vec![(CONNECTION, HeaderValue::from_static("close"))],
            ErrorAnswer::Unauthorized {
                challenge: Some(c), ..
            } => vec![(WWW_AUTHENTICATE, HeaderValue::from_static(c))],
            ErrorAnswer::RateLimited { retry_after } => {
                vec![(RETRY_AFTER, HeaderValue::from(*retry_after))]
            }
            ErrorAnswer::Maintenance { retry_after, .. } => {
                vec![(RETRY_AFTER, HeaderValue::from(*retry_after))]
            }
            ErrorAnswer::Unavailable(_) => vec![(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS))],
            ErrorAnswer::NotFound(_)
            | ErrorAnswer::BadBody
            | ErrorAnswer::TooLarge { .. }
            | ErrorAnswer::Unauthorized {
                challenge: None, ..
            }
            | ErrorAnswer::Forbidden(_)
            | ErrorAnswer::InvalidState(_)
            | ErrorAnswer::TokenExchangeFailed(_)
            | ErrorAnswer::RespondFailed => Vec::new(),
        }
    }

    /// The body: `{"error": code, "message": text}`.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": self.code(), "message": self.message()})
    }

    /// Write it: status, headers, body.
    pub fn write(self, res: &mut Response) -> Stop {
        res.status_code(self.status());
        for (name, value) in self.headers() {
            res.headers_mut().insert(name, value);
        }
        res.render(Json(self.body()));
        Stop
    }

    /// One answer of each kind, in declaration order: what the docs' table is checked against.
    pub fn catalogue() -> Vec<ErrorAnswer<'static>> {
        vec![
            ErrorAnswer::NotFound("No route for this path."),
            ErrorAnswer::MethodNotAllowed { allow: "POST" },
            ErrorAnswer::BadBody,
            ErrorAnswer::BodyTimeout,
            ErrorAnswer::TooLarge { limit: 1024 },
            ErrorAnswer::Unauthorized {
                message: "Request verification failed.",
                challenge: None,
            },
            ErrorAnswer::Forbidden("The sign-in token is for another organisation."),
            ErrorAnswer::RateLimited { retry_after: 1 },
            ErrorAnswer::Maintenance {
                message: "Down for maintenance.",
                retry_after: 300,
            },
            ErrorAnswer::Unavailable("The event could not be queued. Please retry."),
            ErrorAnswer::InvalidState("The sign-in link expired."),
            ErrorAnswer::TokenExchangeFailed("The provider did not complete the connection."),
            ErrorAnswer::RespondFailed,
        ]
    }

    /// Its place in [`ErrorAnswer::catalogue`]: a match without a catch-all, so a new kind does
    /// not compile until it is ranked, and the catalogue's test fails until it is listed.
    #[cfg(test)]
    fn rank(&self) -> usize {
        match self {
            ErrorAnswer::NotFound(_) => 0,
            ErrorAnswer::MethodNotAllowed { .. } => 1,
            ErrorAnswer::BadBody => 2,
            ErrorAnswer::BodyTimeout => 3,
            ErrorAnswer::TooLarge { .. } => 4,
            ErrorAnswer::Unauthorized { .. } => 5,
            ErrorAnswer::Forbidden(_) => 6,
            ErrorAnswer::RateLimited { .. } => 7,
            ErrorAnswer::Maintenance { .. } => 8,
            ErrorAnswer::Unavailable(_) => 9,
            ErrorAnswer::InvalidState(_) => 10,
            ErrorAnswer::TokenExchangeFailed(_) => 11,
            ErrorAnswer::RespondFailed => 12,
        }
    }
}

/// 503 `unavailable` with `Retry-After` ([`ErrorAnswer::Unavailable`]).
pub fn unavailable(res: &mut Response, message: &str) -> Stop {
    ErrorAnswer::Unavailable(message).write(res)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_lists_every_kind_once_in_order() {
        let all = ErrorAnswer::catalogue();
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.rank(), i, "{a:?} is out of place");
        }
        let codes: std::collections::BTreeSet<&str> = all.iter().map(ErrorAnswer::code).collect();
        assert_eq!(codes.len(), all.len(), "one code per kind");
        assert_eq!(all.len(), 13);
    }

    #[test]
    fn each_answer_carries_its_headers() {
        let names = |a: ErrorAnswer<'_>| -> Vec<String> {
            a.headers()
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect()
        };
        assert_eq!(names(ErrorAnswer::Unavailable("x")), ["retry-after"]);
        assert_eq!(
            ErrorAnswer::Unavailable("x").headers()[0].1,
            HeaderValue::from(RETRY_AFTER_SECS)
        );
        assert_eq!(
            names(ErrorAnswer::MethodNotAllowed { allow: "GET, HEAD" }),
            ["allow"]
        );
        assert_eq!(names(ErrorAnswer::BodyTimeout), ["connection"]);
        assert_eq!(
            names(ErrorAnswer::RateLimited { retry_after: 3 }),
            ["retry-after"]
        );
        let metrics = ErrorAnswer::Unauthorized {
            message: "m",
            challenge: Some("Bearer"),
        };
        assert_eq!(names(metrics), ["www-authenticate"]);
        assert!(names(ErrorAnswer::NotFound("n")).is_empty());
        assert_eq!(
            ErrorAnswer::TooLarge { limit: 65536 }.message(),
            "The request body is larger than this route accepts (64KiB)."
        );
    }
}
