//! The console in a real browser: Debian's headless Chromium, driven through ChromeDriver's
//! W3C WebDriver API, signs in, sees a dead letter appear, replays it after the pipeline is
//! fixed, and the row lands in Postgres. Screenshots of each page go to `CONSOLE_SCREENSHOTS`
//! when set (`CONSOLE_SCREENSHOTS=docs/console cargo test console_browser` draws the pictures
//! in docs/console.md), else to a temporary directory, and are checked to be PNG images.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::console::{TOKEN, orders, project, reload_with};
use common::{fresh_schema, pg, spawn_app};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    shots: PathBuf,
}

impl Browser {
    async fn start(shots: PathBuf) -> Browser {
        let chromedriver = ["/usr/bin/chromedriver", "/usr/local/bin/chromedriver"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromedriver is not installed: `apt-get install -y chromium chromium-driver` (.ci/run installs them)");
        let port = common::free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        common::eventually_async(Duration::from_secs(20), || async {
            let r = http.get(format!("{base}/status")).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        })
        .await
        .expect("chromedriver did not become ready");
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromium is not installed: `apt-get install -y chromium chromium-driver`");
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": binary,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900",
                             "--hide-scrollbars", "--force-device-scale-factor=1"]
                }
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_string();
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            base,
            session,
            http,
            shots,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method.clone(), url);
        if method == reqwest::Method::POST {
            req = req.json(&body);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("webdriver {path}: {v}");
        }
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn url(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/url", Value::Null).await;
        v.as_str().unwrap_or_else(|| panic!("url: {v}")).to_string()
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {v}"))
            .to_string()
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Wait until the page's source contains `text` (reloading the page when `reload`).
    async fn wait_for(&self, text: &str, reload: bool) -> String {
        common::eventually_async(Duration::from_secs(15), || async {
            if reload {
                self.call(reqwest::Method::POST, "/refresh", json!({}))
                    .await;
            }
            let s = self.source().await;
            s.contains(text).then_some(s)
        })
        .await
        .unwrap_or_else(|| panic!("the page never showed `{text}`"))
    }

    /// A PNG of the window, written as `<name>.png`.
    async fn screenshot(&self, name: &str) {
        let b64 = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000,
            "{name}"
        );
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn an_operator_replays_a_dead_letter_in_a_real_browser() {
    let name = "orders";
    let (database, schema) = fresh_schema().await;
    let env = [
        ("CONSOLE_TOKEN", TOKEN),
        ("REDIS_URL", common::redis()),
        ("DATABASE_URL", database.as_str()),
        ("ENCRYPTION_KEY", super::console::KEY),
    ];
    let dir = project(name, true);
    let app = spawn_app(dir.path(), &env).await;
    let db = pg(&schema).await;
    let keep = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| keep.path().to_path_buf());
    // some traffic for the charts: good requests, a forged one, a few orders
    let traffic = tokio::spawn(background_traffic(app.base.clone()));
    let browser = Browser::start(shots).await;

    browser.go(&app.url("/console/pipelines")).await;
    assert!(
        browser.url().await.ends_with("/console/login"),
        "sent to sign in"
    );
    browser.screenshot("login").await;
    browser.type_into("#token", TOKEN).await;
    browser.click("button[type=submit]").await;
    browser.wait_for("Transform → sinks", false).await;
    assert!(browser.url().await.ends_with("/console/pipelines"));
    browser.screenshot("pipelines").await;

    // an order whose script is broken: a dead letter appears
    let call = "44444444-4444-4444-8444-444444444444";
    let status = app
        .client
        .post(app.url(&format!("/hooks/{name}")))
        .json(&json!({"call_id": call, "status": "ringing", "customer": {"phone": "+15550142"}}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    browser
        .go(&app.url(&format!("/console/dead-letters?pipeline={name}")))
        .await;
    let page = browser.wait_for("the status script is broken", true).await;
    assert!(!page.contains("+15550142"), "redacted in the browser too");
    // unfold the event: its body shows the redacted field
    browser.click("details summary").await;
    browser.screenshot("dead-letters").await;

    // the operator fixes the pipeline (a deploy or a reload), then replays the letter
    dir.write(&format!("{name}.yaml"), &orders(name, false));
    reload_with(&app, &dir, &env).await;
    browser.click("input[name=id]").await;
    browser
        .click("form#selected button:not([formaction])")
        .await;
    let page = browser.wait_for("1 replayed", false).await;
    // the banner was shown, and the script took `done=` out of the address: a refresh does not
    // show it again; with no dead letter left there is nothing to replay or purge "all" of
    let url = browser.url().await;
    assert!(!url.contains("done="), "{url}");
    assert!(
        url.ends_with(&format!("/console/dead-letters?pipeline={name}")),
        "{url}"
    );
    assert!(
        !page.contains("Replay all") && !page.contains("Purge all"),
        "{page}"
    );
    browser.screenshot("replayed").await;
    browser
        .call(reqwest::Method::POST, "/refresh", json!({}))
        .await;
    let page = browser.wait_for("None.", false).await;
    assert!(!page.contains("1 replayed"), "{page}");
    common::eventually_async(Duration::from_secs(10), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM call_status WHERE call_id = $1::text::uuid",
                &[&call],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await
    .expect("the replayed event's row in Postgres");

    browser.go(&app.url("/console/queues")).await;
    browser.wait_for("Workers", false).await;
    browser.screenshot("queues").await;
    // the archive: the event dead-lettered, then written by the replay; its page tells the story
    browser
        .go(&app.url(&format!("/console/events?pipeline={name}")))
        .await;
    browser.wait_for("outcome written", true).await;
    browser.screenshot("events").await;
    browser.click("td a[href^='/console/events/show']").await;
    let page = browser.wait_for("[redacted]", false).await;
    assert!(
        page.contains("the status script is broken"),
        "the story keeps the dead letter's reason"
    );
    assert!(!page.contains("+15550142"));
    browser.click("details summary").await;
    browser.screenshot("event").await;
    if std::env::var_os("CONSOLE_SCREENSHOTS").is_some() {
        // drawing the docs' pictures: let the charts fill for a while
        tokio::time::sleep(Duration::from_secs(50)).await;
    }
    browser.go(&app.url("/console/traffic")).await;
    // tall enough for every pipeline's card
    browser
        .call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": 1280, "height": 1320}),
        )
        .await;
    // the script redraws from the API: wait for its first refresh
    let page = browser.wait_for("data-updated", false).await;
    browser.screenshot("traffic").await;
    // a time axis under each chart; a series zero throughout (no 5xx) stays undrawn after the
    // script's redraw too
    assert!(
        page.contains("<span>now</span>"),
        "the charts have a time axis"
    );
    assert!(
        page.contains(r#"class="s2 idle""#),
        "an idle 5xx line is not drawn"
    );

    // the forged requests of the background traffic, among the refused ones, with their reason
    browser.go(&app.url("/console/events?pipeline=vapi")).await;
    let page = browser.wait_for("bad_signature", true).await;
    assert!(page.contains("Refused requests") && !page.contains("Bearer forged"));
    // the queues: workers per instance, and this one instance reading
    browser.go(&app.url("/console/queues")).await;
    browser.wait_for("per instance", false).await;
    browser.wait_for("Instances reading", false).await;

    // signing out lands on the sign-in page, saying so
    browser.click("button[value=this]").await;
    browser.wait_for("Signed out.", false).await;
    assert!(
        browser
            .url()
            .await
            .ends_with("/console/login?done=signed-out")
    );
    // too many wrong tokens: the page says how long to wait, no raw JSON above the form
    let mut page = String::new();
    // (the limit refills one attempt every 6 s: twice the allowance reaches it whatever refilled)
    for _ in 0..2 * engine::console::LOGIN_ATTEMPTS_PER_MINUTE {
        browser.type_into("#token", "not-the-console-token").await;
        browser.click("button[type=submit]").await;
        // the answer page loaded (its form is new: the old one is gone with the old page)
        tokio::time::sleep(Duration::from_millis(300)).await;
        page = browser.wait_for("role=\"alert\"", false).await;
        if page.contains("Try again in") {
            break;
        }
    }
    let page = if page.contains("Try again in") {
        page
    } else {
        browser.wait_for("Try again in", false).await
    };
    assert!(!page.contains(r#"{"error""#), "no JSON in the page: {page}");
    browser.screenshot("login-limited").await;

    traffic.abort();
    browser.quit().await;
    app.stop().await;
}

/// A few seconds of mixed traffic: signed Vapi status updates, a forged one now and then, and
/// orders, so the traffic page has something to draw.
async fn background_traffic(base: String) {
    let http = reqwest::Client::new();
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/payloads/vapi/status-update.json"),
    )
    .unwrap();
    for i in 0u32.. {
        // a rate that rises and falls over about a minute
        let pause = 20 + u64::from((i / 40) % 6) * 25;
        let auth = if i % 7 == 0 {
            "Bearer forged"
        } else {
            "Bearer dev-vapi-webhook-secret"
        };
        let _ = http
            .post(format!("{base}/api/webhooks/vapi"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
