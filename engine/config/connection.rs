//! The `connections` section: outbound HTTP services a pipeline's respond script may call while
//! the caller waits (`request("google_calendar", #{...})`). Scripts have no other network access:
//! only the declared connections, only their base URL's host, with the declared credentials.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::Span;

/// One outbound service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// Where calls go: a call's `path` is appended to this URL and must stay under it, on its
    /// host (e.g. `https://www.googleapis.com/calendar/v3`). https in production.
    pub base_url: String,
    /// The credential sent with each call (default: none).
    #[serde(default)]
    pub auth: Auth,
    /// Longest wait for one answer; a call never waits past what is left of the respond budget
    /// (`script_limits.respond_timeout_ms`) either.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// Further attempts for an idempotent call (GET, HEAD, PUT, DELETE, or `idempotent: true`)
    /// that timed out, could not connect, or was answered 429 or 5xx, within the budget.
    #[serde(default = "default_retries")]
    #[schemars(range(max = 5))]
    pub retries: u32,
}

/// How a connection authenticates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Auth {
    /// No credential.
    #[default]
    None,
    /// The calling tenant's access token, stored by the named `oauth` pipeline (e.g.
    /// `google-calendar`): refreshed with the stored refresh token when it has expired or is
    /// answered 401. Each call names its tenant.
    Oauth(String),
    /// `Authorization: Bearer <token>`: a `${VAR}` of an `x-secret` variable.
    Bearer(String),
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(5))
}

fn default_retries() -> u32 {
    1
}
