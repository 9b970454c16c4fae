//! OAuth 2.0 authorization-code flows with PKCE (RFC 7636), declared by a pipeline's `oauth`
//! section: connecting an organisation's Google Calendar, or any provider by URL.
//!
//! ```text
//! GET start.path   Authorization: Bearer <tenant JWT (HS256)>
//!   -> org from the JWT claim (a `?org=` must agree) -> nonce + PKCE verifier
//!   -> state = AES-256-GCM(org, nonce, verifier, browser, expiry) under ENCRYPTION_KEY (sealed:
//!      it cannot be forged or read, and it expires); `browser` is the SHA-256 of a random value
//!      set in an HttpOnly cookie on this answer, so only the browser that started can finish
//!   -> 302 to the provider (or {"url": ...} for `Accept: application/json`)
//! GET route.path   ?code=..&state=..   (or ?error=access_denied&state=..)
//!   -> open the state (bad or expired: 400, nothing stored) -> the cookie must be the one the
//!      start set (another browser, or none: 400) -> spend its nonce once in Postgres
//!      (a replay: 400) -> error from the provider: 302 to error_url?error=<code>
//!   -> token endpoint (form: grant_type, code, redirect_uri, code_verifier; client auth in the
//!      body or Basic; timeout) -> failure or timeout: 502 page, nothing stored
//!   -> upsert {tenant, provider, access_token, refresh_token, scopes, expires_at, account_email}
//!      through the pipeline's postgres sink, the tokens encrypted -> 302 to success_url
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;

use crate::config::oauth::OAuth;
use crate::crypto::Keyring;
use crate::sink::{Batch, Sink};

/// A pipeline's flow, ready to serve.
pub struct Flow {
    pipeline: String,
    cfg: OAuth,
    authorize_url: String,
    token_url: String,
    keyring: Keyring,
    states: deadpool_postgres::Pool,
    sink: std::sync::Arc<dyn Sink>,
    jwt_key: jsonwebtoken::DecodingKey,
    jwt: jsonwebtoken::Validation,
    http: reqwest::Client,
    cookie: BrowserCookie,
}

/// What the sealed `state` carries.
#[derive(Debug, Serialize, Deserialize)]
struct SealedState {
    org: String,
    nonce: String,
    verifier: String,
    /// SHA-256 (hex) of the browser cookie the start set.
    browser: String,
    /// Unix seconds.
    exp: i64,
}

/// The cookie that binds a flow to the browser that started it, named and scoped once at build:
/// `engine_oauth_<pipeline>`, on the callback's path only (the redirect URI's), living as long as
/// a state. HttpOnly (no script on any page reads it), Secure (browsers keep it on https, and on
/// http://localhost in development), SameSite=Lax (the provider's top-level redirect back
/// carries it; no cross-site subrequest does).
struct BrowserCookie {
    name: String,
    /// `; Path=...; Max-Age=` up to the age, then the flags: the `Set-Cookie` around a value.
    path: String,
    max_age: u64,
}

impl BrowserCookie {
    fn new(pipeline: &str, cfg: &OAuth) -> BrowserCookie {
        let path = url::Url::parse(&cfg.redirect_uri)
            .map(|u| u.path().to_string())
            .unwrap_or_else(|_| "/".into());
        BrowserCookie {
            name: format!(
                "engine_oauth_{}",
                pipeline.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            ),
            path,
            max_age: cfg.state_ttl.0.as_secs(),
        }
    }

    fn header(&self, value: &str, max_age: u64) -> String {
        format!(
            "{}={value}; Path={}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax",
            self.name, self.path
        )
    }
}

fn digest_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// An answer of the flow.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowAnswer {
    /// 302 to this URL.
    Redirect(String),
    /// 200 JSON (the start route asked for JSON).
    Json(Value),
    /// An error: why, and text for the person in the browser (the routes answer it with its
    /// status and code from the engine's catalogue of answers).
    Refused(FlowRefusal, String),
}

/// Why the flow refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowRefusal {
    /// No sign-in token, or not a valid one (401).
    Unauthorized,
    /// A sign-in token for no organisation or another one (403).
    Forbidden,
    /// The tokens could not be exchanged or saved right now (503).
    Unavailable,
    /// The callback's `state` is missing, expired or not ours (400).
    InvalidState,
    /// The provider did not give tokens for the code (502).
    TokenExchangeFailed,
}

