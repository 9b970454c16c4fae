//! Tool calls that act, end to end: the shipped Vapi pipeline answering `check_availability` and
//! `book_appointment` from the calling organisation's Google Calendar, through the real server,
//! with the organisation's tokens encrypted in a real database and a local stand-in of Google's
//! token endpoint and Calendar API on 127.0.0.1 that follows their documented requests and
//! answers (freeBusy, events.insert with a client-chosen id and 409 on a duplicate, events.get,
//! 401 for an unknown token, `invalid_grant` for a revoked refresh token).

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Dir, Received, Stub};
use serde_json::{Value, json};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const VAPI_SECRET: &str = "test-vapi-secret";
const CLIENT_ID: &str = "1234-test.apps.googleusercontent.com";
const CLIENT_SECRET: &str = "GOCSPX-test-client-secret";
const ASSISTANT: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const ORG: &str = "org_clinic";
const REFRESH: &str = "1//test-refresh";

/// Google, as far as these tools see it.
#[derive(Default)]
struct Google {
    /// Access tokens Google accepts.
    valid: HashSet<String>,
    /// The refresh token was revoked by the user.
    revoked: bool,
    refreshes: u32,
    /// Busy times other than the events below.
    busy: Vec<(String, String)>,
    /// Events by id: (start, end).
    events: HashMap<String, (String, String)>,
    /// The next this-many Calendar requests answer 503.
    failing: u32,
    /// How long Calendar requests take; the token endpoint's.
    calendar_delay: Duration,
    token_delay: Duration,
}

const NONE: Duration = Duration::ZERO;

