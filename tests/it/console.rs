//! The operator console over HTTP: off without CONSOLE_TOKEN; sign-in, the session cookie and
//! CSRF; the pages; live traffic and recent events; dead letters seen (redacted), replayed after
//! a fix, and purged, against real Redis and Postgres. `console_browser` drives the same flow
//! in a real headless Chromium.

use crate::common;

use std::time::Duration;

use common::{Dir, TestApp, fresh_schema, pg, spawn_app};
use engine::env::EnvSource;
use engine::server::reload::{EnvOrigin, Source, reload};

pub const TOKEN: &str = "console-test-token-9b1e4f0c2a7d38e5b6c1";
/// ENCRYPTION_KEY for tests with DATABASE_URL (the shipped Twilio pipelines read tenant secrets).
pub const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A queued pipeline writing `call_status` rows; `broken: true` makes its script fail every
/// event permanently (so events go to the dead letters), `false` is the fix.
pub fn orders(name: &str, broken: bool) -> String {
    format!(
        r#"name: {name}
route: {{method: POST, path: /hooks/{name}}}
redact:
  - json: /customer/phone
vars:
  broken: {broken}
queue:
  max_attempts: 1
transform:
  - name: status
    inline: |
      if event.vars.broken {{ fail_permanent("the status script is broken") }}
      #{{ call_id: event.body.call_id, status: event.body.status, occurred_at: event.received_at, event_id: event.id }}
    sink: status
sinks:
  status:
    postgres: {{table: call_status}}
"#
    )
}