/// Why a flow cannot run yet: its routes answer 503 with this text (settings are named, never
/// their values).
#[derive(Debug, thiserror::Error)]
pub enum FlowSetupError {
    #[error(
        "`{pipeline}` is not configured: set {} (the variables its `${{VAR}}`s name, in the environment)",
        .missing.join(", ")
    )]
    NotConfigured {
        pipeline: String,
        missing: Vec<&'static str>,
    },
    #[error("its token sink")]
    Sink(#[source] crate::sink::SinkBuildError),
    #[error("no authorize_url")]
    NoAuthorizeUrl,
    #[error("no token_url")]
    NoTokenUrl,
    #[error("the HTTP client")]
    Client(#[source] reqwest::Error),
    /// `oauth.sink` names no postgres sink of the pipeline (validation refuses this first).
    #[error("`{0}`: `oauth.sink` must name a `postgres` sink of this pipeline")]
    NoPostgresSink(String),
}

/// Why a callback's step failed (logged; the person is answered in words of their own).
#[derive(Debug, thiserror::Error)]
enum CallbackError {
    #[error("database unavailable")]
    Pool(#[source] deadpool_postgres::PoolError),
    #[error("{}", crate::db::describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("timed out")]
    Timeout,
    #[error("the token endpoint")]
    Http(#[source] reqwest::Error),
    #[error("HTTP {status}: {code}")]
    Refused { status: u16, code: String },
    #[error("the answer has no access_token")]
    NoAccessToken,
}

impl Flow {
    /// The flow of `pipeline`, its tokens written through the postgres sink `sink` (validated:
    /// it encrypts both tokens), or why it cannot run yet — every missing setting named, never a
    /// value: the routes answer 503 with that reason.
    pub fn build(
        pipeline: &str,
        cfg: &OAuth,
        sink: &crate::config::sink::PostgresConfig,
        keyring: Option<&Keyring>,
        pool: Option<&deadpool_postgres::Pool>,
    ) -> Result<Flow, FlowSetupError> {
        let mut missing = Vec::new();
        for (what, value) in [
            ("the client id (`oauth.client_id`)", &cfg.client_id),
            (
                "the client secret (`oauth.client_secret`)",
                &cfg.client_secret,
            ),
            ("the redirect URI (`oauth.redirect_uri`)", &cfg.redirect_uri),
            (
                "the JWT secret (`oauth.start.jwt.secret`)",
                &cfg.start.jwt.secret,
            ),
        ] {
            if value.trim().is_empty() {
                missing.push(what);
            }
        }
        for (what, url) in [
            ("an absolute `oauth.success_url`", &cfg.success_url),
            ("an absolute `oauth.error_url`", &cfg.error_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                missing.push(what);
            }
        }
        if keyring.is_none() {
            missing.push("ENCRYPTION_KEY");
        }
        if pool.is_none() {
            missing.push("DATABASE_URL");
        }
        let (Some(keyring), Some(pool), true) = (keyring, pool, missing.is_empty()) else {
            return Err(FlowSetupError::NotConfigured {
                pipeline: pipeline.to_string(),
                missing,
            });
        };
        let sink: std::sync::Arc<dyn Sink> = std::sync::Arc::new(
            crate::sink::postgres::PostgresSink::new(sink, pool.clone(), Some(keyring.clone()))
                .map_err(FlowSetupError::Sink)?,
        );
        let authorize_url = cfg
            .authorize_url
            .clone()
            .or_else(|| cfg.provider.map(|p| p.authorize_url().to_string()))
            .ok_or(FlowSetupError::NoAuthorizeUrl)?;
        let token_url = cfg
            .token_url
            .clone()
            .or_else(|| cfg.provider.map(|p| p.token_url().to_string()))
            .ok_or(FlowSetupError::NoTokenUrl)?;
        let mut jwt = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        match &cfg.start.jwt.audience {
            Some(aud) => jwt.set_audience(&[aud]),
            None => jwt.validate_aud = false,
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(FlowSetupError::Client)?;
        Ok(Flow {
            pipeline: pipeline.to_string(),
            cfg: cfg.clone(),
            authorize_url,
            token_url,
            keyring: keyring.clone(),
            states: pool.clone(),
            sink,
            jwt_key: jsonwebtoken::DecodingKey::from_secret(cfg.start.jwt.secret.as_bytes()),
            jwt,
            http,
            cookie: BrowserCookie::new(pipeline, cfg),
        })
    }

    /// The name of the cookie binding a flow to its browser (read from the callback's request).
    pub fn cookie_name(&self) -> &str {
        &self.cookie.name
    }

    /// The `Set-Cookie` a started flow sends with `value` (from [`Flow::start`]).
    pub fn set_cookie(&self, value: &str) -> String {
        self.cookie.header(value, self.cookie.max_age)
    }

    /// The `Set-Cookie` that ends the binding: the callback, spent or refused, is the flow's end.
    pub fn clear_cookie(&self) -> String {
        self.cookie.header("", 0)
    }

    /// The start route: who is asking (their JWT), then off to the provider. With the answer,
    /// the value of the browser cookie to set ([`Flow::set_cookie`]); a refusal is `Err`.
    pub fn start(
        &self,
        authorization: Option<&str>,
        query: &str,
        wants_json: bool,
        now: i64,
    ) -> Result<(FlowAnswer, String), FlowAnswer> {
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return Err(FlowAnswer::Refused(
                FlowRefusal::Unauthorized,
                "Sign in first: this route needs Authorization: Bearer <token>.".into(),
            ));
        };
        let claims = match jsonwebtoken::decode::<Value>(token.trim(), &self.jwt_key, &self.jwt) {
            Ok(t) => t.claims,
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline, reason = ?e.kind(), "oauth start: token refused");
                return Err(FlowAnswer::Refused(
                    FlowRefusal::Unauthorized,
                    "The sign-in token is not valid.".into(),
                ));
            }
        };
        let org = match claims.pointer(&self.cfg.start.jwt.org_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(FlowAnswer::Refused(
                    FlowRefusal::Forbidden,
                    "The sign-in token names no organisation.".into(),
                ));
            }
        };
        let asked = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "org")
            .map(|(_, v)| v.into_owned());
        if asked.is_some_and(|a| a != org) {
            return Err(FlowAnswer::Refused(
                FlowRefusal::Forbidden,
                "The sign-in token is for another organisation.".into(),
            ));
        }
        let verifier = random_token(32);
        let cookie = random_token(32);
        let state = SealedState {
            org,
            nonce: random_token(16),
            verifier: verifier.clone(),
            browser: digest_hex(&cookie),
            exp: now + self.cfg.state_ttl.0.as_secs() as i64,
        };
        let sealed = self.keyring.encrypt(
            &serde_json::to_vec(&state).unwrap_or_default(),
            &self.state_context(),
        );
        let mut url = url::Url::parse(&self.authorize_url).expect("checked by validation");
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("redirect_uri", &self.cfg.redirect_uri)
                .append_pair("scope", &self.cfg.scopes.join(" "))
                .append_pair("state", &sealed)
                .append_pair("code_challenge", &challenge(&verifier))
                .append_pair("code_challenge_method", "S256");
            for (k, v) in &self.cfg.authorize_params {
                q.append_pair(k, v);
            }
        }
        let answer = if wants_json {
            FlowAnswer::Json(json!({ "url": url.as_str() }))
        } else {
            FlowAnswer::Redirect(url.into())
        };
        Ok((answer, cookie))
    }

    /// The callback route; `cookie` is the value of the browser cookie ([`Flow::cookie_name`])
    /// the browser sent.
    pub async fn callback(&self, query: &str, cookie: Option<&str>, now: i64) -> FlowAnswer {
        let q: std::collections::HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let Some(state) = q
            .get("state")
            .and_then(|s| self.keyring.decrypt(s, &self.state_context()).ok())
            .and_then(|b| serde_json::from_slice::<SealedState>(&b).ok())
        else {
            return bad_state(
                "This sign-in link is not valid. Start the connection again from the app.",
            );
        };
        if state.exp < now {
            return bad_state(
                "This sign-in link has expired. Start the connection again from the app.",
            );
        }
        // bound to the browser that started: a link sent to (or opened by) anyone else fails,
        // before its nonce is spent, so the right browser can still finish
        let same_browser = cookie.is_some_and(|c| {
            crate::verify::mac::ct_eq(digest_hex(c).as_bytes(), state.browser.as_bytes())
        });
        if !same_browser {
            tracing::warn!(pipeline = %self.pipeline, org = %state.org, cookie = cookie.is_some(), "oauth callback: not the browser that started the flow");
            return bad_state(
                "This sign-in was started in another browser, or the browser did not keep its cookie. Start the connection again from the app, in this browser.",
            );
        }
        match self.spend(&state).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(pipeline = %self.pipeline, org = %state.org, "oauth callback: state used twice");
                return bad_state(
                    "This sign-in link was already used. Start the connection again from the app.",
                );
            }
            Err(e) => {
                tracing::error!(pipeline = %self.pipeline, error = &e as &dyn std::error::Error, "oauth callback: cannot record the state");
                return FlowAnswer::Refused(
                    FlowRefusal::Unavailable,
                    "The connection could not be completed right now. Please try again.".into(),
                );
            }
        }
        if let Some(error) = q.get("error") {
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            tracing::info!(pipeline = %self.pipeline, org = %state.org, error = %code, "oauth callback: the provider returned an error");
            return FlowAnswer::Redirect(with_param(&self.cfg.error_url, "error", &code));
        }
        let Some(code) = q.get("code").filter(|c| !c.is_empty()) else {
            return bad_state(
                "The provider sent no authorization code. Start the connection again from the app.",
            );
        };
        let tokens = match self.exchange(code, &state.verifier).await {
            Ok(t) => t,
            Err(why) => {
                tracing::error!(pipeline = %self.pipeline, org = %state.org, reason = &why as &dyn std::error::Error, "oauth callback: token exchange failed");
                return FlowAnswer::Refused(FlowRefusal::TokenExchangeFailed, "The provider did not complete the connection. Nothing was saved; please try again.".into());
            }
        };
        let row = row(&state.org, &self.pipeline, &tokens, now);
        let batch = Batch {
            event_id: format!("oauth:{}", state.nonce),
            pipeline: self.pipeline.clone(),
            sink: self.cfg.sink.clone(),
            step: "oauth".into(),
            rows: vec![row],
        };
        if let Err(e) = self.sink.write(&batch).await {
            tracing::error!(pipeline = %self.pipeline, org = %state.org, error = %e, "oauth callback: tokens not stored");
            return FlowAnswer::Refused(
                FlowRefusal::Unavailable,
                "The connection could not be saved. Please try again.".into(),
            );
        }
        tracing::info!(pipeline = %self.pipeline, org = %state.org, "oauth: account connected");
        FlowAnswer::Redirect(self.cfg.success_url.clone())
    }

    fn state_context(&self) -> String {
        format!("oauth-state:{}", self.pipeline)
    }

    /// Record the state's nonce; `false` when it was spent before.
    async fn spend(&self, state: &SealedState) -> Result<bool, CallbackError> {
        let client = self.states.get().await.map_err(CallbackError::Pool)?;
        let _ = client
            .batch_execute("DELETE FROM oauth_states_used WHERE expires_at < now()")
            .await;
        let expires = chrono::DateTime::from_timestamp(state.exp, 0)
            .unwrap_or_default()
            .to_rfc3339();
        let n = client
            .execute_typed(
                "INSERT INTO oauth_states_used (nonce, expires_at) VALUES ($1, $2::text::timestamptz) ON CONFLICT (nonce) DO NOTHING",
                &[(&state.nonce, Type::TEXT), (&expires, Type::TEXT)],
            )
            .await?;
        Ok(n == 1)
    }

    /// The code for tokens at the token endpoint.
    async fn exchange(&self, code: &str, verifier: &str) -> Result<Value, CallbackError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.cfg.redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        let mut req = self
            .http
            .post(&self.token_url)
            .header("accept", "application/json");
        if let Some(basic) = self.cfg.client_auth.credentials(
            &self.cfg.client_id,
            &self.cfg.client_secret,
            &mut form,
        ) {
            req = req.header("authorization", basic);
        }
        let res = req.form(&form).send().await.map_err(|e| {
            if e.is_timeout() {
                CallbackError::Timeout
            } else {
                CallbackError::Http(e.without_url())
            }
        })?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = body
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error code");
            return Err(CallbackError::Refused {
                status: status.as_u16(),
                code: code.to_string(),
            });
        }
        if !body.get("access_token").is_some_and(Value::is_string) {
            return Err(CallbackError::NoAccessToken);
        }
        Ok(body)
    }
}