impl Google {
    fn answer(&mut self, r: &Received) -> (u16, String, Duration) {
        let path = r.path.split('?').next().unwrap_or("");
        if path == "/token" {
            return self.token(r);
        }
        let bearer = r
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if !self.valid.contains(bearer) {
            return (
                401,
                json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError", "location": "Authorization", "locationType": "header"}], "status": "UNAUTHENTICATED"}}).to_string(),
                NONE,
            );
        }
        if self.failing > 0 {
            self.failing -= 1;
            return (
                503,
                json!({"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}}).to_string(),
                self.calendar_delay,
            );
        }
        let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        let delay = self.calendar_delay;
        match (r.method.as_str(), path) {
            ("POST", "/calendar/v3/freeBusy") => {
                let (from, to) = (
                    body["timeMin"].as_str().unwrap_or("").to_string(),
                    body["timeMax"].as_str().unwrap_or("").to_string(),
                );
                let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
                let busy: Vec<Value> = self
                    .busy
                    .iter()
                    .chain(self.events.values())
                    .filter(|(s, e)| t(s) < t(&to) && t(e) > t(&from))
                    .map(|(s, e)| json!({"start": s, "end": e}))
                    .collect();
                let id = body["items"][0]["id"].as_str().unwrap_or("primary");
                (
                    200,
                    json!({"kind": "calendar#freeBusy", "timeMin": from, "timeMax": to, "calendars": {id: {"busy": busy}}}).to_string(),
                    delay,
                )
            }
            ("POST", "/calendar/v3/calendars/primary/events") => {
                let id = body["id"].as_str().unwrap_or("").to_string();
                if self.events.contains_key(&id) {
                    return (
                        409,
                        json!({"error": {"errors": [{"domain": "global", "reason": "duplicate", "message": "The requested identifier already exists."}], "code": 409, "message": "The requested identifier already exists."}}).to_string(),
                        delay,
                    );
                }
                let (s, e) = (
                    body["start"]["dateTime"].as_str().unwrap_or("").to_string(),
                    body["end"]["dateTime"].as_str().unwrap_or("").to_string(),
                );
                self.events.insert(id.clone(), (s.clone(), e.clone()));
                (200, event(&id, &s, &e).to_string(), delay)
            }
            ("GET", p) if p.starts_with("/calendar/v3/calendars/primary/events/") => {
                let id = p.rsplit('/').next().unwrap_or("");
                match self.events.get(id) {
                    Some((s, e)) => (200, event(id, s, e).to_string(), delay),
                    None => (
                        404,
                        json!({"error": {"errors": [{"domain": "global", "reason": "notFound", "message": "Not Found"}], "code": 404, "message": "Not Found"}}).to_string(),
                        delay,
                    ),
                }
            }
            _ => (404, "{}".into(), NONE),
        }
    }

    /// https://developers.google.com/identity/protocols/oauth2/web-server#offline
    fn token(&mut self, r: &Received) -> (u16, String, Duration) {
        let form: HashMap<String, String> = form_urlencoded::parse(r.body.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if get("grant_type") != "refresh_token"
            || get("client_id") != CLIENT_ID
            || get("client_secret") != CLIENT_SECRET
        {
            return (
                401,
                json!({"error": "invalid_client", "error_description": "Unauthorized"}).to_string(),
                NONE,
            );
        }
        if self.revoked || get("refresh_token") != REFRESH {
            return (
                400,
                json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}).to_string(),
                self.token_delay,
            );
        }
        self.refreshes += 1;
        let access = format!("ya29.refreshed-{}", self.refreshes);
        self.valid.insert(access.clone());
        (
            200,
            json!({"access_token": access, "expires_in": 3599, "scope": "openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/calendar.events", "token_type": "Bearer"}).to_string(),
            self.token_delay,
        )
    }
}

fn event(id: &str, start: &str, end: &str) -> Value {
    json!({"kind": "calendar#event", "id": id, "status": "confirmed", "htmlLink": format!("https://www.google.com/calendar/event?eid={id}"), "summary": "Appointment", "start": {"dateTime": start}, "end": {"dateTime": end}})
}

struct Setup {
    app: common::TestApp,
    google: Arc<Mutex<Google>>,
    stub: Stub,
    schema: String,
    /// The DATABASE_URL the engine was given.
    db: String,
    _dir: Dir,
}

/// The shipped pipelines against the stand-in, the organisation's connection stored with
/// `access` expiring `expires_in` seconds from now, and its assistant linked. `budget`: the
/// Vapi respond budget (and a connection timeout under it).
async fn setup(google: Google, access: &str, expires_in: i64, budget: Option<u64>) -> Setup {
    let google = Arc::new(Mutex::new(google));
    let g = google.clone();
    let stub = Stub::answering(Arc::new(move |r| g.lock().unwrap().answer(r))).await;
    let dir = Dir::shipped_copy();
    if let Some(ms) = budget {
        let text = std::fs::read_to_string(dir.path().join("vapi.yaml")).unwrap();
        let text = text
            .replace(
                "respond_timeout_ms: 6000",
                &format!("respond_timeout_ms: {ms}"),
            )
            .replace("    timeout: 4s\n", &format!("    timeout: {}ms\n", ms / 2));
        dir.write("vapi.yaml", &text);
    }
    let (db, schema) = common::fresh_schema().await;
    let pg = common::pg(&schema).await;
    let ring = engine::crypto::Keyring::new(KEY, &[]).unwrap();
    pg.execute(
        "INSERT INTO oauth_tokens (tenant, provider, access_token, refresh_token, expires_at, event_id) VALUES ($1, 'google-calendar', $2, $3, now() + make_interval(secs => $4), 'seed')",
        &[
            &ORG,
            &ring.encrypt(access.as_bytes(), "oauth_tokens.access_token"),
            &ring.encrypt(REFRESH.as_bytes(), "oauth_tokens.refresh_token"),
            &(expires_in as f64),
        ],
    )
    .await
    .unwrap();
    pg.execute(
        "INSERT INTO tenant_aliases (source, external_id, tenant) VALUES ('vapi_assistant', $1, $2)",
        &[&ASSISTANT, &ORG],
    )
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{}", stub.port);
    let token_url = format!("{base}/token");
    let app = common::spawn_app(
        dir.path(),
        &[
            ("DATABASE_URL", db.as_str()),
            ("ENCRYPTION_KEY", KEY),
            ("VAPI_WEBHOOK_SECRET", VAPI_SECRET),
            ("GOOGLE_CLIENT_ID", CLIENT_ID),
            ("GOOGLE_CLIENT_SECRET", CLIENT_SECRET),
            ("GOOGLE_API_URL", base.as_str()),
            ("GOOGLE_TOKEN_URL", token_url.as_str()),
        ],
    )
    .await;
    Setup {
        app,
        google,
        stub,
        schema,
        db,
        _dir: dir,
    }
}

/// A Vapi `tool-calls` message for `name(args)`, as Vapi sends it.
fn tool_calls(id: &str, name: &str, args: Value) -> Value {
    let call = json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}});
    json!({"message": {
        "timestamp": 1764583200000u64 + fastrand::u64(0..1_000_000),
        "type": "tool-calls",
        "toolCallList": [call],
        "toolWithToolCallList": [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}, "server": {"url": "https://api.voxanne.ai/api/webhooks/vapi"}, "messages": [], "toolCall": call}],
        "call": {"id": format!("call-{}", fastrand::u64(..)), "orgId": "8f7e6d5c-4b3a-4291-8f7e-6d5c4b3a2910", "type": "inboundPhoneCall", "assistantId": ASSISTANT, "phoneNumberId": "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a"},
        "customer": {"number": "+14155550123"},
    }})
}

