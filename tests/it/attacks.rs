//! Hostile requests against the served engine (issue 45's review): each test plays one attack
//! through a real socket and checks what the engine lets it cost.

use crate::common;

use std::time::Duration;

use common::{Dir, spawn_app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const TWILIO: &str = "00112233445566778899aabbccddeeff";

/// Made-up tenant ids cost the database nothing past the per-IP limit: ids of the wrong shape
/// are never looked up, and a lookup counts against the per-IP default before it is made, so
/// 150 forged Twilio requests, each naming a new well-shaped AccountSid, make at most the
/// limit's worth of queries (before: one query per request, over the limit too).
#[tokio::test]
async fn forged_tenant_ids_meet_the_per_ip_limit_before_the_database() {
    let (db, _schema) = common::fresh_schema().await;
    let dir = Dir::shipped_copy();
    let app = spawn_app(
        dir.path(),
        &[
            ("DATABASE_URL", db.as_str()),
            ("ENCRYPTION_KEY", KEY),
            ("TWILIO_AUTH_TOKEN", TWILIO),
        ],
    )
    .await;
    let live = app.live();
    let queries = || live.app().tenants.as_ref().expect("tenant store").queries();
    let post = |sid: String| {
        let client = app.client.clone();
        let url = app.url("/api/twilio/sms");
        async move {
            client
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", "Zm9yZ2VkLXNpZ25hdHVyZQ==")
                .body(format!(
                    "AccountSid={sid}&MessageSid=SM{}&Body=hi",
                    fastrand::u64(..)
                ))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // the budget refills one request every 600 ms (100/min): on a loaded machine the requests
    // below can take long enough to earn some back, each of which is one more lookup allowed
    let started = std::time::Instant::now();
    // wrong shape: refused without a query
    for i in 0..10 {
        assert_eq!(post(format!("AC_made_up_{i}")).await, 401);
    }
    assert_eq!(queries(), 0, "an id of the wrong shape was looked up");
    let mut statuses = Vec::new();
    for _ in 0..150 {
        let sid = format!("AC{:032x}", fastrand::u128(..));
        statuses.push(post(sid).await);
    }
    let refused = statuses.iter().filter(|s| **s == 429).count();
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(refused + unauthorized, 150, "{statuses:?}");
    // the shipped per-IP default is 100/min: 10 spent above, 90 left for lookups (and what
    // the time taken refilled)
    let refilled = (started.elapsed().as_millis() / 600) as usize;
    assert!(
        (90..=90 + refilled).contains(&unauthorized),
        "{unauthorized} lookups, {refilled} refilled: {statuses:?}"
    );
    assert_eq!(
        queries(),
        unauthorized as u64,
        "a lookup was made for a request over the limit"
    );
    app.stop().await;
}

/// A body dripped a byte at a time is cut off once `timeouts.body_secs` has passed in all
/// (the server's own timeout only bounds the gap between two reads).
#[tokio::test]
async fn a_dripped_body_is_cut_off_at_its_total_time() {
    let dir = Dir::shipped_copy();
    dir.edit("engine.yaml", |s| s + "\ntimeouts:\n  body_secs: 2\n");
    dir.write(
        "open.yaml",
        "name: open\nroute: {method: POST, path: /open}\n",
    );
    let app = spawn_app(dir.path(), &[]).await;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /open HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // a byte every 300 ms: never a gap long enough for the per-read timeout; 100 bytes would
    // take 30 s
    while started.elapsed() < Duration::from_secs(10) {
        if s.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "no 408 within 10 s: {text:?}"
    );
    assert!(text.contains("request_timeout"), "{text}");
    app.stop().await;
}

/// One client cannot hold more than `connections.per_ip` connections open; a place is given
/// back when a connection closes.
#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_once() {
    let dir = Dir::shipped_copy();
    dir.edit("engine.yaml", |s| s + "\nconnections:\n  per_ip: 3\n");
    let app = spawn_app(dir.path(), &[]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    // the fourth is accepted by the kernel, then closed before anything is read
    let mut extra = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection was served: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // the held ones still work, and closing one frees a place
    let answer = common::raw_request(
        app.addr,
        &[b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"],
        Duration::from_secs(2),
    )
    .await;
    assert!(
        answer.is_empty(),
        "a fourth connection was served: {answer}"
    );
    drop(held.pop());
    let answered = common::eventually_async(Duration::from_secs(5), || async {
        let a = common::raw_request(
            app.addr,
            &[b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"],
            Duration::from_secs(2),
        )
        .await;
        a.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(answered.is_some(), "the freed place was not given back");
    app.stop().await;
}

/// A limit keyed by a header keeps the per-IP default under it: rotating the header is no way
/// past it, and validate warns about such a key.
#[tokio::test]
async fn rotating_a_header_key_does_not_escape_the_per_ip_limit() {
    let dir = Dir::shipped_copy();
    dir.edit("engine.yaml", |s| {
        s.replace("  limit: 100/1m\n", "  limit: 5/1m\n")
    });
    dir.write(
        "keyed.yaml",
        "name: keyed\nroute: {method: POST, path: /keyed}\nrate_limit:\n  limit: 60/1m\n  key: [{header: X-Client}]\n",
    );
    let (project, _) = engine::plan::load(dir.path(), &engine::env::EnvSource::default()).unwrap();
    assert!(
        project
            .warnings
            .iter()
            .any(|w| w.file.ends_with("keyed.yaml")
                && w.pointer == "/rate_limit/key"
                && w.message.contains("rotating")),
        "{:?}",
        project.warnings
    );
    let app = spawn_app(dir.path(), &[]).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let res = app
            .client
            .post(app.url("/keyed"))
            .header("x-client", format!("rotated-{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        7,
        "{statuses:?}"
    );
    app.stop().await;
}

/// Webhook answers are sandboxed (a reflected payload cannot script the console that shares
/// the origin), and a respond template escapes what the caller sent.
#[tokio::test]
async fn answers_are_sandboxed_and_template_holes_escaped() {
    let dir = Dir::shipped_copy();
    dir.write(
        "greet.yaml",
        "name: greet\nroute: {method: POST, path: /greet}\nrespond:\n  content_type: text/html\n  template: '<p>Hello {{ event.body.name }}</p>'\n",
    );
    let app = spawn_app(dir.path(), &[]).await;
    let res = app
        .client
        .post(app.url("/greet"))
        .header("content-type", "application/json")
        .body(r#"{"name":"<script>fetch('/console/queues')</script>"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.starts_with("sandbox") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let body = res.text().await.unwrap();
    assert_eq!(
        body,
        "<p>Hello &lt;script&gt;fetch(&#39;/console/queues&#39;)&lt;/script&gt;</p>"
    );
    // JSON errors too
    let res = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.headers().contains_key("content-security-policy"));
    app.stop().await;
}
