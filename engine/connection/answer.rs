//! What a script gets back from a connection call ([`Answer`]), and the answers the call makes
//! of an HTTP reply, a token it could not get, and a budget that ran out.

use serde_json::Value;

use super::token::TokenError;

/// What a script gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub ok: bool,
    /// 0 when nothing answered.
    pub status: u16,
    /// The answer's JSON, its text when not JSON, `null` when none.
    pub body: Value,
    /// `""` when ok; else `refused` (4xx), `unavailable` (5xx, 429, no connection, after the
    /// retries), `timeout`, `unanswered` (a change was sent and not answered in time: it may
    /// have taken effect), `not_connected`, `disconnected`.
    pub error: &'static str,
    /// What went wrong, for logs and scripts: never a token or a URL's secrets.
    pub message: String,
}

impl Answer {
    pub(super) fn failed(error: &'static str, status: u16, message: String) -> Answer {
        Answer {
            ok: false,
            status,
            body: Value::Null,
            error,
            message,
        }
    }
}

/// The answer of a call the respond budget ran out on. `unanswered`: a change was sent and not
/// answered (it may have taken effect), so a script tells the caller what is true ("the booking
/// may already be made") instead of "it failed".
pub(super) fn out_of_time(name: &str, unanswered: bool) -> Answer {
    if unanswered {
        Answer::failed(
            "unanswered",
            0,
            format!(
                "`{name}` was sent the call and did not answer within the respond budget: it may have taken effect"
            ),
        )
    } else {
        Answer::failed(
            "timeout",
            0,
            format!("`{name}` did not answer within the respond budget"),
        )
    }
}

pub(super) fn token_failure(provider: &str, tenant: &str, e: TokenError) -> Answer {
    match e {
        TokenError::NotConnected => Answer::failed(
            "not_connected",
            0,
            format!("tenant {tenant} has not connected `{provider}`"),
        ),
        TokenError::Disconnected => Answer::failed(
            "disconnected",
            0,
            format!("tenant {tenant}'s `{provider}` connection was revoked: it must connect again"),
        ),
        TokenError::Timeout => Answer::failed(
            "timeout",
            0,
            format!("no `{provider}` token within the respond budget"),
        ),
        TokenError::Unavailable(why) => Answer::failed("unavailable", 0, why),
    }
}

pub(super) fn answer(status: u16, body: &[u8]) -> Answer {
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    let ok = (200..300).contains(&status);
    let error = match status {
        _ if ok => "",
        429 | 500.. => "unavailable",
        _ => "refused",
    };
    Answer {
        ok,
        status,
        message: if ok {
            String::new()
        } else {
            format!("answered HTTP {status}")
        },
        body,
        error,
    }
}