/// The shipped pipelines plus `orders(name, broken)`, Redis keys under a private prefix.
pub fn project(name: &str, broken: bool) -> Dir {
    let dir = Dir::shipped_copy();
    let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    let prefix = format!(
        "console:{}:{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    // without DATABASE_URL (development) rows go to JSON lines under data_dir: the temp dir
    let data = dir.path().join("data");
    dir.write(
        "engine.yaml",
        &format!(
            "{base}\nredis_key_prefix: '{prefix}'\ndata_dir: '{}'\n",
            data.display()
        ),
    );
    dir.write(&format!("{name}.yaml"), &orders(name, broken));
    dir
}

/// Load `dir` again with `env` and swap it in (what SIGHUP does), then wait for the previous
/// set's workers to stop.
pub async fn reload_with(app: &TestApp, dir: &Dir, env: &[(&str, &str)]) {
    let live = app.live();
    let source = Source {
        dir: dir.path().to_path_buf(),
        env: EnvOrigin::Fixed(EnvSource::from_pairs(env.iter().copied())),
    };
    let swapped = live.clone();
    tokio::task::spawn_blocking(move || reload(&swapped, &source, Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    // the old set's workers (running the broken script) are gone before anything is replayed
    live.retired().await;
}

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A signed-in session: its cookie header and its CSRF token.
pub(crate) struct Session {
    pub(crate) cookie: String,
    csrf: String,
}

/// A sign-in attempt with `token`; the answer as it comes (redirects not followed).
async fn sign_in_with(app: &TestApp, token: &str) -> reqwest::Response {
    client()
        .post(app.url("/console/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

pub(crate) async fn sign_in(app: &TestApp) -> Session {
    let res = sign_in_with(app, TOKEN).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console/pipelines");
    let set = res.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = get(app, &cookie, "/console/pipelines").await.1;
    Session {
        cookie,
        csrf: common::csrf_in(&page),
    }
}

pub(crate) async fn get(app: &TestApp, cookie: &str, path: &str) -> (u16, String) {
    let res = client()
        .get(app.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

async fn post_form(
    app: &TestApp,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    client()
        .post(app.url(path))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

/// The dead-letter page of `name` once it lists `n` letters.
async fn dead_letters_page(app: &TestApp, s: &Session, name: &str, n: usize) -> String {
    common::eventually_async(Duration::from_secs(10), || async {
        let path = format!("/console/dead-letters?pipeline={name}");
        let (_, page) = get(app, &s.cookie, &path).await;
        (page.matches(r#"name="id""#).count() == n).then_some(page)
    })
    .await
    .unwrap_or_else(|| panic!("{n} dead letters never appeared on {name}'s page"))
}

async fn post_order(app: &TestApp, name: &str, call: &str, phone: &str) -> u16 {
    app.client
        .post(app.url(&format!("/hooks/{name}")))
        .json(&serde_json::json!({
            "call_id": call,
            "status": "ringing",
            "customer": {"phone": phone}
        }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_console_is_off_without_a_token() {
    let dir = Dir::shipped_copy();
    let app = spawn_app(dir.path(), &[]).await;
    for path in [
        "/console",
        "/console/login",
        "/console/pipelines",
        "/console/assets/console.js",
    ] {
        let res = client().get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    let res = sign_in_with(&app, TOKEN).await;
    assert_eq!(res.status(), 404);
    assert!(res.headers().get("set-cookie").is_none());
    app.stop().await;
}

#[tokio::test]
async fn sign_in_sessions_and_csrf() {
    let dir = Dir::shipped_copy();
    let app = spawn_app(dir.path(), &[("CONSOLE_TOKEN", TOKEN)]).await;

    // not signed in: pages send to the sign-in page, the API answers 401
    let res = client()
        .get(app.url("/console/queues"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console/login");
    let res = client()
        .get(app.url("/console/api/traffic"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = client()
        .get(app.url("/console/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(res.headers()["cache-control"], "no-store");

    // a wrong token: 401, no cookie
    let res = sign_in_with(&app, "console-test-token-wrong").await;
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("set-cookie").is_none());

    // the right one: a strict session cookie
    let res = sign_in_with(&app, TOKEN).await;
    let set = res.headers()["set-cookie"].to_str().unwrap();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
        assert!(set.contains(flag), "{set}");
    }
    assert!(!set.contains(TOKEN), "the cookie does not carry the token");

    let s = sign_in(&app).await;
    for (path, expect) in [
        ("/console/pipelines", "POST /api/webhooks/vapi"),
        ("/console/traffic", "data-source=\"/console/api/traffic\""),
        ("/console/queues", "in-process"),
        ("/console/dead-letters", "vapi"),
        ("/console/events", "twilio-sms"),
        (
            "/console/events?pipeline=vapi",
            "Index fields: call_id, org_id, type",
        ),
        ("/console/dead-letters?pipeline=vapi", "None."),
    ] {
        let (status, page) = get(&app, &s.cookie, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(page.contains(expect), "{path}: {page}");
        for secret in [
            TOKEN,
            "dev-vapi-webhook-secret",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(!page.contains(secret), "{path} shows a secret");
        }
    }
    let (status, _) = get(&app, &s.cookie, "/console/dead-letters?pipeline=nope").await;
    assert_eq!(status, 404);
    // the icon every page links, so browsers do not ask the webhook routes for /favicon.ico
    assert!(
        get(&app, &s.cookie, "/console/pipelines")
            .await
            .1
            .contains(r#"rel="icon" type="image/svg+xml" href="/console/assets/favicon.svg""#)
    );
    let icon = client()
        .get(app.url("/console/assets/favicon.svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    let js = client()
        .get(app.url("/console/assets/console.js"))
        .send()
        .await
        .unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );

    // a tampered cookie is no session
    let tampered = format!("{}x", s.cookie);
    let res = client()
        .get(app.url("/console/pipelines"))
        .header("cookie", &tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);

    // state changes need this session's CSRF token
    let form = [("pipeline", "vapi"), ("all", "1")];
    assert_eq!(
        post_form(&app, &s.cookie, "/console/dead-letters/purge", &form)
            .await
            .status(),
        403
    );
    let wrong = [
        ("pipeline", "vapi"),
        ("all", "1"),
        ("csrf", "not-the-token"),
    ];
    assert_eq!(
        post_form(&app, &s.cookie, "/console/dead-letters/purge", &wrong)
            .await
            .status(),
        403
    );
    let other = sign_in(&app).await;
    let theirs = [
        ("pipeline", "vapi"),
        ("all", "1"),
        ("csrf", other.csrf.as_str()),
    ];
    assert_eq!(
        post_form(&app, &s.cookie, "/console/dead-letters/purge", &theirs)
            .await
            .status(),
        403,
        "another session's token"
    );
    let res = post_form(&app, &s.cookie, "/console/logout", &[("csrf", &s.csrf)]).await;
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    app.stop().await;
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_client() {
    let dir = Dir::shipped_copy();
    let app = spawn_app(dir.path(), &[("CONSOLE_TOKEN", TOKEN)]).await;
    for _ in 0..engine::console::LOGIN_ATTEMPTS_PER_MINUTE {
        let res = sign_in_with(&app, "guess-guess-guess-guess").await;
        assert_eq!(res.status(), 401);
    }
    let res = sign_in_with(&app, TOKEN).await;
    assert_eq!(res.status(), 429, "even the right token waits");
    assert!(res.headers().get("set-cookie").is_none());
    // one answer: the sign-in page (one content type), saying the wait Retry-After says
    let types: Vec<_> = res.headers().get_all("content-type").iter().collect();
    assert_eq!(types, ["text/html; charset=utf-8"]);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let page = res.text().await.unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(!page.contains(r#"{"error""#), "{page}");
    let said = format!("Try again in {wait} second");
    assert!(page.contains(&said), "{said} in {page}");
    app.stop().await;
}

/// Two instances of `project(name)` with the console on, sharing the Redis (keys under a
/// prefix of the test's own).
async fn two_instances(name: &str) -> (TestApp, TestApp, Dir) {
    let dir = project(name, false);
    let env = [("CONSOLE_TOKEN", TOKEN), ("REDIS_URL", common::redis())];
    let a = spawn_app(dir.path(), &env).await;
    let b = spawn_app(dir.path(), &env).await;
    (a, b, dir)
}

/// Signing out ends the session on the server: a cookie copied before is refused afterwards, on
/// this instance and on another sharing the Redis; "sign out everywhere" ends every session.
/// A refused CSRF check is a page, not JSON.
#[tokio::test]
async fn signing_out_ends_the_session_on_every_instance() {
    let (a, b, _dir) = two_instances("orders").await;
    let s = sign_in(&a).await;
    assert_eq!(get(&b, &s.cookie, "/console/queues").await.0, 200);

    // a CSRF refusal: the browser shows a page
    let res = post_form(&a, &s.cookie, "/console/logout", &[("csrf", "wrong")]).await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let page = res.text().await.unwrap();
    assert!(
        page.contains("CSRF token") && page.contains("Reload the page"),
        "{page}"
    );

    let copied = s.cookie.clone();
    let res = post_form(
        &a,
        &s.cookie,
        "/console/logout",
        &[("csrf", &s.csrf), ("scope", "this")],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console/login?done=signed-out");
    for app in [&a, &b] {
        let res = client()
            .get(app.url("/console/queues"))
            .header("cookie", &copied)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 303, "the copied cookie opens nothing");
        assert_eq!(res.headers()["location"], "/console/login");
    }

    // everywhere: both sessions (one per instance) end, a new sign-in works
    let one = sign_in(&a).await;
    let two = sign_in(&b).await;
    let res = post_form(
        &b,
        &two.cookie,
        "/console/logout",
        &[("csrf", &two.csrf), ("scope", "everywhere")],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(get(&a, &one.cookie, "/console/queues").await.0, 303);
    assert_eq!(get(&b, &two.cookie, "/console/queues").await.0, 303);
    // a session begun after: the clock is in ms, so wait past the instant of the sign-out
    tokio::time::sleep(Duration::from_millis(5)).await;
    let three = sign_in(&a).await;
    assert_eq!(get(&b, &three.cookie, "/console/queues").await.0, 200);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn traffic_and_recent_events_are_shown_redacted() {
    let name = "orders_traffic";
    let dir = project(name, false);
    let app = spawn_app(dir.path(), &[("CONSOLE_TOKEN", TOKEN)]).await;
    let s = sign_in(&app).await;
    assert_eq!(
        post_order(
            &app,
            name,
            "9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
            "+15550109"
        )
        .await,
        200
    );
    let unsigned = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .header("authorization", "Bearer wrong")
        .header("content-type", "application/json")
        .body(r#"{"message":{"type":"status-update","customer":{"number":"+15550177"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    // the refused request is in the sample, with its reason, its credential and the caller's
    // number not shown
    let (_, page) = get(&app, &s.cookie, "/console/events?pipeline=vapi").await;
    let refused = &page[page
        .find("Refused requests")
        .unwrap_or_else(|| panic!("{page}"))..];
    assert!(refused.contains("<td class=\"n\">401</td>"), "{refused}");
    assert!(refused.contains("bad_signature"), "{refused}");
    // its Type column: the field the pipeline branches on (Vapi's /message/type)
    assert!(
        refused.contains("<td><code>status-update</code></td>"),
        "{refused}"
    );
    assert!(
        !page.contains("Bearer wrong") && !page.contains("+15550177"),
        "{page}"
    );

    // the charts: a time axis; a series that is zero throughout (no 5xx) is not drawn
    let (_, traffic) = get(&app, &s.cookie, "/console/traffic").await;
    let card = &traffic[traffic
        .find(&format!("data-pipeline=\"{name}\""))
        .unwrap_or_else(|| panic!("{traffic}"))..];
    assert!(card.contains(r#"<div class="axis" aria-hidden="true"><span>−120 s</span><span>−60 s</span><span>now</span></div>"#), "{card}");
    assert!(
        card.contains(r#"class="s2 idle" data-key="server_errors""#),
        "{card}"
    );
    assert!(card.contains(r#"class="s0" data-key="ok""#), "{card}");
    let (status, json) = get(&app, &s.cookie, "/console/api/traffic").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let of = |p: &str| {
        v["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["pipeline"] == p)
            .unwrap()
            .clone()
    };
    let orders = of(name);
    assert_eq!(orders["minute"]["ok"], 1);
    assert_eq!(orders["seconds"].as_array().unwrap().len(), 120);
    assert!(orders["minute"]["p99_ms"].as_f64().unwrap() > 0.0);
    // the samples are this app's own (no other test's traffic in them): exactly the one refusal
    assert_eq!(of("vapi")["minute"]["verify_failures"], 1);

    // a reload (SIGHUP) keeps what the console shows: the counts and the refused sample
    reload_with(&app, &dir, &[("CONSOLE_TOKEN", TOKEN)]).await;
    let (_, json) = get(&app, &s.cookie, "/console/api/traffic").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let after = v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pipeline"] == name)
        .unwrap()
        .clone();
    assert_eq!(after["minute"]["ok"], 1, "{json}");
    let (_, page) = get(&app, &s.cookie, "/console/events?pipeline=vapi").await;
    assert!(page.contains("bad_signature"), "{page}");

    // the pipeline's archived event, on its own page
    let (_, list) = get(&app, &s.cookie, &format!("/console/events?pipeline={name}")).await;
    let link = list
        .split("href=\"/console/events/show?")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("{list}"))
        .replace("&amp;", "&");
    let (_, page) = get(&app, &s.cookie, &format!("/console/events/show?{link}")).await;
    assert!(
        page.contains("9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"),
        "{page}"
    );
    assert!(page.contains("[redacted]"), "{page}");
    assert!(
        !page.contains("+15550109"),
        "the redacted phone number is not shown"
    );
    app.stop().await;
}

#[tokio::test]
async fn dead_letters_are_seen_replayed_after_a_fix_and_purged() {
    let name = "orders_dlq";
    let (database, schema) = fresh_schema().await;
    let env = [
        ("CONSOLE_TOKEN", TOKEN),
        ("REDIS_URL", common::redis()),
        ("DATABASE_URL", database.as_str()),
        ("ENCRYPTION_KEY", KEY),
    ];
    let dir = project(name, true);
    let app = spawn_app(dir.path(), &env).await;
    let db = pg(&schema).await;
    let s = sign_in(&app).await;
    let calls = [
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333",
    ];
    for call in calls {
        assert_eq!(post_order(&app, name, call, "+15550123").await, 200);
    }
    let page = dead_letters_page(&app, &s, name, 3).await;
    assert!(page.contains("the status script is broken"), "{page}");
    assert!(page.contains("3 dead letters"), "{page}");
    assert!(!page.contains("+15550123"), "redacted");
    let ids: Vec<String> = page
        .split(r#"name="id" value=""#)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect();
    // newest first: the third call's letter is first
    let (_, queues) = get(&app, &s.cookie, "/console/queues").await;
    assert!(queues.contains(name), "{queues}");

    // purge the newest
    let res = post_form(
        &app,
        &s.cookie,
        "/console/dead-letters/purge",
        &[("csrf", &s.csrf), ("pipeline", name), ("id", &ids[0])],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        format!("/console/dead-letters?pipeline={name}&done=purged-1")
    );

    // fix the script, then replay one selected letter, then all that are left
    dir.write(&format!("{name}.yaml"), &orders(name, false));
    reload_with(&app, &dir, &env).await;
    let res = post_form(
        &app,
        &s.cookie,
        "/console/dead-letters/replay",
        &[("csrf", &s.csrf), ("pipeline", name), ("id", &ids[1])],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("done=replayed-1")
    );
    common::eventually_async(Duration::from_secs(10), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM call_status WHERE call_id = $1::text::uuid",
                &[&calls[1]],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await
    .expect("the replayed event's row");
    let res = post_form(
        &app,
        &s.cookie,
        "/console/dead-letters/replay",
        &[("csrf", &s.csrf), ("pipeline", name), ("all", "1")],
    )
    .await;
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .ends_with("done=replayed-1")
    );
    common::eventually_async(Duration::from_secs(10), || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM call_status", &[])
            .await
            .unwrap()
            .get(0);
        (n == 2).then_some(())
    })
    .await
    .expect("both replayed rows, not the purged one");
    let (_, page) = get(
        &app,
        &s.cookie,
        &format!("/console/dead-letters?pipeline={name}"),
    )
    .await;
    assert!(page.contains("None."), "{page}");
    app.stop().await;
}

/// The in-process queue of a development run (no REDIS_URL): its dead letters are listed
/// (redacted) and purged the same way. (That actions are logged with the request id, and the
/// token never, is checked on the real binary's production logs: `cli::serve_logs_listening_and_stops_on_sigterm`.)
#[tokio::test]
async fn the_in_process_queue_s_dead_letters_are_shown_and_purged() {
    let name = "orders_in_process";
    let dir = project(name, true);
    let app = spawn_app(dir.path(), &[("CONSOLE_TOKEN", TOKEN)]).await;
    let s = sign_in(&app).await;
    for call in [
        "55555555-5555-4555-8555-555555555555",
        "66666666-6666-4666-8666-666666666666",
    ] {
        assert_eq!(post_order(&app, name, call, "+15550177").await, 200);
    }
    let page = dead_letters_page(&app, &s, name, 2).await;
    assert!(!page.contains("+15550177"));
    let res = client()
        .post(app.url("/console/dead-letters/purge"))
        .header("cookie", &s.cookie)
        .header("x-request-id", "console-purge-7")
        .form(&[("csrf", s.csrf.as_str()), ("pipeline", name), ("all", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["location"],
        format!("/console/dead-letters?pipeline={name}&done=purged-2")
    );
    let (_, page) = get(
        &app,
        &s.cookie,
        &format!("/console/dead-letters?pipeline={name}"),
    )
    .await;
    assert!(page.contains("None."), "{page}");
    app.stop().await;
}

/// Vapi's end-of-call report for call `i`.
fn report(i: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/payloads/vapi/end-of-call-report.json"),
    )
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["message"]["call"]["id"] = format!("11111111-0000-4000-8000-{i:012}").into();
    v["message"]["timestamp"] = (1_732_550_400_000u64 + i as u64).into();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_events_page_finds_archived_events_and_replays_them_after_a_fix() {
    let dir = project("orders", false);
    dir.edit("vapi.yaml", |s| {
        s.replace("in: [end-of-call-report]", "in: [end-of-call-reprot]")
    });
    let env = [("CONSOLE_TOKEN", TOKEN)];
    let app = spawn_app(dir.path(), &env).await;
    for i in 0..3 {
        let status = app
            .client
            .post(app.url("/api/webhooks/vapi"))
            .header("authorization", "Bearer dev-vapi-webhook-secret")
            .header("content-type", "application/json")
            .body(report(i))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let s = sign_in(&app).await;
    let search = "/console/events?pipeline=vapi&outcome=dropped";
    let page = common::eventually_async(Duration::from_secs(10), || async {
        let (_, page) = get(&app, &s.cookie, search).await;
        page.contains("3 events match").then_some(page)
    })
    .await
    .expect("the three dropped reports are listed");
    assert!(page.contains("no step with a sink matched"), "{page}");
    // by an index field
    let one = "/console/events?pipeline=vapi&where=call_id%3D11111111-0000-4000-8000-000000000001";
    let (status, page) = get(&app, &s.cookie, one).await;
    assert_eq!(status, 200);
    assert!(page.contains("1 event matches"), "{page}");
    // an unknown field says which there are
    let (_, page) = get(
        &app,
        &s.cookie,
        "/console/events?pipeline=vapi&where=phone%3D1",
    )
    .await;
    assert!(page.contains("call_id, org_id, type"), "{page}");

    // the fix goes live; the dry run counts and writes nothing
    dir.edit("vapi.yaml", |s| {
        s.replace("end-of-call-reprot", "end-of-call-report")
    });
    reload_with(&app, &dir, &env).await;
    let form = [
        ("csrf", s.csrf.as_str()),
        ("pipeline", "vapi"),
        ("outcome", "dropped"),
        ("since", ""),
        ("where", ""),
    ];
    let res = post_form(&app, &s.cookie, "/console/events/replay-preview", &form).await;
    assert_eq!(res.status(), 200);
    let preview = res.text().await.unwrap();
    assert!(preview.contains("<strong>3</strong> events"), "{preview}");
    assert!(preview.contains("written"), "{preview}");
    let rows = || {
        std::fs::read_to_string(dir.path().join("data/call_logs.jsonl"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(rows(), 0);
    // without the CSRF token: refused
    let res = post_form(&app, &s.cookie, "/console/events/replay", &form[1..]).await;
    assert_eq!(res.status(), 403);
    let res = post_form(&app, &s.cookie, "/console/events/replay", &form).await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/console/events/jobs");
    let jobs = common::eventually_async(Duration::from_secs(10), || async {
        let (_, page) = get(&app, &s.cookie, "/console/events/jobs").await;
        page.contains("done").then_some(page)
    })
    .await
    .expect("the replay finishes");
    assert!(jobs.contains("3/3"), "{jobs}");
    assert_eq!(rows(), 3);
    // the event's page tells its story
    let (_, page) = get(&app, &s.cookie, one).await;
    let link = page
        .split("href=\"/console/events/show?")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let (status, event) = get(&app, &s.cookie, &format!("/console/events/show?{link}")).await;
    assert_eq!(status, 200);
    assert!(
        event.contains("dropped") && event.contains("1 row(s) to call_logs"),
        "{event}"
    );
    assert!(event.contains("end-of-call-report"), "{event}");
    app.stop().await;
}

/// An archived event whose request was traced shows its trace id on its page (what a tracing
/// backend finds it by); one that was not shows none.
#[tokio::test(flavor = "multi_thread")]
async fn an_archived_events_page_names_its_trace() {
    let dir = project("traced", false);
    let app = spawn_app(dir.path(), &[("CONSOLE_TOKEN", TOKEN)]).await;
    let settings = engine::config::Settings {
        data_dir: dir.path().join("data").to_str().unwrap().to_string(),
        ..Default::default()
    };
    let store = std::sync::Arc::new(engine::archive::Store::new(None, &settings));
    let recorder = engine::archive::Recorder::new(store.clone(), "vapi", &Default::default(), None);
    let mut traced = common::event_input(
        "ev-traced",
        "vapi",
        "/api/webhooks/vapi",
        "application/json",
        report(1),
    );
    traced.received_at_ms = chrono::Utc::now().timestamp_millis();
    // the W3C Trace Context specification's example
    traced.trace = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let mut plain = traced.clone();
    plain.id = "ev-plain".into();
    plain.trace = None;
    let step = || engine::archive::Step::new(engine::archive::Outcome::Dropped, 1);
    store
        .write(&[
            recorder.note(&traced, None, step()),
            recorder.note(&plain, None, step()),
        ])
        .await
        .unwrap();
    let s = sign_in(&app).await;
    let (status, page) = get(
        &app,
        &s.cookie,
        "/console/events/show?pipeline=vapi&id=ev-traced",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("trace <code>4bf92f3577b34da6a3ce929d0e0e4736</code>"),
        "{page}"
    );
    let (status, page) = get(
        &app,
        &s.cookie,
        "/console/events/show?pipeline=vapi&id=ev-plain",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("ev-plain") && !page.contains("trace <code>"),
        "{page}"
    );
    app.stop().await;
}

/// The Queues page says how many workers each process runs for a queue and how many engine
/// processes read it now, idle or busy, across instances; a stopped one leaves at once.
#[tokio::test]
async fn queues_show_workers_per_instance_and_the_instances_reading() {
    let name = "orders_workers";
    let (a, b, _dir) = two_instances(name).await;
    let s = sign_in(&a).await;
    let row = |page: &str| -> String {
        let at = page
            .find(&format!("<td>{name}</td>"))
            .unwrap_or_else(|| panic!("{page}"));
        page[at..page[at..].find("</tr>").map_or(page.len(), |e| at + e)].to_string()
    };
    let reading = |n: u64| {
        let s = &s;
        let a = &a;
        async move {
            common::eventually_async(Duration::from_secs(10), || async {
                let (_, page) = get(a, &s.cookie, "/console/queues").await;
                let r = row(&page);
                r.ends_with(&format!("<td class=\"n\">{n}</td>"))
                    .then_some(r)
            })
            .await
        }
    };
    // idle queues: both processes' workers are reading, and say so
    let r = reading(2).await.expect("two instances reading");
    assert!(r.contains("4 <small>per instance</small>"), "{r}");
    b.stop().await;
    assert!(reading(1).await.is_some(), "the stopped one left");
    a.stop().await;
}