impl Setup {
    /// The result Vapi gets for one tool call.
    async fn ask(&self, body: &Value) -> String {
        let res = self
            .app
            .client
            .post(self.app.url("/api/webhooks/vapi"))
            .header("authorization", format!("Bearer {VAPI_SECRET}"))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let answer: Value = res.json().await.unwrap();
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results.len(), 1, "{answer}");
        assert_eq!(
            results[0]["toolCallId"],
            body["message"]["toolCallList"][0]["id"]
        );
        results[0]["result"].as_str().unwrap().to_string()
    }

    fn calendar_requests(&self) -> Vec<Received> {
        self.stub
            .got()
            .into_iter()
            .filter(|r| r.path.starts_with("/calendar/"))
            .collect()
    }

    fn token_requests(&self) -> Vec<Received> {
        self.stub
            .got()
            .into_iter()
            .filter(|r| r.path == "/token")
            .collect()
    }

    async fn stored(&self) -> (String, Option<String>, i64) {
        let pg = common::pg(&self.schema).await;
        let row = pg
            .query_one(
                "SELECT access_token, disconnected_reason, extract(epoch FROM expires_at - now())::bigint FROM oauth_tokens WHERE tenant = $1",
                &[&ORG],
            )
            .await
            .unwrap();
        let ring = engine::crypto::Keyring::new(KEY, &[]).unwrap();
        let sealed: String = row.get(0);
        let context =
            engine::connection::token::token_context("access_token", ORG, "google-calendar");
        let access = ring.decrypt(&sealed, &context).unwrap();
        (String::from_utf8(access).unwrap(), row.get(1), row.get(2))
    }
}

fn google_with(access: &str) -> Google {
    Google {
        valid: HashSet::from([access.to_string()]),
        ..Google::default()
    }
}

