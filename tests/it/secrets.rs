//! Secrets never leak: the engine runs with known secret values (every `x-secret` variable the
//! shipped pipelines read, and passwords inside URLs), every error path is driven — refused
//! signatures, Redis refusing the password, unreachable alert and error-report receivers, /ready,
//! /metrics, the OAuth routes, boot refusal and `engine validate` in every format — and the logs,
//! answers, metrics and validate output are searched for each value.

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, shipped};

const VAPI: &str = "leak-vapi-secret-0001";
const TWILIO: &str = "feedfacefeedfacefeedfacefeedface";
const KEY: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const JWT: &str = "leak-jwt-secret-00000000000000000000001";
const GOOGLE: &str = "GOCSPX-leak-google-secret";
const METRICS: &str = "leak-metrics-token-0001";
const DB_PASSWORD: &str = "leakdbpassword0001";
const REDIS_PASSWORD: &str = "leakredispassword0001";
const SLACK_PATH: &str = "LEAKSLACK0001";
const SENTRY_KEY: &str = "leaksentrykey0001";

fn secrets() -> Vec<&'static str> {
    vec![
        VAPI,
        TWILIO,
        KEY,
        JWT,
        GOOGLE,
        METRICS,
        DB_PASSWORD,
        REDIS_PASSWORD,
        SLACK_PATH,
        SENTRY_KEY,
    ]
}

fn env(closed: u16) -> Vec<(&'static str, String)> {
    vec![
        ("PORT", "0".into()),
        ("VAPI_WEBHOOK_SECRET", VAPI.into()),
        ("TWILIO_AUTH_TOKEN", TWILIO.into()),
        ("ENCRYPTION_KEY", KEY.into()),
        ("JWT_SECRET", JWT.into()),
        (
            "GOOGLE_CLIENT_ID",
            "1234-leak.apps.googleusercontent.com".into(),
        ),
        ("GOOGLE_CLIENT_SECRET", GOOGLE.into()),
        (
            "GOOGLE_REDIRECT_URI",
            "http://localhost/api/auth/google/callback".into(),
        ),
        ("FRONTEND_URL", "https://app.example.com".into()),
        ("METRICS_TOKEN", METRICS.into()),
        (
            "DATABASE_URL",
            format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:5432/test"),
        ),
        // the shared Redis has no password: every Redis call fails with this one
        (
            "REDIS_URL",
            format!("redis://:{REDIS_PASSWORD}@127.0.0.1:6379"),
        ),
        (
            "SLACK_WEBHOOK_URL",
            format!("http://127.0.0.1:{closed}/services/T0/B0/{SLACK_PATH}"),
        ),
        (
            "SENTRY_DSN",
            format!("http://{SENTRY_KEY}@127.0.0.1:{closed}/1"),
        ),
        ("RUST_LOG", "debug".into()),
    ]
}

