//! Reports that leave the process, against local receivers: Slack alerts (a burst of dead
//! letters becomes one message; a sink outage is reported once past its threshold, then its
//! recovery) and Sentry events (errors, `tracing::error!` and panics, secrets scrubbed).
//! Both install process-wide hooks, so they live in this test binary of their own.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A local HTTP/1.1 server answering 200 to everything and keeping each request's path and body.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    async fn start() -> (Receiver, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver::default();
        let keep = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    break;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // one request: headers, then content-length bytes
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 8192];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 8192];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        let body =
                            String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                        keep.got.lock().unwrap().push((path, body));
                        buf.drain(..head_end + len);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (r, port)
    }

    fn got(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<(String, String)> {
        let until = std::time::Instant::now() + within;
        while self.got().len() < n && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.got()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_alerts_are_aggregated() {
    let (slack, port) = Receiver::start().await;
    engine::ops::alerts::install(engine::ops::alerts::Config {
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
        .map(|(path, body)| {
            assert_eq!(path, "/services/T000/B000/xyz");
            serde_json::from_str(body).unwrap()
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
    let last = &got.last().unwrap().1;
    assert!(last.contains("sink downstream: recovered after"), "{last}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_reports_errors_and_panics_without_secrets() {
    use tracing_subscriber::layer::SubscriberExt;
    let (sentry_in, port) = Receiver::start().await;
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
        .map(|(p, b)| {
            assert_eq!(p, "/api/42/envelope/");
            b.clone()
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
