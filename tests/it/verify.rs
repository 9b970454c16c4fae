//! Verification through a real socket, and per-tenant secrets against real Postgres.

use crate::common;

use std::time::Duration;

use common::{Dir, fresh_schema, pg, shipped, sign, spawn_app};
use serde_json::Value;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

#[tokio::test]
async fn unsigned_vapi_request_is_401_as_the_seed_checks() {
    let app = spawn_app(&shipped(), &[]).await;
    // curl -X POST https://api.voxanne.ai/api/webhooks/vapi
    let res = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let unsigned: Value = res.json().await.unwrap();
    assert_eq!(
        unsigned,
        serde_json::json!({"error": "unauthorized", "message": "Request verification failed."})
    );
    // a wrong token gets the same answer: nothing says which part failed
    let res = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .header("authorization", "Bearer not-the-secret")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap(), unsigned);
    app.stop().await;
}

/// Which pipeline signs, loaded how.
struct Signer<'a> {
    dir: &'a std::path::Path,
    env: &'a [(&'a str, &'a str)],
    pipeline: &'a str,
}

async fn post_signed(
    app: &common::TestApp,
    path: &str,
    signed_url: &str,
    by: &Signer<'_>,
    body: &str,
    extra: &[(&str, &str)],
) -> reqwest::StatusCode {
    let mut req = app
        .client
        .post(app.url(path))
        .header(FORM.0, FORM.1)
        .body(body.to_string());
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    for (k, v) in sign(
        by.dir,
        by.env,
        by.pipeline,
        signed_url,
        &[FORM],
        body.as_bytes(),
    ) {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn twilio_url_comes_from_backend_url() {
    let env = [("BACKEND_URL", "https://api.example.com")];
    let app = spawn_app(&shipped(), &env).await;
    let body = "AccountSid=AC1&MessageSid=SM1&Body=hello";
    let public = "https://api.example.com/api/twilio/sms";
    assert_eq!(
        post_signed(
            &app,
            "/api/twilio/sms",
            public,
            &Signer {
                dir: &shipped(),
                env: &env,
                pipeline: "twilio-sms"
            },
            body,
            &[]
        )
        .await,
        200
    );
    // signed for the URL the process sees, not the public one: refused
    let local = app.url("/api/twilio/sms");
    assert_eq!(
        post_signed(
            &app,
            "/api/twilio/sms",
            &local,
            &Signer {
                dir: &shipped(),
                env: &env,
                pipeline: "twilio-sms"
            },
            body,
            &[]
        )
        .await,
        401
    );
    // the query string is part of what Twilio signs
    let with_query = format!("{public}?attempt=2");
    assert_eq!(
        post_signed(
            &app,
            "/api/twilio/sms?attempt=2",
            &with_query,
            &Signer {
                dir: &shipped(),
                env: &env,
                pipeline: "twilio-sms"
            },
            body,
            &[]
        )
        .await,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn twilio_url_from_forwarded_headers_only_behind_trusted_proxies() {
    let body = "AccountSid=AC1&CallSid=CA1";
    let public = "https://hooks.example.com/api/twilio/voice";
    let fwd = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "hooks.example.com"),
    ];

    let trusted = Dir::shipped_copy();
    trusted.write("engine.yaml", "trusted_proxies: [127.0.0.1]\n");
    let app = spawn_app(trusted.path(), &[]).await;
    assert_eq!(
        post_signed(
            &app,
            "/api/twilio/voice",
            public,
            &Signer {
                dir: trusted.path(),
                env: &[],
                pipeline: "twilio-voice"
            },
            body,
            &fwd
        )
        .await,
        200
    );
    app.stop().await;

    // the same forged headers from a peer that is not a trusted proxy are ignored
    let app = spawn_app(&shipped(), &[]).await;
    assert_eq!(
        post_signed(
            &app,
            "/api/twilio/voice",
            public,
            &Signer {
                dir: &shipped(),
                env: &[],
                pipeline: "twilio-voice"
            },
            body,
            &fwd
        )
        .await,
        401
    );
    app.stop().await;
}

/// A copy of the shipped pipelines plus a Twilio pipeline that only knows per-tenant tokens.
fn tenant_dir() -> Dir {
    let dir = Dir::shipped_copy();
    dir.write(
        "tenant-only.yaml",
        "name: tenant-only\nroute: {method: POST, path: /t/sms}\nverify:\n  twilio:\n    tenant:\n      key: {form: AccountSid}\n      credential: twilio_auth_token\n",
    );
    dir
}

fn signed_form(token: &str, url: &str, body: &str) -> String {
    // X-Twilio-Signature computed by the engine's own Twilio scheme (checked against Twilio's
    // published vectors in the unit tests).
    use engine::verify::{Inbound, Scheme, twilio::Twilio};
    let mut h = salvo::http::HeaderMap::new();
    h.insert("content-type", FORM.1.parse().unwrap());
    let req = Inbound {
        method: "POST",
        url,
        headers: &h,
        body: body.as_bytes(),
        now: 0,
    };
    Twilio.sign(&req, token.as_bytes()).remove(0).1
}

async fn post_twilio(
    app: &common::TestApp,
    path: &str,
    token: &str,
    body: &str,
) -> reqwest::Response {
    let url = app.url(path);
    app.client
        .post(&url)
        .header(FORM.0, FORM.1)
        .header("x-twilio-signature", signed_form(token, &url, body))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn tenant_secrets_from_postgres() {
    let (db, schema) = fresh_schema().await;
    let tenant_token = "fedcba9876543210fedcba9876543210";
    let pool = engine::db::pool(&db, 1).unwrap();
    let ring = engine::crypto::Keyring::new(K1, &[]).unwrap();
    engine::verify::tenant::store(
        &pool,
        &ring,
        "AC0123456789abcdef0123456789abcdef",
        "twilio_auth_token",
        tenant_token,
    )
    .await
    .unwrap();

    // stored encrypted, in the versioned format
    let row = pg(&schema)
        .await
        .query_one(
            "SELECT secret FROM tenant_credentials WHERE tenant = 'AC0123456789abcdef0123456789abcdef'",
            &[],
        )
        .await
        .unwrap();
    let stored: String = row.get(0);
    assert!(
        stored.starts_with(&format!("v1:{}:", ring.current_id())),
        "{stored}"
    );
    assert!(!stored.contains(tenant_token));

    let dir = tenant_dir();
    let env = [("DATABASE_URL", db.as_str()), ("ENCRYPTION_KEY", K1)];
    let app = spawn_app(dir.path(), &env).await;
    let acme = "AccountSid=AC0123456789abcdef0123456789abcdef&MessageSid=SM1&Body=hi";
    // the tenant's own token
    assert_eq!(
        post_twilio(&app, "/api/twilio/sms", tenant_token, acme)
            .await
            .status(),
        200
    );
    // the fallback token does not stand in for a tenant that has its own
    assert_eq!(
        post_twilio(
            &app,
            "/api/twilio/sms",
            "0123456789abcdef0123456789abcdef",
            acme
        )
        .await
        .status(),
        401
    );
    // a tenant without a stored token falls back to TWILIO_AUTH_TOKEN where one is configured ...
    let other = "AccountSid=ACffffffffffffffffffffffffffffffff&MessageSid=SM2";
    assert_eq!(
        post_twilio(
            &app,
            "/api/twilio/sms",
            "0123456789abcdef0123456789abcdef",
            other
        )
        .await
        .status(),
        200
    );
    // ... and is unknown (401) where none is
    assert_eq!(
        post_twilio(&app, "/t/sms", "0123456789abcdef0123456789abcdef", other)
            .await
            .status(),
        401
    );
    assert_eq!(
        post_twilio(&app, "/t/sms", tenant_token, acme)
            .await
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn tenant_key_rotation_and_wrong_key() {
    let (db, _schema) = fresh_schema().await;
    let token = "00112233445566778899aabbccddeeff";
    let pool = engine::db::pool(&db, 1).unwrap();
    engine::verify::tenant::store(
        &pool,
        &engine::crypto::Keyring::new(K1, &[]).unwrap(),
        "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "twilio_auth_token",
        token,
    )
    .await
    .unwrap();
    let body = "AccountSid=ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa&MessageSid=SM1";
    let dir = tenant_dir();

    // rotated: new key current, old key still readable
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("ENCRYPTION_KEY", K2),
        ("ENCRYPTION_KEY_PREVIOUS", K1),
    ];
    let app = spawn_app(dir.path(), &env).await;
    assert_eq!(post_twilio(&app, "/t/sms", token, body).await.status(), 200);
    app.stop().await;

    // the old key gone: the credential cannot be read, which is the operator's problem, not the
    // provider's: 503 so Twilio retries once the key is fixed
    let env = [("DATABASE_URL", db.as_str()), ("ENCRYPTION_KEY", K2)];
    let app = spawn_app(dir.path(), &env).await;
    let res = post_twilio(&app, "/t/sms", token, body).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    app.stop().await;
}

#[tokio::test]
async fn database_outage_is_503_not_401() {
    let dir = tenant_dir();
    let env = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test"),
        ("ENCRYPTION_KEY", K1),
    ];
    let app = spawn_app(dir.path(), &env).await;
    let res = post_twilio(
        &app,
        "/t/sms",
        "00112233445566778899aabbccddeeff",
        "AccountSid=AC00000000000000000000000000000000&MessageSid=SM1",
    )
    .await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "unavailable");
    app.stop().await;
}

#[tokio::test]
async fn lookups_are_cached() {
    let (db, schema) = fresh_schema().await;
    let pool = engine::db::pool(&db, 2).unwrap();
    let ring = engine::crypto::Keyring::new(K1, &[]).unwrap();
    let store = engine::verify::TenantSecrets::new(pool, ring, Duration::from_secs(60), 100);
    store.set("AC_c", "twilio_auth_token", "tok").await.unwrap();
    assert!(!store.is_cached("AC_c", "twilio_auth_token"));
    assert_eq!(
        store
            .get("AC_c", "twilio_auth_token")
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("tok")
    );
    assert!(store.is_cached("AC_c", "twilio_auth_token"));
    // served from the cache: the row is gone but the lookup still answers
    pg(&schema)
        .await
        .execute("DELETE FROM tenant_credentials", &[])
        .await
        .unwrap();
    assert_eq!(
        store
            .get("AC_c", "twilio_auth_token")
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("tok")
    );
    // unknown tenants are cached as absent too
    assert!(
        store
            .get("AC_none", "twilio_auth_token")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.is_cached("AC_none", "twilio_auth_token"));
    // set() replaces the cached value
    store
        .set("AC_c", "twilio_auth_token", "tok2")
        .await
        .unwrap();
    assert_eq!(
        store
            .get("AC_c", "twilio_auth_token")
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("tok2")
    );
}

#[tokio::test]
async fn cli_secrets_set_reads_stdin_and_stores_encrypted() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (db, schema) = fresh_schema().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env_clear()
        .env("DATABASE_URL", &db)
        .env("ENCRYPTION_KEY", K1)
        .args([
            "secrets",
            "set",
            "--tenant",
            "AC_cli",
            "--credential",
            "twilio_auth_token",
            "--pipelines",
        ])
        .arg(shipped())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"cli-token-value\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("cli-token-value"), "{stdout}");
    let row = pg(&schema)
        .await
        .query_one(
            "SELECT secret FROM tenant_credentials WHERE tenant = 'AC_cli'",
            &[],
        )
        .await
        .unwrap();
    let stored: String = row.get(0);
    let plain = engine::crypto::Keyring::new(K1, &[])
        .unwrap()
        .decrypt(&stored, "tenant_credentials/AC_cli/twilio_auth_token")
        .unwrap();
    assert_eq!(plain, b"cli-token-value");
}

mod validation {
    use super::*;

    use common::problems;

    #[test]
    fn literal_secret_refused() {
        let p = problems(
            &[(
                "x.yaml",
                "name: x\nroute: {method: POST, path: /x}\nverify:\n  github:\n    secret: hunter2hunter2\n",
            )],
            &[],
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("x.yaml:5:13: a secret must be a `${VAR}` reference"),
            "{p:?}"
        );
        assert!(!p[0].contains("hunter2"));
    }

    #[test]
    fn non_secret_variable_refused() {
        let p = problems(
            &[(
                "x.yaml",
                "name: x\nroute: {method: POST, path: /x}\nverify:\n  github:\n    secret: ${BACKEND_URL}\n",
            )],
            &[],
        );
        assert_eq!(
            p,
            [
                "x.yaml:5:13: `BACKEND_URL` holds a secret: mark it `x-secret: true` in env.schema.yaml (at /verify/github/secret)"
            ]
        );
    }

    #[test]
    fn unset_secret_refused_and_rotation_list_located() {
        let p = problems(
            &[(
                "x.yaml",
                "name: x\nroute: {method: POST, path: /x}\nverify:\n  slack:\n    secret:\n      - ${JWT_SECRET}\n      - ${SLACK_WEBHOOK_URL}\n",
            )],
            &[("JWT_SECRET", "0123456789abcdef0123456789abcdef0")],
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("x.yaml:7:9: `SLACK_WEBHOOK_URL` is not set"),
            "{p:?}"
        );
    }

    #[test]
    fn two_schemes_and_bad_template() {
        let p = problems(
            &[(
                "x.yaml",
                "name: x\nroute: {method: POST, path: /x}\nverify:\n  github: {secret: '${JWT_SECRET}'}\n  hmac: {secret: '${JWT_SECRET}', header: x-sig, payload: '{nope}'}\n",
            )],
            &[("JWT_SECRET", "0123456789abcdef0123456789abcdef0")],
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("one verification scheme per pipeline"),
            "{p:?}"
        );
        let p = problems(
            &[(
                "x.yaml",
                "name: x\nroute: {method: POST, path: /x}\nverify:\n  hmac: {secret: '${JWT_SECRET}', header: x-sig, payload: '{nope}'}\n",
            )],
            &[("JWT_SECRET", "0123456789abcdef0123456789abcdef0")],
        );
        assert!(
            p[0].starts_with("x.yaml:4:59: unknown placeholder `{nope}`"),
            "{p:?}"
        );
    }

    #[test]
    fn vapi_secret_is_required_in_production() {
        let prod = [
            ("NODE_ENV", "production"),
            ("REDIS_URL", "redis://r:6379"),
            ("DATABASE_URL", "postgres://db/x"),
            ("CORS_ORIGIN", "https://voxanne.ai"),
            ("ENCRYPTION_KEY", K1),
        ];
        let p = problems(&[], &prod);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("VAPI_WEBHOOK_SECRET: is required in production"),
            "{p:?}"
        );
    }
}