fn bad_state(text: &str) -> FlowAnswer {
    FlowAnswer::Refused(FlowRefusal::InvalidState, text.to_string())
}

/// What a completed connection writes to the token sink, with example values: the table check
/// tries it against the sink's table, as it tries the pipelines' fixture rows.
pub fn example_batch(pipeline: &str, sink: &str) -> Batch {
    let tokens = json!({
        "access_token": "ya29.example-access-token",
        "refresh_token": "1//example-refresh-token",
        "expires_in": 3599,
        "scope": "openid https://www.googleapis.com/auth/calendar.events",
        "token_type": "Bearer",
        // {"email": "clinic@example.com"}
        "id_token": "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImNsaW5pY0BleGFtcGxlLmNvbSJ9.",
    });
    Batch {
        event_id: "oauth:example".into(),
        pipeline: pipeline.into(),
        sink: sink.into(),
        step: "oauth".into(),
        rows: vec![row(
            "00000000-0000-4000-8000-000000000000",
            pipeline,
            &tokens,
            chrono::Utc::now().timestamp(),
        )],
    }
}

/// The row stored for a token answer: tokens as strings (the sink encrypts them), scopes as a
/// list, the expiry as a time.
fn row(org: &str, provider: &str, tokens: &Value, now: i64) -> Value {
    let scopes: Vec<&str> = tokens
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    let expires_at = tokens
        .get("expires_in")
        .and_then(Value::as_i64)
        .and_then(|s| chrono::DateTime::from_timestamp(now + s, 0))
        .map(|t| t.to_rfc3339());
    let mut row = json!({
        "tenant": org,
        "provider": provider,
        "access_token": tokens["access_token"],
        "token_type": tokens.get("token_type").cloned().unwrap_or(Value::Null),
        "scopes": scopes,
        "expires_at": expires_at,
        "updated_at": chrono::DateTime::from_timestamp(now, 0).map(|t| t.to_rfc3339()),
        // a new consent repairs a revoked connection (migrations/V4__connections.sql)
        "disconnected_at": null,
        "disconnected_reason": null,
    });
    // the connected account, from the OpenID Connect id_token the token endpoint sent: it came
    // straight from the provider over TLS, which OpenID Connect Core 3.1.3.7 accepts in place of
    // checking its signature. Absent (no `openid email` scope), the stored one is kept.
    if let Some(email) = tokens
        .get("id_token")
        .and_then(Value::as_str)
        .and_then(id_token_email)
    {
        row["account_email"] = Value::String(email);
    }
    // Providers send a refresh token on the first consent only (Google: with prompt=consent,
    // every time). Absent, the column is left out, so the stored one is kept.
    if let Some(r) = tokens.get("refresh_token").filter(|r| r.is_string()) {
        row["refresh_token"] = r.clone();
    }
    row
}

