//! OAuth callback pipelines end to end: the start route (tenant JWT, PKCE, sealed state), the
//! callback against a token endpoint served here on 127.0.0.1, tokens encrypted in a real
//! database, and every refusal: tampered, expired and replayed state, a declined consent, a
//! failing or slow token endpoint. Then what `engine validate` says about OAuth pipelines.

use crate::common;

use std::time::Duration;

use common::{Dir, Stub};
use serde_json::{Value, json};

const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123";
const CLIENT_ID: &str = "1234-test.apps.googleusercontent.com";
const CLIENT_SECRET: &str = "GOCSPX-test-client-secret";
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const REDIRECT: &str = "http://localhost/api/auth/google/callback";

/// The shipped google-calendar pipeline pointed at `stub`'s endpoints.
fn pipelines(stub: &Stub, extra: &str) -> Dir {
    let dir = Dir::shipped_copy();
    let text = std::fs::read_to_string(dir.path().join("google-calendar.yaml")).unwrap();
    let text = text
        .replace("  token_url: ${GOOGLE_TOKEN_URL}   # Google's, unless a test stands one in\n", "")
        .replace(
            "  provider: google\n",
            &format!(
                "  authorize_url: http://127.0.0.1:{p}/o/oauth2/v2/auth\n  token_url: http://127.0.0.1:{p}/token\n{extra}",
                p = stub.port
            ),
        )
        .replace("  timeout: 10s\n", "  timeout: 1s\n");
    dir.write("google-calendar.yaml", &text);
    dir
}

struct Setup {
    app: common::TestApp,
    stub: Stub,
    schema: String,
    _dir: Dir,
    client: reqwest::Client,
    /// The browser cookie the last start set (`name=value`), sent with each callback as the
    /// browser that started would.
    cookie: std::sync::Mutex<Option<String>>,
}

async fn setup(extra: &str) -> Setup {
    let (db, schema) = common::fresh_schema().await;
    setup_on(extra, db, schema).await
}

