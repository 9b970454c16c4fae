//! What reads process-wide state, so it lives in this test binary of its own (the others are
//! one binary, `tests/it`): Slack alerts (a burst of dead letters becomes one message; a sink
//! outage is reported once past its threshold, then its recovery), Sentry events (errors,
//! `tracing::error!` and panics, secrets scrubbed), and exact deltas of the metrics recorder's
//! counters as traffic moves them.

// the integration tests' helpers, of which this binary uses a few
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Dir, Stub};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_alerts_are_aggregated() {
    let slack = Stub::start().await;
    let port = slack.port;
    engine::ops::alerts::install(engine::ops::alerts::AlertsConfig {
        url: format!("http://127.0.0.1:{port}/services/T000/B000/xyz"),
        flush_every: Duration::from_millis(700),
        sink_outage: Duration::from_millis(800),
        max_per_hour: 10,
        source: "test, here".into(),
    })
    .unwrap();

    let data = tempfile::tempdir().unwrap();
    let dead_port = common::free_port();
    let dir = Dir::shipped_copy();
    dir.write(
        "broken.yaml",
        &format!(
            "name: broken\nroute: {{method: POST, path: /hooks/broken}}\ntransform:\n  - inline: 'fail_permanent(\"no call id in this payload\")'\n    sink: rows\nsinks:\n  rows: {{file: {{path: '{}'}}}}\n",
            data.path().join("rows.jsonl").display()
        ),
    );
    dir.write(
        "unreachable.yaml",
        &format!(
            "name: unreachable\nroute: {{method: POST, path: /hooks/unreachable}}\nqueue: {{backoff: {{initial: 100ms, max: 200ms}}, max_attempts: 1000}}\ntransform:\n  - inline: '#{{ n: 1 }}'\n    sink: downstream\nsinks:\n  downstream: {{http: {{url: 'http://127.0.0.1:{dead_port}/rows', timeout_ms: 200}}}}\n"
        ),
    );
    let app = common::spawn_app(dir.path(), &[]).await;

    // a burst: 40 events dead-lettered
    for i in 0..40 {
        let res = app
            .client
            .post(app.url("/hooks/broken"))
            .header("content-type", "application/json")
            .body(format!("{{\"n\":{i}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    // a sink that cannot be reached: retried, reported once past the outage threshold
    let res = app
        .client
        .post(app.url("/hooks/unreachable"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let got = slack.wait_for(2, Duration::from_secs(8)).await;
    let all: Vec<serde_json::Value> = got
        .iter()
        .map(|r| {
            assert_eq!(r.path, "/services/T000/B000/xyz");
            serde_json::from_str(&r.body).unwrap()
        })
        .collect();
    let text: String = all
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string() + "\n")
        .collect();
    assert!(all.len() <= 3, "a burst is a few messages, not 40: {text}");
    let counted: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("• broken: "))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, 40, "{text}");
    assert!(
        text.contains("last reason: ") && text.contains("no call id in this payload"),
        "{text}"
    );
    assert!(text.contains("sink downstream: failing for"), "{text}");
    assert_eq!(
        text.matches("sink downstream: failing").count(),
        1,
        "{text}"
    );
    assert!(text.contains("*engine* (test, here)"), "{text}");

    // the downstream comes back: one recovery line
    let listener = std::net::TcpListener::bind(("127.0.0.1", dead_port)).unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let before = slack.got().len();
    let got = slack.wait_for(before + 1, Duration::from_secs(8)).await;
    let last = &got.last().unwrap().body;
    assert!(last.contains("sink downstream: recovered after"), "{last}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_reports_errors_and_panics_without_secrets() {
    use tracing_subscriber::layer::SubscriberExt;
    let sentry_in = Stub::start().await;
    let port = sentry_in.port;
    let secret = "sk_live_0123456789abcdef";
    let guard = engine::ops::errors::init(
        &format!("http://publickey@127.0.0.1:{port}/42"),
        "test".into(),
        vec![secret.into(), "postgres-password-1".into()],
    )
    .expect("a client");
    let subscriber = tracing_subscriber::registry().with(sentry::integrations::tracing::layer());
    let _default = tracing::subscriber::set_default(subscriber);

    tracing::error!("sink failed: postgres://app:postgres-password-1@db/x refused");
    sentry::capture_message(
        &format!("verification failed with key {secret}"),
        sentry::Level::Error,
    );
    let _ = std::thread::spawn(move || panic!("worker crashed holding {secret}")).join();
    drop(guard); // flushes

    let got = sentry_in.wait_for(3, Duration::from_secs(5)).await;
    assert!(got.len() >= 3, "{got:?}");
    let all: String = got
        .iter()
        .map(|r| {
            assert_eq!(r.path, "/api/42/envelope/");
            r.body.clone()
        })
        .collect();
    assert!(!all.contains(secret), "the secret reached Sentry");
    assert!(
        !all.contains("postgres-password-1"),
        "the password reached Sentry"
    );
    assert!(
        all.contains("sink failed: postgres://app:[redacted]@db/x refused"),
        "{all}"
    );
    assert!(
        all.contains("verification failed with key [redacted]"),
        "{all}"
    );
    assert!(all.contains("worker crashed holding [redacted]"), "{all}");
}

/// The value of one sample line (`name{labels} value`) in an exposition, 0 when absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(app: &common::TestApp) -> String {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    res.text().await.unwrap()
}

/// `/metrics` moves with traffic: exact deltas of the process-wide counters, so no other test's
/// traffic may run in this process.
#[tokio::test]
async fn metrics_move_with_traffic() {
    let data = tempfile::tempdir().unwrap();
    // the queue and the dedupe in Redis (keys under a prefix of this run's): the request path's
    // group commit calls are counted too
    let dir = Dir::shipped_with_data(data.path());
    let app = common::spawn_app(dir.path(), &[("REDIS_URL", common::redis())]).await;
    let before = metrics(&app).await;
    let body =
        std::fs::read(common::shipped().join("../fixtures/payloads/vapi/status-update.json"))
            .unwrap();
    let post = |auth: &'static str| {
        app.client
            .post(app.url("/api/webhooks/vapi"))
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    assert_eq!(
        post("Bearer dev-vapi-webhook-secret")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post("Bearer dev-vapi-webhook-secret")
            .await
            .unwrap()
            .status(),
        200
    ); // duplicate
    assert_eq!(post("Bearer wrong").await.unwrap().status(), 401);
    // the worker writes the row shortly after
    let mut after = String::new();
    for _ in 0..100 {
        after = metrics(&app).await;
        if sample(&after, r#"engine_sink_rows_total{sink="call_status"}"#)
            > sample(&before, r#"engine_sink_rows_total{sink="call_status"}"#)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(
        delta(r#"engine_http_requests_total{pipeline="vapi",status="200"}"#),
        2.0,
        "{after}"
    );
    assert_eq!(
        delta(r#"engine_http_requests_total{pipeline="vapi",status="401"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"engine_verify_failures_total{pipeline="vapi",reason="bad_token"}"#)
            + delta(r#"engine_verify_failures_total{pipeline="vapi",reason="bad_signature"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(delta(r#"engine_events_queued_total{pipeline="vapi"}"#), 1.0);
    assert_eq!(delta(r#"engine_duplicates_total{pipeline="vapi"}"#), 1.0);
    assert_eq!(
        delta(r#"engine_events_processed_total{queue="vapi",outcome="written"}"#),
        1.0
    );
    assert_eq!(delta(r#"engine_sink_rows_total{sink="call_status"}"#), 1.0);
    // each request at least one Redis operation (an append, a rate check), carried in calls
    // of one or more
    let (calls, ops) = (
        delta("engine_redis_group_calls_total"),
        delta("engine_redis_group_operations_total"),
    );
    assert!(
        calls >= 1.0 && ops >= 3.0 && ops >= calls,
        "{ops} in {calls} calls\n{after}"
    );
    assert!(
        after
            .contains(r#"engine_http_request_duration_seconds_bucket{pipeline="vapi",le="0.005"}"#),
        "{after}"
    );
    assert!(after.contains(r#"engine_transform_duration_seconds_count{queue="vapi"}"#));
    assert!(after.contains(r#"engine_event_latency_seconds_count{queue="vapi"}"#));
    // /metrics counts itself too, under its own label
    assert!(after.contains(r#"engine_http_requests_total{pipeline="metrics",status="200"}"#));
    app.stop().await;
}
