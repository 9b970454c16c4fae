//! Operating the engine: `/metrics` is guarded by METRICS_TOKEN (its counters moving with
//! traffic are checked in `tests/reporting.rs`, alone in its process), request
//! ids are echoed, `/ready` names a stopped Redis or Postgres (private instances), and hot reload
//! swaps a valid change in, keeps the old set on an invalid one, and lets requests in flight
//! finish on the set they started on.

use crate::common;

use std::time::Duration;

use common::{Dir, PrivatePostgres, PrivateRedis};
use engine::env::EnvSource;
use engine::server::reload::{EnvOrigin, Source, reload};

#[tokio::test]
async fn metrics_need_the_token_when_one_is_set_and_are_off_in_production_without() {
    let dir = Dir::shipped_copy();
    let token = "metrics-token-0123456789";
    let app = common::spawn_app(dir.path(), &[("METRICS_TOKEN", token)]).await;
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    for (method, token, want) in [
        (reqwest::Method::GET, "nope-nope-nope-nope", 401),
        (reqwest::Method::GET, token, 200),
        (reqwest::Method::POST, token, 405),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url("/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), want, "{method} with {token}");
    }
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_minted() {
    let dir = Dir::shipped_copy();
    let app = common::spawn_app(dir.path(), &[]).await;
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "rndr-abc.123:1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "rndr-abc.123:1");
    let res = app
        .client
        .post(app.url("/api/twilio/voice"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let minted = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&minted).is_ok(), "{minted}");
    let res = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.headers().contains_key("x-request-id"));
    app.stop().await;
}

#[tokio::test]
async fn ready_names_the_dependency_that_is_down() {
    let mut redis = PrivateRedis::start(false);
    let pg = PrivatePostgres::start();
    let dir = Dir::shipped_copy();
    let (redis_url, pg_url) = (redis.url(), pg.url());
    let app = common::spawn_app(
        dir.path(),
        &[
            ("REDIS_URL", redis_url.as_str()),
            ("DATABASE_URL", pg_url.as_str()),
            ("ENCRYPTION_KEY", &"ab".repeat(32)),
        ],
    )
    .await;
    let ready = || async {
        let res = app.client.get(app.url("/ready")).send().await.unwrap();
        (
            res.status().as_u16(),
            res.json::<serde_json::Value>().await.unwrap(),
        )
    };
    let (status, body) = ready().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(body["checks"]["postgres"], "ok");

    redis.kill();
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("down: "),
        "{body}"
    );
    assert_eq!(body["checks"]["postgres"], "ok");
    // liveness is not readiness: /health stays 200
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    redis.restart();
    pg.down();
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["postgres"]
            .as_str()
            .unwrap()
            .starts_with("down: "),
        "{body}"
    );
    assert!(!body.to_string().contains(&pg_url), "no URL in the answer");
    pg.up();
    let mut back = 0;
    for _ in 0..50 {
        back = ready().await.0;
        if back == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, 200);
    app.stop().await;
}

const EXTRA: &str = "name: extra\nroute: {method: POST, path: /hooks/extra}\nrespond: {status: 202, content_type: text/plain, body: accepted}\n";

fn source(dir: &Dir) -> Source {
    Source {
        dir: dir.path().to_path_buf(),
        env: EnvOrigin::Fixed(EnvSource::default()),
    }
}

#[tokio::test]
async fn reload_swaps_a_valid_change_and_keeps_the_old_set_on_an_invalid_one() {
    let dir = Dir::shipped_copy();
    let app = common::spawn_app(dir.path(), &[]).await;
    let post = |path: &str| app.client.post(app.url(path)).send();
    assert_eq!(post("/hooks/extra").await.unwrap().status(), 404);

    dir.write("extra.yaml", EXTRA);
    let live = app.live();
    let n = tokio::task::spawn_blocking({
        let (live, source) = (live.clone(), source(&dir));
        move || reload(&live, &source, Duration::from_secs(5))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(n, 5);
    let res = post("/hooks/extra").await.unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.text().await.unwrap(), "accepted");
    assert_eq!(
        post("/api/twilio/voice").await.unwrap().status(),
        401,
        "old routes still served"
    );

    // a typo: refused with its position; the previous set keeps serving
    dir.write("extra.yaml", &EXTRA.replace("respond:", "respnd:"));
    let problems = reload(&live, &source(&dir), Duration::from_secs(5)).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("extra.yaml:3:1") && p.contains("respnd")),
        "{problems:?}"
    );
    assert_eq!(post("/hooks/extra").await.unwrap().status(), 202);

    // a removed route stops being served
    dir.remove("extra.yaml");
    reload(&live, &source(&dir), Duration::from_secs(5)).unwrap();
    assert_eq!(post("/hooks/extra").await.unwrap().status(), 404);
    app.stop().await;
}