/// [`setup`] on the database at `db` (`schema`: where [`Setup::rows`] reads).
async fn setup_on(extra: &str, db: String, schema: String) -> Setup {
    let stub = Stub::start().await;
    stub.reply(
        200,
        r#"{"access_token":"ya29.secret-access","refresh_token":"1//secret-refresh","expires_in":3599,"scope":"openid email https://www.googleapis.com/auth/calendar.events","token_type":"Bearer","id_token":"eyJ.x.y"}"#,
        Duration::ZERO,
    );
    let dir = pipelines(&stub, extra);
    let app = common::spawn_app(
        dir.path(),
        &[
            ("DATABASE_URL", db.as_str()),
            ("ENCRYPTION_KEY", KEY),
            ("JWT_SECRET", JWT_SECRET),
            ("GOOGLE_CLIENT_ID", CLIENT_ID),
            ("GOOGLE_CLIENT_SECRET", CLIENT_SECRET),
            ("GOOGLE_REDIRECT_URI", REDIRECT),
            ("FRONTEND_URL", "https://app.example.com"),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Setup {
        app,
        stub,
        schema,
        _dir: dir,
        client,
        cookie: std::sync::Mutex::new(None),
    }
}

fn jwt(org: &str, exp_in: i64) -> String {
    let claims = json!({
        "sub": "user-1",
        "aud": "authenticated",
        "role": "authenticated",
        "exp": chrono::Utc::now().timestamp() + exp_in,
        "app_metadata": {"org_id": org},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

impl Setup {
    /// Start a flow for `org`: the provider URL's query parameters.
    async fn start(&self, org: &str) -> std::collections::HashMap<String, String> {
        let res = self
            .client
            .get(self.app.url("/api/auth/google/start"))
            .bearer_auth(jwt(org, 600))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let set = res
            .headers()
            .get("set-cookie")
            .expect("the start binds the flow to this browser")
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("Secure") && set.contains("SameSite=Lax"),
            "{set}"
        );
        *self.cookie.lock().unwrap() = Some(set.split(';').next().unwrap().to_string());
        let url = res.json::<Value>().await.unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string();
        let url = url::Url::parse(&url).unwrap();
        assert_eq!(url.path(), "/o/oauth2/v2/auth");
        url.query_pairs().into_owned().collect()
    }

    async fn callback(&self, query: &[(&str, &str)]) -> reqwest::Response {
        let cookie = self.cookie.lock().unwrap().clone();
        self.callback_with(query, cookie.as_deref()).await
    }

    /// The callback from a browser sending `cookie` (`name=value`), or none.
    async fn callback_with(
        &self,
        query: &[(&str, &str)],
        cookie: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .get(self.app.url("/api/auth/google/callback"))
            .query(query);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    async fn rows(&self) -> Vec<tokio_postgres::Row> {
        common::pg(&self.schema)
            .await
            .query("SELECT tenant, provider, access_token, refresh_token, scopes, expires_at::text, token_type FROM oauth_tokens ORDER BY tenant", &[])
            .await
            .unwrap()
    }
}

/// Supabase's transaction-mode pooler (a real PgBouncer, `pool_mode = transaction`, one server
/// connection shared by every client): the state is spent once and the tokens are stored
/// encrypted, with nothing that needs a session (named statements, SET).
#[tokio::test]
async fn the_flow_works_through_pgbouncer_in_transaction_mode() {
    let bouncer = common::PgBouncer::start(1);
    let (name, direct) = common::fresh_database().await;
    let s = setup_on("", bouncer.url(&name), "public".into()).await;
    for org in ["org-1", "org-2", "org-3"] {
        let q = s.start(org).await;
        let res = s
            .callback(&[("code", "4/0Ab-code"), ("state", &q["state"])])
            .await;
        assert_eq!(res.status(), 302, "{}", bouncer.log());
        assert!(
            res.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with("https://app.example.com"),
        );
        // the same state again: spent
        let again = s
            .callback(&[("code", "4/0Ab-code"), ("state", &q["state"])])
            .await;
        assert_eq!(again.status(), 400, "a state works once");
    }
    let db = common::connect(&direct).await;
    let rows = db
        .query(
            "SELECT tenant, access_token FROM oauth_tokens ORDER BY tenant",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        let token: String = r.get(1);
        assert!(
            token.starts_with("v1:") && !token.contains("ya29"),
            "encrypted"
        );
    }
    assert!(
        !bouncer.log().contains("prepared statement"),
        "{}",
        bouncer.log()
    );
    s.app.stop().await;
    drop(bouncer);
    common::drop_database(&name).await;
}

#[tokio::test]
async fn the_full_flow_stores_encrypted_tokens_and_a_state_works_once() {
    let s = setup("").await;
    // who may start
    let res = s
        .client
        .get(s.app.url("/api/auth/google/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = s
        .client
        .get(s.app.url("/api/auth/google/start"))
        .bearer_auth(jwt("org-42", -120))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "an expired session token");
    let res = s
        .client
        .get(s.app.url("/api/auth/google/start?org=org-7"))
        .bearer_auth(jwt("org-42", 600))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "another organisation");
    // a browser navigation gets the redirect itself
    let res = s
        .client
        .get(s.app.url("/api/auth/google/start?org=org-42"))
        .bearer_auth(jwt("org-42", 600))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&format!(
                "http://127.0.0.1:{}/o/oauth2/v2/auth?response_type=code&",
                s.stub.port
            ))
    );
    assert_eq!(res.headers()["cache-control"], "no-store");

    let q = s.start("org-42").await;
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], REDIRECT);
    assert_eq!(
        q["scope"],
        "openid email https://www.googleapis.com/auth/calendar.events"
    );
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert!(
        !q["state"].contains("org-42"),
        "the state is sealed, not readable"
    );

    let res = s
        .callback(&[("code", "4/0Ab-code"), ("state", &q["state"])])
        .await;
    assert_eq!(res.status(), 302);
    assert_eq!(
        res.headers()["location"],
        "https://app.example.com/dashboard/settings?calendar=connected"
    );

    // the token request: grant, code, redirect, the verifier matching the challenge, client in the body
    let got = s.stub.got();
    assert_eq!(got.len(), 1);
    let token_req = &got[0];
    assert_eq!(
        (token_req.method.as_str(), token_req.path.as_str()),
        ("POST", "/token")
    );
    assert_eq!(
        token_req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(token_req.body.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], "4/0Ab-code");
    assert_eq!(form["redirect_uri"], REDIRECT);
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert_eq!(
        engine::oauth::challenge(&form["code_verifier"]),
        q["code_challenge"]
    );
    assert!(token_req.header("authorization").is_none());

    // stored, encrypted
    let rows = s.rows().await;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(0), "org-42");
    assert_eq!(r.get::<_, String>(1), "google-calendar");
    let (access, refresh): (String, String) = (r.get(2), r.get(3));
    assert!(access.starts_with("v1:") && refresh.starts_with("v1:"));
    assert!(!access.contains("ya29") && !refresh.contains("secret-refresh"));
    let ring = engine::crypto::Keyring::new(KEY, &[]).unwrap();
    // sealed to the row: its tenant and provider are in the associated data
    use engine::connection::token::token_context;
    assert_eq!(
        ring.decrypt(
            &access,
            &token_context("access_token", "org-42", "google-calendar")
        )
        .unwrap(),
        b"ya29.secret-access"
    );
    assert_eq!(
        ring.decrypt(
            &refresh,
            &token_context("refresh_token", "org-42", "google-calendar")
        )
        .unwrap(),
        b"1//secret-refresh"
    );
    assert!(ring.decrypt(&access, "oauth_tokens.access_token").is_err());
    assert!(
        ring.decrypt(
            &access,
            &token_context("access_token", "org-43", "google-calendar")
        )
        .is_err()
    );
    assert_eq!(
        r.get::<_, Vec<String>>(4),
        [
            "openid",
            "email",
            "https://www.googleapis.com/auth/calendar.events"
        ]
    );
    assert_eq!(r.get::<_, Option<String>>(6).as_deref(), Some("Bearer"));

    // the same state again: refused, the provider not asked again
    let res = s
        .callback(&[("code", "4/0Ab-code"), ("state", &q["state"])])
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("already used"));
    assert_eq!(s.stub.got().len(), 1);

    // reconnecting without a refresh token in the answer keeps the stored one
    s.stub.reply(
        200,
        r#"{"access_token":"ya29.second","expires_in":3599,"token_type":"Bearer"}"#,
        Duration::ZERO,
    );
    let q = s.start("org-42").await;
    let res = s
        .callback(&[("code", "4/second"), ("state", &q["state"])])
        .await;
    assert_eq!(res.status(), 302);
    let rows = s.rows().await;
    assert_eq!(rows.len(), 1);
    let access: String = rows[0].get(2);
    let refresh: String = rows[0].get(3);
    assert_eq!(
        ring.decrypt(
            &access,
            &token_context("access_token", "org-42", "google-calendar")
        )
        .unwrap(),
        b"ya29.second"
    );
    assert_eq!(
        ring.decrypt(
            &refresh,
            &token_context("refresh_token", "org-42", "google-calendar")
        )
        .unwrap(),
        b"1//secret-refresh"
    );
    s.app.stop().await;
}