#[tokio::test]
async fn availability_lists_free_slots_and_says_when_the_asked_time_is_taken() {
    let mut g = google_with("ya29.current");
    g.busy = vec![("2025-12-02T09:00:00Z".into(), "2025-12-02T10:15:00Z".into())];
    let s = setup(g, "ya29.current", 3000, None).await;

    let taken = s
        .ask(&tool_calls(
            "call_a1",
            "check_availability",
            json!({"start": "2025-12-02T09:00:00Z", "end": "2025-12-02T12:00:00Z"}),
        ))
        .await;
    assert_eq!(
        taken,
        "2025-12-02T09:00:00Z is taken. The nearest free 30-minute times (UTC): 2025-12-02T10:30:00Z, 2025-12-02T11:00:00Z, 2025-12-02T11:30:00Z."
    );
    let free = s
        .ask(&tool_calls(
            "call_a2",
            "check_availability",
            json!({"start": "2025-12-02T13:00:00Z", "duration_minutes": 60}),
        ))
        .await;
    assert!(
        free.starts_with("2025-12-02T13:00:00Z is free for 60 minutes."),
        "{free}"
    );
    // what Google was asked: the documented freeBusy request, with the tenant's token
    let asked = s.calendar_requests();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].path, "/calendar/v3/freeBusy");
    assert_eq!(
        asked[0].header("authorization"),
        Some("Bearer ya29.current")
    );
    let q: Value = serde_json::from_str(&asked[0].body).unwrap();
    assert_eq!(
        q,
        json!({"timeMin": "2025-12-02T09:00:00.000Z", "timeMax": "2025-12-02T12:00:00.000Z", "items": [{"id": "primary"}]})
    );
    assert!(s.token_requests().is_empty());
    s.app.stop().await;
}