/// An edit made right after the watcher is started is a change: the watcher's starting point is
/// taken when `spawn` returns, not when its task first runs. On this single-threaded runtime the
/// task cannot run before the edit, so a watcher that took its starting point in the task saw
/// the edited directory as unchanged and never reloaded (CI caught it as a flaky
/// `cli::watch_reloads_on_a_change`).
#[tokio::test]
async fn the_watcher_sees_an_edit_made_as_soon_as_it_is_started() {
    let dir = Dir::shipped_copy();
    let app = common::spawn_app(dir.path(), &[]).await;
    engine::server::reload::spawn(app.live(), source(&dir), true, Duration::from_secs(5));
    dir.write("extra.yaml", EXTRA);
    let post = || app.client.post(app.url("/hooks/extra")).send();
    let picked_up = common::eventually_async(Duration::from_secs(10), || async {
        (post().await.unwrap().status() == 202).then_some(())
    })
    .await;
    assert!(picked_up.is_some(), "the edit was never picked up");
    app.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_set_it_started_on() {
    let dir = Dir::shipped_copy();
    dir.write("extra.yaml", EXTRA);
    let app = common::spawn_app(dir.path(), &[]).await;
    let live = app.live();
    // headers now, body after the reload that removes the route
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"POST /hooks/extra HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    dir.remove("extra.yaml");
    reload(&live, &source(&dir), Duration::from_secs(5)).unwrap();
    stream.write_all(b"hello").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(answer.ends_with("accepted"), "{answer}");
    // a new request sees the new set
    let res = app
        .client
        .post(app.url("/hooks/extra"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    app.stop().await;
}

/// `promtool check metrics` (Prometheus's own linter) accepts `/metrics` after traffic: every
/// metric has HELP text and follows the naming rules, the pool crate's own are not exported.
#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("promtool is not installed: `apt-get install -y --no-install-recommends prometheus` (.ci/run installs it)");
    let data = tempfile::tempdir().unwrap();
    let dir = Dir::shipped_copy();
    let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    dir.write(
        "engine.yaml",
        &format!("{base}\ndata_dir: '{}'\n", data.path().display()),
    );
    let app = common::spawn_app(dir.path(), &[]).await;
    let body =
        std::fs::read(common::shipped().join("../fixtures/payloads/vapi/status-update.json"))
            .unwrap();
    for auth in ["Bearer dev-vapi-webhook-secret", "Bearer wrong"] {
        app.client
            .post(app.url("/api/webhooks/vapi"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
    }
    app.client.get(app.url("/health")).send().await.unwrap();
    // the sampler's first round (process_* and the queue gauges)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("# HELP engine_http_requests_total"), "{text}");
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- /metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

/// docs/grafana/engine.json imports as is (a Grafana dashboard with a Prometheus datasource
/// input) and every query in it names a metric the engine exports.
#[test]
fn the_grafana_dashboard_queries_only_metrics_the_engine_exports() {
    let text =
        std::fs::read_to_string(common::shipped().join("../docs/grafana/engine.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
    let exported: Vec<&str> = engine::ops::metrics::NAMES.iter().map(|n| n.0).collect();
    let process = [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ];
    let name = regex::Regex::new(r"\b((?:engine|process)_[a-z_]+)").unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    let mut queried = std::collections::BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for c in name.captures_iter(expr) {
                let m = &c[1];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| m.strip_suffix(s))
                    .unwrap_or(m);
                assert!(
                    exported.contains(&base) || process.contains(&base),
                    "panel {:?} queries `{m}`, which the engine does not export",
                    p["title"]
                );
                queried.insert(base.to_string());
            }
        }
    }
    for needed in [
        "engine_http_requests_total",
        "engine_http_request_duration_seconds",
        "engine_verify_failures_total",
        "engine_rate_limited_total",
        "engine_queue_depth",
        "engine_queue_oldest_age_seconds",
        "engine_dead_lettered_total",
        "engine_sink_rows_total",
        "engine_sink_errors_total",
        "process_resident_memory_bytes",
    ] {
        assert!(queried.contains(needed), "no panel shows {needed}");
    }
}