#[tokio::test]
async fn bad_states_and_provider_errors_store_nothing() {
    let s = setup("").await;
    let q = s.start("org-9").await;
    // tampered: one character changed
    let mut tampered = q["state"].clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let res = s
        .callback(&[
            ("code", "c"),
            ("state", std::str::from_utf8(&tampered).unwrap()),
        ])
        .await;
    assert_eq!(res.status(), 400);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(res.text().await.unwrap().contains("not valid"));
    // missing
    assert_eq!(s.callback(&[("code", "c")]).await.status(), 400);
    // expired: sealed with the right key and context, but past its time
    let ring = engine::crypto::Keyring::new(KEY, &[]).unwrap();
    let old = ring.encrypt(
        json!({"org": "org-9", "nonce": "n-old", "verifier": "v", "browser": "", "exp": chrono::Utc::now().timestamp() - 1}).to_string().as_bytes(),
        "oauth-state:google-calendar",
    );
    let res = s.callback(&[("code", "c"), ("state", &old)]).await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("expired"));
    // a state sealed for another pipeline's flow does not open here
    let elsewhere = ring.encrypt(
        json!({"org": "org-9", "nonce": "n-x", "verifier": "v", "browser": "", "exp": chrono::Utc::now().timestamp() + 60}).to_string().as_bytes(),
        "oauth-state:other",
    );
    assert_eq!(
        s.callback(&[("code", "c"), ("state", &elsewhere)])
            .await
            .status(),
        400
    );

    // the tenant declined: back to the app with the error flag
    let res = s
        .callback(&[("error", "access_denied"), ("state", &q["state"])])
        .await;
    assert_eq!(res.status(), 302);
    assert_eq!(
        res.headers()["location"],
        "https://app.example.com/dashboard/settings?calendar=failed&error=access_denied"
    );

    // the token endpoint fails, then is too slow: a clear page, nothing stored
    s.stub
        .reply(500, r#"{"error":"internal_failure"}"#, Duration::ZERO);
    let q = s.start("org-9").await;
    let res = s.callback(&[("code", "c1"), ("state", &q["state"])]).await;
    assert_eq!(res.status(), 502);
    let page = res.text().await.unwrap();
    assert!(page.contains("Nothing was saved"), "{page}");
    s.stub
        .reply(200, r#"{"access_token":"late"}"#, Duration::from_secs(3));
    let q = s.start("org-9").await;
    let started = std::time::Instant::now();
    let res = s.callback(&[("code", "c2"), ("state", &q["state"])]).await;
    assert_eq!(res.status(), 502);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 1 s timeout applies"
    );
    // an answer without an access token
    s.stub
        .reply(200, r#"{"token_type":"Bearer"}"#, Duration::ZERO);
    let q = s.start("org-9").await;
    assert_eq!(
        s.callback(&[("code", "c3"), ("state", &q["state"])])
            .await
            .status(),
        502
    );

    assert!(s.rows().await.is_empty());
    s.app.stop().await;
}

#[tokio::test]
async fn basic_client_authentication() {
    let s = setup("  client_auth: basic\n").await;
    let q = s.start("org-1").await;
    let res = s.callback(&[("code", "c"), ("state", &q["state"])]).await;
    assert_eq!(res.status(), 302);
    let got = s.stub.got();
    let auth = got[0].header("authorization").unwrap();
    use base64::Engine as _;
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    assert_eq!(auth, format!("Basic {expected}"));
    assert!(!got[0].body.contains("client_secret"));
    s.app.stop().await;
}

#[tokio::test]
async fn without_its_settings_the_flow_answers_503_and_names_what_is_missing() {
    let app = common::spawn_app(&common::shipped(), &[]).await;
    let res = app
        .client
        .get(app.url("/api/auth/google/start"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("the client id") && message.contains("DATABASE_URL"),
        "{message}"
    );
    app.stop().await;
}

#[test]
fn validate_checks_the_redirect_uri_and_the_token_sink() {
    let env = [
        (
            "GOOGLE_REDIRECT_URI",
            "https://api.voxanne.ai/api/auth/google/cb",
        ),
        ("BACKEND_URL", "https://api.example.com"),
    ];
    let p = common::problems(&[], &env);
    assert!(
        p.iter()
            .any(|l| l.starts_with("google-calendar.yaml:22:17:")
                && l.contains("is not this pipeline's route `/api/auth/google/callback`")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l.contains(
            "is not BACKEND_URL + the route (`https://api.example.com/api/auth/google/callback`)"
        )),
        "{p:#?}"
    );

    let shipped = std::fs::read_to_string(common::shipped().join("google-calendar.yaml")).unwrap();
    let p = common::problems(
        &[(
            "google-calendar.yaml",
            &shipped
                .replace(
                    "encrypt: [access_token, refresh_token]",
                    "encrypt: [access_token]",
                )
                .replace("method: GET", "method: POST"),
        )],
        &[],
    );
    assert!(
        p.iter()
            .any(|l| l.contains("add refresh_token to `encrypt`")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l.contains("an OAuth callback is a GET")),
        "{p:#?}"
    );

    let p = common::problems(
        &[(
            "google-calendar.yaml",
            &shipped.replace("secret: ${JWT_SECRET}", "secret: hunter2-literal"),
        )],
        &[],
    );
    assert!(
        p.iter()
            .any(|l| l.contains("/oauth/start/jwt/secret") && l.contains("never a literal")),
        "{p:#?}"
    );
    assert!(p.iter().all(|l| !l.contains("hunter2")), "{p:#?}");

    // https in production: the env schema says so of GOOGLE_REDIRECT_URI, the pipeline check of
    // any redirect URI and endpoint
    let p = common::problems(
        &[],
        &[
            ("NODE_ENV", "production"),
            (
                "GOOGLE_REDIRECT_URI",
                "http://api.voxanne.ai/api/auth/google/callback",
            ),
        ],
    );
    assert!(
        p.iter()
            .any(|l| l.contains("GOOGLE_REDIRECT_URI: must be an https:// URL in production")),
        "{p:#?}"
    );
    let literal = shipped
        .replace("  token_url: ${GOOGLE_TOKEN_URL}   # Google's, unless a test stands one in\n", "")
        .replace("${GOOGLE_REDIRECT_URI}", "http://api.voxanne.ai/api/auth/google/callback")
        .replace("  provider: google\n", "  authorize_url: http://accounts.example.com/auth\n  token_url: https://oauth.example.com/token\n");
    let production = [
        ("NODE_ENV", "production"),
        ("REDIS_URL", common::redis()),
        ("DATABASE_URL", "postgres://127.0.0.1/test"),
        ("ENCRYPTION_KEY", KEY),
        ("VAPI_WEBHOOK_SECRET", "prod-vapi-credential-secret"),
        ("CORS_ORIGIN", "https://voxanne.ai"),
    ];
    let p = common::problems(&[("google-calendar.yaml", &literal)], &production);
    assert!(
        p.iter()
            .any(|l| l.contains("(at /oauth/redirect_uri)")
                && l.contains("must be https in production")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|l| l.contains("(at /oauth/authorize_url)")
            && l.contains("must be https in production")),
        "{p:#?}"
    );
    assert!(
        !p.iter().any(|l| l.contains("(at /oauth/token_url)")),
        "{p:#?}"
    );

    // the start path cannot be taken by another route
    let p = common::problems(
        &[(
            "taken.yaml",
            "name: taken\nroute: {method: GET, path: /api/auth/google/start}\n",
        )],
        &[],
    );
    assert!(
        p.iter()
            .any(|l| l.contains("route GET /api/auth/google/start is already taken")),
        "{p:#?}"
    );
}

/// The state is bound to the browser that started the flow (an HttpOnly cookie): a callback with
/// no cookie, or another browser's, is refused and stores nothing; the state is not spent by it,
/// so the right browser still finishes. The connected account's email is recorded.
#[tokio::test]
async fn a_callback_from_another_browser_is_refused_and_the_account_email_recorded() {
    let s = setup("").await;
    // a second browser starts a flow of its own: its cookie
    s.start("org-7").await;
    let other = s.cookie.lock().unwrap().clone().unwrap();
    let q = s.start("org-7").await;
    let mine = s.cookie.lock().unwrap().clone().unwrap();
    assert_ne!(other, mine);
    // an id_token carrying the account: {"email": "dr.lee@clinic.example"}
    let claims = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        br#"{"iss":"https://accounts.google.com","email":"dr.lee@clinic.example","email_verified":true}"#,
    );
    s.stub.reply(
        200,
        &format!(r#"{{"access_token":"ya29.bound","refresh_token":"1//bound","expires_in":3599,"scope":"openid email","token_type":"Bearer","id_token":"eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln"}}"#),
        Duration::ZERO,
    );
    let query = [("code", "4/bound"), ("state", q["state"].as_str())];
    for cookie in [None, Some(other.as_str())] {
        let res = s.callback_with(&query, cookie).await;
        assert_eq!(res.status(), 400, "cookie {cookie:?}");
        assert!(res.text().await.unwrap().contains("another browser"));
    }
    assert!(
        s.rows().await.is_empty(),
        "a foreign callback stored tokens"
    );
    let res = s.callback_with(&query, Some(&mine)).await;
    assert_eq!(res.status(), 302);
    let cleared = res.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let email: Option<String> = common::pg(&s.schema)
        .await
        .query_one(
            "SELECT account_email FROM oauth_tokens WHERE tenant = 'org-7'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(email.as_deref(), Some("dr.lee@clinic.example"));
    s.app.stop().await;
}
