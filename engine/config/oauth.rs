//! The `oauth` section: a pipeline that connects a tenant's account at a provider (an OAuth 2.0
//! authorization-code flow with PKCE) instead of receiving webhooks. Its `route` is the
//! callback; `start.path` is where the tenant's browser begins.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::Span;

/// An authorization-code flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth {
    /// A preset for the endpoints: `google`. Or give `authorize_url` and `token_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    /// The provider's authorization endpoint (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// The provider's token endpoint (overrides the preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// `${VAR}` of the client id.
    pub client_id: String,
    /// `${VAR}` of the client secret (an `x-secret` variable).
    pub client_secret: String,
    /// `${VAR}` of the redirect URI registered at the provider: BACKEND_URL + this route's path.
    pub redirect_uri: String,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// Extra authorization parameters, e.g. `access_type: offline`, `prompt: consent` (Google
    /// returns a refresh token only with both).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorize_params: BTreeMap<String, String>,
    /// How the client authenticates at the token endpoint: `body` (client_id and client_secret
    /// form fields; Google's) or `basic` (HTTP Basic).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Where the tenant's browser starts, and who may start.
    pub start: Start,
    /// How long a started flow may take (the `state` expires after it).
    #[serde(default = "default_state_ttl")]
    pub state_ttl: Span,
    /// The token endpoint's time budget.
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The sink the tokens are written to: a `postgres` sink of this pipeline whose `encrypt`
    /// lists `access_token` and `refresh_token`.
    pub sink: String,
    /// Where the browser goes after a stored connection (e.g. `${FRONTEND_URL}/settings?connected=google`).
    pub success_url: String,
    /// Where it goes when the tenant declined or the flow failed; `error=<code>` is appended.
    pub error_url: String,
}

fn default_state_ttl() -> Span {
    Span(std::time::Duration::from_secs(600))
}

fn default_timeout() -> Span {
    Span(std::time::Duration::from_secs(10))
}

/// Endpoint presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// `https://accounts.google.com/o/oauth2/v2/auth`, `https://oauth2.googleapis.com/token`.
    Google,
}

impl Provider {
    pub fn authorize_url(self) -> &'static str {
        match self {
            Provider::Google => "https://accounts.google.com/o/oauth2/v2/auth",
        }
    }

    pub fn token_url(self) -> &'static str {
        match self {
            Provider::Google => "https://oauth2.googleapis.com/token",
        }
    }
}

/// Client authentication at the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Body,
    Basic,
}

impl ClientAuth {
    /// The client's credentials at a token endpoint (RFC 6749 §2.3.1), as configured: added to
    /// `form`, or returned as the `Authorization` header's value (HTTP Basic of the id and
    /// secret, each form-encoded first). Shared by the code exchange and the token refresh.
    pub fn credentials<'a>(
        self,
        id: &'a str,
        secret: &'a str,
        form: &mut Vec<(&'a str, &'a str)>,
    ) -> Option<String> {
        match self {
            ClientAuth::Body => {
                form.push(("client_id", id));
                form.push(("client_secret", secret));
                None
            }
            ClientAuth::Basic => {
                use base64::Engine as _;
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", enc(id), enc(secret));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
        }
    }
}

/// The start route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// Path of the start route (GET), e.g. `/api/auth/google/start`.
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~/-]*$"))]
    pub path: String,
    /// The tenant's own credential: a bearer JWT.
    pub jwt: Jwt,
}

/// A bearer JWT (HS256) issued by the tenant's app, e.g. Supabase's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// `${VAR}` of the HS256 secret (JWT_SECRET, or Supabase's JWT secret).
    pub secret: String,
    /// JSON pointer to the claim naming the organisation, e.g. `/org_id` or
    /// `/app_metadata/org_id`.
    #[schemars(regex(pattern = r"^/"))]
    pub org_claim: String,
    /// Required `aud` (Supabase: `authenticated`); not checked when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}