mod property {
    //! Any single-byte change to the body or the signature is rejected, for every scheme.
    use engine::config::verify::*;
    use engine::verify::{Context, Inbound, Verifier};
    use proptest::prelude::*;
    use salvo::http::{HeaderMap, HeaderName, HeaderValue};

    fn verifiers() -> Vec<(&'static str, Verifier)> {
        verifiers_with("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    }

    /// One verifier per signature scheme, all with the secret `key`.
    fn verifiers_with(key: &str) -> Vec<(&'static str, Verifier)> {
        let secret = || Secrets::One(key.into());
        let ts = || Timestamped {
            secret: secret(),
            tolerance_secs: 300,
        };
        let plain = || Plain { secret: secret() };
        let hmac = Hmac {
            secret: secret(),
            secret_encoding: SecretEncoding::Utf8,
            algorithm: Algorithm::Sha512,
            header: "x-sig".into(),
            prefix: "sha512=".into(),
            encoding: Encoding::Base64,
            payload: "{timestamp}:{body}".into(),
            timestamp_header: Some("x-ts".into()),
            id_header: None,
            tolerance_secs: 300,
        };
        let v = |cfg: Verify| Verifier::build(&cfg).unwrap();
        vec![
            (
                "twilio",
                v(Verify {
                    twilio: Some(TwilioConfig {
                        secret: Some(secret()),
                        tenant: None,
                    }),
                    ..Default::default()
                }),
            ),
            (
                "stripe",
                v(Verify {
                    stripe: Some(ts()),
                    ..Default::default()
                }),
            ),
            (
                "github",
                v(Verify {
                    github: Some(plain()),
                    ..Default::default()
                }),
            ),
            (
                "standard_webhooks",
                v(Verify {
                    standard_webhooks: Some(ts()),
                    ..Default::default()
                }),
            ),
            (
                "slack",
                v(Verify {
                    slack: Some(ts()),
                    ..Default::default()
                }),
            ),
            (
                "shopify",
                v(Verify {
                    shopify: Some(plain()),
                    ..Default::default()
                }),
            ),
            (
                "hmac",
                v(Verify {
                    hmac: Some(hmac),
                    ..Default::default()
                }),
            ),
        ]
    }

    const SIG_HEADERS: &[&str] = &[
        "x-twilio-signature",
        "stripe-signature",
        "x-hub-signature-256",
        "webhook-signature",
        "x-slack-signature",
        "x-shopify-hmac-sha256",
        "x-sig",
    ];

    fn run(v: &Verifier, headers: &HeaderMap, body: &[u8]) -> bool {
        let req = Inbound {
            method: "POST",
            url: "https://api.example.com/hook?x=1",
            headers,
            body,
            now: 1_700_000_000,
        };
        let ctx = Context {
            client_ip: "127.0.0.1".parse().unwrap(),
            tenant_id: None,
            tenants: None,
        };
        futures_lite(v.verify(&req, &ctx)).is_ok()
    }

    fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn every_scheme_rejects_missing_headers_and_wrong_secrets() {
        for (name, v) in verifiers() {
            let mut headers = HeaderMap::new();
            headers.insert(
                "content-type",
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            let body = b"AccountSid=AC1&Body=hello";
            let req = Inbound {
                method: "POST",
                url: "https://api.example.com/hook?x=1",
                headers: &headers,
                body,
                now: 1_700_000_000,
            };
            let ctx = Context {
                client_ip: "127.0.0.1".parse().unwrap(),
                tenant_id: None,
                tenants: None,
            };
            assert_eq!(
                futures_lite(v.verify(&req, &ctx)),
                Err(engine::verify::VerifyError::Rejected(
                    engine::verify::Reject::MissingCredentials
                )),
                "{name}: no headers"
            );
            // signed with another secret
            let (_, other) = verifiers_with("whsec_b3RoZXI=")
                .into_iter()
                .find(|(n, _)| *n == name)
                .unwrap();
            let mut signed = headers.clone();
            for (k, val) in other.sign(&req) {
                signed.insert(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(&val).unwrap(),
                );
            }
            assert!(!run(&v, &signed, body), "{name}: wrong secret accepted");
            assert!(
                run(&other, &signed, body),
                "{name}: its own secret verifies"
            );
        }
    }

    /// Each scheme names the header its signature travels in (`Scheme::credential_headers`, which
    /// no scheme can leave out), so that header is never stored with an event, whatever the
    /// shared `CREDENTIAL_HEADERS` list holds; the built-in schemes' fixed names are on that list
    /// too, so a request carrying them is cleaned on any pipeline.
    #[test]
    fn every_scheme_names_the_header_its_signature_travels_in() {
        let headers = HeaderMap::new();
        let req = Inbound {
            method: "POST",
            url: "https://api.example.com/hook?x=1",
            headers: &headers,
            body: b"{}",
            now: 1_700_000_000,
        };
        for (name, v) in verifiers() {
            let signed = v.sign(&req);
            let credentials: Vec<&str> = signed
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| v.reads_credential_from(k))
                .collect();
            assert!(!credentials.is_empty(), "{name}: signed {signed:?}");
            // hmac's header is whatever the pipeline names (`x-sig` here): only its verifier
            // knows it, which is what `reads_credential_from` shows above
            for k in credentials.iter().filter(|_| name != "hmac") {
                let k = k.to_ascii_lowercase();
                assert!(
                    engine::verify::CREDENTIAL_HEADERS.contains(&k.as_str()),
                    "{name}: {k} is not in CREDENTIAL_HEADERS"
                );
            }
        }
    }

    /// Every header a scheme reads: signatures, timestamps, ids.
    const READ_HEADERS: &[&str] = &[
        "x-twilio-signature",
        "stripe-signature",
        "x-hub-signature-256",
        "webhook-signature",
        "webhook-timestamp",
        "webhook-id",
        "x-slack-signature",
        "x-slack-request-timestamp",
        "x-shopify-hmac-sha256",
        "x-sig",
        "x-ts",
        "authorization",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Hostile header values (any visible bytes, separators, huge numbers, repeated
        /// `v1=`/`t=` parts) never panic a header parser and never verify.
        #[test]
        fn garbage_headers_are_refused_without_panics(
            values in proptest::collection::vec(
                prop_oneof![
                    "[ -~]{0,200}",
                    "(t=-?[0-9]{0,25},)?(v[01]=[0-9a-fA-F]{0,130},?){0,6}",
                    "v1,[A-Za-z0-9+/=]{0,100}( v1,[A-Za-z0-9+/=]{0,100}){0,4}",
                    "(sha1|sha256|sha512|v0)=[0-9a-f]{0,140}",
                    "-?[0-9]{1,30}",
                ],
                READ_HEADERS.len(),
            ),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in READ_HEADERS.iter().zip(&values) {
                if let Ok(v) = HeaderValue::from_str(value) {
                    headers.insert(HeaderName::from_static(name), v);
                }
            }
            for (name, v) in verifiers() {
                prop_assert!(!run(&v, &headers, &body), "{name}: garbage verified");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn single_byte_changes_are_rejected(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            pos in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            for (name, v) in verifiers() {
                let mut headers = HeaderMap::new();
                if name == "twilio" {
                    headers.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
                }
                let req = Inbound { method: "POST", url: "https://api.example.com/hook?x=1", headers: &headers, body: &body, now: 1_700_000_000 };
                for (k, val) in v.sign(&req) {
                    headers.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&val).unwrap());
                }
                prop_assert!(run(&v, &headers, &body), "{name}: signed request must verify");

                // one body byte changed
                let mut changed = body.clone();
                let i = pos.index(changed.len());
                changed[i] ^= flip;
                // Twilio signs the sorted parameters as name+value with no separators, so a change
                // that moves a `=`/`&` boundary or re-encodes a character (`+` vs `%20`) can leave
                // the signed string as it was: the same message to Twilio. Compare that string.
                let signed = |b: &[u8]| {
                    let mut p: Vec<_> = form_urlencoded::parse(b).collect();
                    p.sort();
                    p.iter().map(|(k, v)| format!("{k}{v}")).collect::<String>()
                };
                let same_params = name == "twilio" && signed(&changed) == signed(&body);
                if !same_params {
                    prop_assert!(!run(&v, &headers, &changed), "{name}: changed body byte {i} accepted");
                }

                // one signature byte changed to a different value (not just another case of the
                // same hex digit, which decodes to the same bytes)
                let sig_name = SIG_HEADERS.iter().find(|h| headers.contains_key(**h)).unwrap();
                let sig = headers[*sig_name].to_str().unwrap().to_string();
                let j = pos.index(sig.len());
                let mut bytes = sig.into_bytes();
                let replacement = if bytes[j] == b'0' { b'1' } else { b'0' };
                bytes[j] = replacement;
                let mut tampered = headers.clone();
                tampered.insert(HeaderName::from_bytes(sig_name.as_bytes()).unwrap(), HeaderValue::from_bytes(&bytes).unwrap());
                prop_assert!(!run(&v, &tampered, &body), "{name}: changed signature byte {j} accepted");
            }
        }
    }
}