#[tokio::test]
async fn a_booking_is_made_once_however_often_vapi_sends_the_tool_call() {
    let s = setup(google_with("ya29.current"), "ya29.current", 3000, None).await;
    let args =
        json!({"start": "2025-12-02T10:00:00Z", "name": "Ada Lovelace", "phone": "+14155550123"});
    let first = s
        .ask(&tool_calls("call_b1", "book_appointment", args.clone()))
        .await;
    assert_eq!(
        first,
        "Booked: 30 minutes at 2025-12-02T10:00:00Z (UTC) for Ada Lovelace."
    );
    // Vapi resends the same tool call (its answer was lost): no second event
    let again = s
        .ask(&tool_calls("call_b1", "book_appointment", args.clone()))
        .await;
    assert_eq!(again, first);
    // another caller wants the same time: refused
    let other = s
        .ask(&tool_calls("call_b2", "book_appointment", args))
        .await;
    assert_eq!(
        other,
        "2025-12-02T10:00:00Z is no longer free. Ask the caller for another time and check availability again."
    );
    let events = s.google.lock().unwrap().events.clone();
    assert_eq!(events.len(), 1);
    let (id, (start, end)) = events.into_iter().next().unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(
        (start.as_str(), end.as_str()),
        ("2025-12-02T10:00:00.000Z", "2025-12-02T10:30:00.000Z")
    );
    let inserts: Vec<Received> = s
        .calendar_requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/events"))
        .collect();
    assert_eq!(inserts.len(), 1);
    let e: Value = serde_json::from_str(&inserts[0].body).unwrap();
    assert_eq!(e["summary"], "Appointment: Ada Lovelace");
    assert!(e["description"].as_str().unwrap().contains("+14155550123"));
    s.app.stop().await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_for_concurrent_tool_calls_and_stored_encrypted() {
    let g = Google {
        token_delay: Duration::from_millis(300),
        ..Google::default()
    };
    let s = setup(g, "ya29.expired", -60, None).await;
    let bodies: Vec<Value> = (0..12)
        .map(|i| {
            tool_calls(
                &format!("call_c{i}"),
                "check_availability",
                json!({"start": "2025-12-02T09:00:00Z"}),
            )
        })
        .collect();
    let asks = bodies.iter().map(|b| s.ask(b));
    for answer in futures::future::join_all(asks).await {
        assert!(answer.contains("is free for 30 minutes"), "{answer}");
    }
    let refreshes = s.token_requests();
    assert_eq!(refreshes.len(), 1, "one refresh for all concurrent calls");
    let form: HashMap<String, String> = form_urlencoded::parse(refreshes[0].body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form["refresh_token"], REFRESH);
    assert_eq!(form["client_id"], CLIENT_ID);
    assert!(
        s.calendar_requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer ya29.refreshed-1"))
    );
    let (access, disconnected, expires_in) = s.stored().await;
    assert_eq!(access, "ya29.refreshed-1");
    assert_eq!(disconnected, None);
    assert!((3500..=3600).contains(&expires_in), "{expires_in}");
    // the plaintext token is nowhere in the table
    let pg = common::pg(&s.schema).await;
    let raw: String = pg
        .query_one("SELECT access_token FROM oauth_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert!(raw.starts_with("v1:") && !raw.contains("ya29"));
    s.app.stop().await;
}

#[tokio::test]
async fn a_token_google_rejects_is_refreshed_and_the_call_sent_again() {
    // stored as valid for an hour, but Google no longer accepts it (revoked early, clock skew)
    let s = setup(Google::default(), "ya29.rejected", 3000, None).await;
    let answer = s
        .ask(&tool_calls(
            "call_d1",
            "check_availability",
            json!({"start": "2025-12-02T09:00:00Z"}),
        ))
        .await;
    assert!(answer.contains("is free"), "{answer}");
    let asked = s.calendar_requests();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        asked[0].header("authorization"),
        Some("Bearer ya29.rejected")
    );
    assert_eq!(
        asked[1].header("authorization"),
        Some("Bearer ya29.refreshed-1")
    );
    assert_eq!(s.token_requests().len(), 1);
    s.app.stop().await;
}

#[tokio::test]
async fn a_revoked_grant_disconnects_the_tenant_tells_the_caller_and_alerts_slack_once() {
    let slack = Stub::start().await;
    engine::ops::alerts::install(engine::ops::alerts::AlertsConfig {
        url: format!("http://127.0.0.1:{}/slack", slack.port),
        flush_every: Duration::from_millis(300),
        sink_outage: Duration::from_secs(60),
        // other tests of this binary dead-letter events too: their alerts must not use up ours
        max_per_hour: 100_000,
        source: "test".into(),
    })
    .unwrap();
    let g = Google {
        revoked: true,
        ..Google::default()
    };
    let s = setup(g, "ya29.expired", -60, None).await;
    for i in 0..3 {
        let answer = s
            .ask(&tool_calls(
                &format!("call_e{i}"),
                "book_appointment",
                json!({"start": "2025-12-02T10:00:00Z", "name": "Ada"}),
            ))
            .await;
        assert_eq!(
            answer,
            "The calendar is not connected right now, so times cannot be checked or booked. Take the caller's name and number; the team will call back to arrange a time."
        );
    }
    // one refresh attempt, then the engine remembers: no request reaches Google's Calendar
    assert_eq!(s.token_requests().len(), 1);
    assert!(s.calendar_requests().is_empty());
    let (_, disconnected, _) = s.stored().await;
    assert!(
        disconnected
            .as_deref()
            .unwrap_or("")
            .contains("invalid_grant"),
        "{disconnected:?}"
    );
    // this binary's other tests alert too (the alerter is process-wide): ours are the messages
    // naming the tenant
    let ours = || {
        slack
            .got()
            .into_iter()
            .filter(|r| r.body.contains("org_clinic"))
            .collect::<Vec<_>>()
    };
    for _ in 0..50 {
        if !ours().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let sent = ours();
    assert_eq!(sent.len(), 1, "one alert");
    assert!(sent[0].body.contains("org_clinic") && sent[0].body.contains("connect again"));
    assert!(!sent[0].body.contains(REFRESH) && !sent[0].body.contains("ya29"));
    s.app.stop().await;
}

#[tokio::test]
async fn google_slower_than_the_budget_gets_the_caller_an_answer_in_time() {
    let mut g = google_with("ya29.current");
    g.calendar_delay = Duration::from_secs(10);
    let s = setup(g, "ya29.current", 3000, Some(1500)).await;
    let started = std::time::Instant::now();
    let answer = s
        .ask(&tool_calls(
            "call_f1",
            "check_availability",
            json!({"start": "2025-12-02T09:00:00Z"}),
        ))
        .await;
    assert_eq!(
        answer,
        "The calendar is taking too long to answer. Tell the caller a time could not be confirmed just now and the team will call back to confirm."
    );
    // answered when the budget ran out, not when Google did
    assert!(started.elapsed() < Duration::from_secs(5));
    s.app.stop().await;
}

#[tokio::test]
async fn google_5xx_is_retried_once_then_the_caller_is_told() {
    let mut g = google_with("ya29.current");
    g.failing = 2;
    let s = setup(g, "ya29.current", 3000, None).await;
    let answer = s
        .ask(&tool_calls(
            "call_g1",
            "check_availability",
            json!({"start": "2025-12-02T09:00:00Z"}),
        ))
        .await;
    assert_eq!(
        answer,
        "The calendar could not be reached just now. Tell the caller the team will call back to confirm a time."
    );
    assert_eq!(s.calendar_requests().len(), 2);
    // one failure is absorbed by the retry
    s.google.lock().unwrap().failing = 1;
    let answer = s
        .ask(&tool_calls(
            "call_g2",
            "check_availability",
            json!({"start": "2025-12-02T09:00:00Z"}),
        ))
        .await;
    assert!(answer.contains("is free"), "{answer}");
    s.app.stop().await;
}

#[tokio::test]
async fn scripts_reach_only_declared_connections_under_their_base_url() {
    let stub = Stub::start().await;
    let dir = Dir::shipped_copy();
    dir.write(
        "probe.yaml",
        &format!(
            r#"name: probe
route: {{method: POST, path: /probe}}
connections:
  api:
    base_url: http://127.0.0.1:{port}/v1
respond:
  inline: |
    let kind = event.body.kind;
    if kind == "ok" {{ return request("api", #{{path: "/things", query: #{{q: "a b"}}}}).status; }}
    if kind == "escape" {{ return request("api", #{{path: "/../admin"}}); }}
    // a name validate cannot see: refused when called
    if kind == "other" {{ let name = "else" + "where"; return request(name, #{{path: "/x"}}); }}
    "none"
  fallback: {{status: 502, body: '{{"error":"no answer"}}'}}
"#,
            port = stub.port
        ),
    );
    let app = common::spawn_app(dir.path(), &[("VAPI_WEBHOOK_SECRET", VAPI_SECRET)]).await;
    let post = |kind: &str| {
        app.client
            .post(app.url("/probe"))
            .json(&json!({ "kind": kind }))
            .send()
    };
    let ok = post("ok").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "200");
    for refused in ["escape", "other"] {
        assert_eq!(post(refused).await.unwrap().status(), 502, "{refused}");
    }
    let got = stub.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/v1/things?q=a+b");
    app.stop().await;
}

/// `tenant_of` answers within the respond budget when `tenant_aliases` is locked: the tool call
/// is answered (as for a tenant not found) while the lock is still held, and the lookup's query
/// does not go on waiting in Postgres after it (its statement timeout cancelled it).
#[tokio::test]
async fn a_locked_alias_table_costs_the_answer_no_more_than_its_budget() {
    let s = setup(
        google_with("ya29.current"),
        "ya29.current",
        3000,
        Some(2000),
    )
    .await;
    let mut locker = common::pg(&s.schema).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE tenant_aliases IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(15),
        s.app
            .client
            .post(s.app.url("/api/webhooks/vapi"))
            .header("authorization", format!("Bearer {VAPI_SECRET}"))
            .json(&tool_calls(
                "call_locked",
                "check_availability",
                json!({"start": "2025-12-02T13:00:00Z"}),
            ))
            .send(),
    )
    .await
    .expect("the answer waited for the lock")
    .unwrap();
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["results"][0]["toolCallId"], "call_locked");
    // the lock is still held here: the answer did not wait for it
    let schema = s.schema.clone();
    let waiting = common::eventually_async(Duration::from_secs(5), || {
        let schema = schema.clone();
        async move {
        let pg = common::pg(&schema).await;
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FROM tenant_aliases%' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
        }
    })
    .await;
    assert!(
        waiting.is_some(),
        "the lookup's query still waits on the lock"
    );
    lock.rollback().await.unwrap();
    s.app.stop().await;
}

/// OAuth tokens are sealed to their row (tenant, provider): a row sealed the old way (to its
/// column only) still works and is resealed to its row when read; a token copied into another
/// tenant's row does not open there; `engine migrate`'s reseal pass binds every old row.
#[tokio::test]
async fn tokens_are_sealed_to_their_row_and_a_swapped_token_does_not_open() {
    use engine::connection::token::{TokenStore, token_context};
    let s = setup(google_with("ya29.current"), "ya29.current", 3000, None).await;
    // the seeded row is sealed to its column, as rows were before this change
    s.ask(&tool_calls(
        "call_seal",
        "check_availability",
        json!({"start": "2025-12-02T13:00:00Z"}),
    ))
    .await;
    assert_eq!(
        s.calendar_requests().len(),
        1,
        "the old row's token was not used"
    );
    let pg = common::pg(&s.schema).await;
    let ring = engine::crypto::Keyring::new(KEY, &[]).unwrap();
    let row = pg
        .query_one(
            "SELECT access_token, refresh_token FROM oauth_tokens WHERE tenant = $1",
            &[&ORG],
        )
        .await
        .unwrap();
    let (access, refresh): (String, String) = (row.get(0), row.get(1));
    for (value, column, plain) in [
        (&access, "access_token", "ya29.current"),
        (&refresh, "refresh_token", REFRESH),
    ] {
        let opened = ring
            .decrypt(value, &token_context(column, ORG, "google-calendar"))
            .unwrap();
        assert_eq!(opened, plain.as_bytes());
        assert!(
            ring.decrypt(value, &format!("oauth_tokens.{column}"))
                .is_err(),
            "{column} still sealed to its column"
        );
    }
    // the clinic's sealed tokens copied into another tenant's row open nowhere there
    pg.execute(
        "INSERT INTO oauth_tokens (tenant, provider, access_token, refresh_token, expires_at, event_id) VALUES ('org_intruder', 'google-calendar', $1, $2, now() + interval '1 hour', 'swap')",
        &[&access, &refresh],
    )
    .await
    .unwrap();
    let store = engine::connection::token::PostgresTokens {
        pool: engine::db::pool(&s.db, 1).unwrap(),
        keyring: ring.clone(),
    };
    assert!(
        store.load("google-calendar", "org_intruder").await.is_err(),
        "a swapped token opened"
    );
    assert_eq!(
        store
            .load("google-calendar", ORG)
            .await
            .unwrap()
            .unwrap()
            .access_token,
        "ya29.current"
    );
    // migrate's pass: an old-style row is resealed, a swapped one is named and left alone
    pg.execute(
        "INSERT INTO oauth_tokens (tenant, provider, access_token, refresh_token, expires_at, event_id) VALUES ('org_old', 'google-calendar', $1, NULL, now() + interval '1 hour', 'old')",
        &[&ring.encrypt(b"ya29.old", "oauth_tokens.access_token")],
    )
    .await
    .unwrap();
    let (resealed, failed) = store.reseal_all().await.unwrap();
    assert_eq!(resealed, 1);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains("org_intruder"), "{failed:?}");
    let old: String = pg
        .query_one(
            "SELECT access_token FROM oauth_tokens WHERE tenant = 'org_old'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ring.decrypt(
            &old,
            &token_context("access_token", "org_old", "google-calendar")
        )
        .unwrap(),
        b"ya29.old"
    );
    s.app.stop().await;
}