fn engine(args: &[&str], env: &[(&'static str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_engine"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// A raw HTTP/1.1 exchange: the whole answer, head and body.
fn http(port: u16, request: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn post(port: u16, path: &str, headers: &[&str], body: &str) -> String {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn get(port: u16, path: &str, headers: &[&str]) -> String {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{extra}connection: close\r\n\r\n"),
    )
}

fn assert_clean(what: &str, text: &str) {
    for s in secrets() {
        assert!(
            !text.contains(s),
            "{what} contains the secret {s}:\n{}",
            text.lines()
                .filter(|l| l.contains(s))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn no_secret_in_logs_answers_metrics_or_validate_output() {
    use std::io::{BufRead, BufReader};
    let closed = free_port();
    let env = env(closed);
    let mut child = engine(&["serve", "--pipelines", shipped().to_str().unwrap()], &env)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(p) = line.split("Server listening on port ").nth(1) {
                let _ = tx.send(p.split_whitespace().next().unwrap_or("").to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let port: u16 = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("listening")
        .parse()
        .unwrap();

    let mut answers = Vec::new();
    let vapi_body = r#"{"message":{"type":"status-update","status":"ringing","call":{"id":"9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"}}}"#;
    let json = "content-type: application/json";
    // refused: no credential, a near miss, the right one (then the queue's Redis refuses: 503)
    answers.push(post(port, "/api/webhooks/vapi", &[json], vapi_body));
    answers.push(post(
        port,
        "/api/webhooks/vapi",
        &[json, "authorization: Bearer leak-vapi-secret-0002"],
        vapi_body,
    ));
    let ok = post(
        port,
        "/api/webhooks/vapi",
        &[json, &format!("authorization: Bearer {VAPI}")],
        vapi_body,
    );
    assert!(ok.starts_with("HTTP/1.1 503"), "{ok}");
    answers.push(ok);
    // Twilio with a forged signature, an oversized body, an unknown path, a wrong method
    answers.push(post(
        port,
        "/api/twilio/sms",
        &[
            "content-type: application/x-www-form-urlencoded",
            "x-twilio-signature: AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ],
        "From=%2B1&MessageSid=SM1&AccountSid=AC1",
    ));
    answers.push(post(
        port,
        "/api/twilio/sms",
        &["content-type: application/x-www-form-urlencoded"],
        &"x".repeat(70_000),
    ));
    answers.push(get(port, "/nowhere", &[]));
    answers.push(get(port, "/api/webhooks/vapi", &[]));
    // /ready with Redis refusing the password, /metrics with a wrong and the right token
    let ready = get(port, "/ready", &[]);
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    answers.push(ready);
    answers.push(get(
        port,
        "/metrics",
        &["authorization: Bearer leak-metrics-token-0002"],
    ));
    let metrics = get(
        port,
        "/metrics",
        &[&format!("authorization: Bearer {METRICS}")],
    );
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    answers.push(metrics);
    // OAuth: a token signed with another secret, a valid one, a forged state
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"exp": chrono::Utc::now().timestamp() + 60, "app_metadata": {"org_id": "o"}, "aud": "authenticated"}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-entirely-0000000000000"),
    )
    .unwrap();
    answers.push(get(
        port,
        "/api/auth/google/start",
        &[&format!("authorization: Bearer {forged}")],
    ));
    let valid = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"exp": chrono::Utc::now().timestamp() + 60, "app_metadata": {"org_id": "o"}, "aud": "authenticated"}),
        &jsonwebtoken::EncodingKey::from_secret(JWT.as_bytes()),
    )
    .unwrap();
    let start = get(
        port,
        "/api/auth/google/start",
        &[&format!("authorization: Bearer {valid}")],
    );
    assert!(start.starts_with("HTTP/1.1 302"), "{start}");
    answers.push(start);
    answers.push(get(
        port,
        "/api/auth/google/callback?code=x&state=v1:bad:AAAA",
        &[],
    ));
    // let the worker and the alerter try (and fail) against Redis and the closed receivers
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs = logs.join().unwrap();

    for path in [
        "verification failed",
        // the queue refusing the request path's writes: one outage line (ops::outage)
        "redis_enqueue unreachable",
        "not ready",
        "oauth start: token refused",
    ] {
        assert!(logs.contains(path), "the error path `{path}` ran:\n{logs}");
    }
    assert!(logs.lines().count() > 20, "debug logs were on:\n{logs}");
    assert_clean("the logs", &logs);
    for a in &answers {
        assert_clean("an answer", a);
    }

    // boot refusal and validate, with secrets of the wrong shape
    let mut bad = env.clone();
    for (k, v) in bad.iter_mut() {
        match *k {
            "ENCRYPTION_KEY" => *v = format!("{KEY}00"),
            "TWILIO_AUTH_TOKEN" => *v = format!("{TWILIO}zz"),
            "METRICS_TOKEN" => *v = "leak-short".into(),
            _ => {}
        }
    }
    let out = engine(&["serve", "--pipelines", shipped().to_str().unwrap()], &bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let refusal =
        String::from_utf8_lossy(&out.stderr).to_string() + &*String::from_utf8_lossy(&out.stdout);
    assert!(refusal.contains("ENCRYPTION_KEY"), "{refusal}");
    assert_clean("the boot refusal", &refusal);
    assert!(!refusal.contains("leak-short"));
    for format in ["text", "json", "github"] {
        let out = engine(
            &["validate", shipped().to_str().unwrap(), "--format", format],
            &bad,
        )
        .output()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &*String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("TWILIO_AUTH_TOKEN"), "{format}: {text}");
        assert_clean(&format!("validate --format {format}"), &text);
        assert!(!text.contains("leak-short"), "{text}");
    }
}