/// The `email` claim of an id_token (a JWT: header.payload.signature, base64url), when it is
/// one and says so.
fn id_token_email(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| e.contains('@') && e.len() <= 320)
        .map(str::to_string)
}

/// `url` with `name=value` added to its query.
fn with_param(url: &str, name: &str, value: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.query_pairs_mut().append_pair(name, value);
            u.into()
        }
        Err(_) => url.to_string(),
    }
}

/// `n` random bytes (OS generator), base64url without padding.
fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random generator is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 code challenge of a verifier (RFC 7636 4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The page a browser gets for a refused callback or start.
pub fn page(status: u16, text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    crate::respond::Escape::Markup.write(text, &mut escaped);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Connection not completed</title></head><body><h1>Connection not completed</h1><p>{escaped}</p><p><small>HTTP {status}</small></p></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B.
    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_43_unreserved_characters_and_differ() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a, random_token(32));
    }

    #[test]
    fn a_token_answer_becomes_a_row_and_keeps_an_absent_refresh_token_out() {
        let full = json!({"access_token": "ya29.a", "refresh_token": "1//r", "expires_in": 3599, "scope": "openid https://www.googleapis.com/auth/calendar.events", "token_type": "Bearer"});
        let r = row("org-1", "google-calendar", &full, 1_700_000_000);
        assert_eq!(r["tenant"], "org-1");
        assert_eq!(r["refresh_token"], "1//r");
        assert_eq!(
            r["scopes"],
            json!(["openid", "https://www.googleapis.com/auth/calendar.events"])
        );
        assert_eq!(r["expires_at"], "2023-11-14T23:13:19+00:00");
        let again = row(
            "org-1",
            "google-calendar",
            &json!({"access_token": "ya29.b", "expires_in": 3599}),
            1_700_000_000,
        );
        assert!(again.get("refresh_token").is_none());
    }

    #[test]
    fn error_urls_get_the_code_and_pages_escape_text() {
        assert_eq!(
            with_param(
                "https://voxanne.ai/settings?tab=calendar",
                "error",
                "access_denied"
            ),
            "https://voxanne.ai/settings?tab=calendar&error=access_denied"
        );
        assert!(page(400, "<script>").contains("&lt;script&gt;"));
    }
}
