//! The server through a real socket: health, CORS, maintenance, 404/405/413, shipped routes.

use crate::common;

use std::time::Duration;

use common::{Dir, raw_request, shipped, sign, spawn_app};
use serde_json::Value;

#[tokio::test]
async fn health_reports_status_time_and_environment() {
    let app = spawn_app(&shipped(), &[("NODE_ENV", "test")]).await;
    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["environment"], "test");
    let ts = body["timestamp"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339 timestamp");
    app.stop().await;
}

#[tokio::test]
async fn health_defaults_to_development() {
    let app = spawn_app(&shipped(), &[]).await;
    let body: Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["environment"], "development");
    app.stop().await;
}

#[tokio::test]
async fn shipped_routes_answer_as_their_files_say() {
    let app = spawn_app(&shipped(), &[]).await;
    let form = "AccountSid=AC00000000000000000000000000000000&CallSid=CA123&From=%2B14155550100";
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let url = app.url("/api/twilio/voice");
    let mut req = app.client.post(&url).header(ct.0, ct.1).body(form);
    for (k, v) in sign(
        &shipped(),
        &[],
        "twilio-voice",
        &url,
        &[ct],
        form.as_bytes(),
    ) {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/xml");
    let twiml = res.text().await.unwrap();
    assert!(twiml.starts_with("<?xml"), "{twiml}");
    assert!(twiml.contains("<Response><Say>"), "{twiml}");

    let url = app.url("/api/twilio/sms");
    let body = "MessageSid=SM1&Body=hi";
    let mut req = app.client.post(&url).header(ct.0, ct.1).body(body);
    for (k, v) in sign(&shipped(), &[], "twilio-sms", &url, &[ct], body.as_bytes()) {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("<Response></Response>"));

    let res = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .body(r#"{"message":{"type":"status-update","status":"in-progress"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        serde_json::json!({"received": true})
    );
    app.stop().await;
}

/// A signed Vapi status update (the development secret) posted to `path`.
async fn status_update_at(app: &common::TestApp, path: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("content-type", "application/json")
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .body(r#"{"message":{"type":"status-update","status":"in-progress"}}"#)
        .send()
        .await
        .unwrap()
}

/// Express's default (non-strict) routing answered `/api/webhooks/vapi/` as `/api/webhooks/vapi`,
/// and providers configured with either spelling keep working; `trailing_slash: strict` keeps a
/// route to its own spelling; nothing else of a path is normalised.
#[tokio::test]
async fn a_trailing_slash_answers_as_the_express_app_did() {
    let dir = Dir::shipped_copy();
    dir.write(
        "strict.yaml",
        "name: strict
route: {method: POST, path: /hooks/strict, trailing_slash: strict}
respond: {status: 202, content_type: text/plain, body: strict}
",
    );
    dir.write(
        "slashed.yaml",
        "name: slashed
route: {method: POST, path: '/tenants/{tenant}/'}
respond: {status: 202, content_type: text/plain, body: slashed}
",
    );
    let app = spawn_app(dir.path(), &[]).await;
    for path in ["/api/webhooks/vapi", "/api/webhooks/vapi/"] {
        let res = status_update_at(&app, path).await;
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            serde_json::json!({"received": true}),
            "{path}"
        );
    }
    // unsigned with the slash: verified like the route it is
    let res = app
        .client
        .post(app.url("/api/webhooks/vapi/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // the other method: 405 with Allow, as for the route itself
    let res = app
        .client
        .get(app.url("/api/webhooks/vapi/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");

    // Twilio signs the URL it requested, slash included
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let url = app.url("/api/twilio/sms/");
    let body = "MessageSid=SM1&Body=hi";
    let mut req = app.client.post(&url).header(ct.0, ct.1).body(body);
    for (k, v) in sign(&shipped(), &[], "twilio-sms", &url, &[ct], body.as_bytes()) {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("<Response></Response>"));

    // a route written with the slash answers without it
    for path in ["/tenants/acme/", "/tenants/acme"] {
        let res = app.client.post(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 202, "{path}");
        assert_eq!(res.text().await.unwrap(), "slashed");
    }
    // strict: only as written
    let status = |path: &'static str| {
        let req = app.client.post(app.url(path)).send();
        async move { req.await.unwrap().status() }
    };
    assert_eq!(status("/hooks/strict").await, 202);
    assert_eq!(status("/hooks/strict/").await, 404);

    // two slashes, dot segments and encoded slashes are still no route (sent raw: a client
    // library would normalise the dots away before sending)
    for path in [
        "/api/webhooks/vapi//",
        "/api/webhooks/vapi/.",
        "/api/webhooks/vapi/./",
        "/api/webhooks/x/../vapi",
        "/api/webhooks/vapi%2F",
        "/api/webhooks/vapi/%2e/",
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer dev-vapi-webhook-secret\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
        );
        let answer = raw_request(app.addr, &[request.as_bytes()], Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{path}: {answer}");
    }
    app.stop().await;
}

/// Express matched paths ignoring letter case: a server URL typed with other capitals in a
/// provider's dashboard keeps working after the move; captured segments keep their case;
/// `case_sensitive: true` keeps a route to its own spelling; Twilio's signature is over the URL
/// as it requested it.
#[tokio::test]
async fn letter_case_is_ignored_as_the_express_app_did() {
    let dir = Dir::shipped_copy();
    dir.write(
        "exact.yaml",
        "name: exact
route: {method: POST, path: /hooks/Exact, case_sensitive: true}
respond: {status: 202, content_type: text/plain, body: exact}
",
    );
    dir.write(
        "tenant.yaml",
        "name: tenant
route: {method: POST, path: '/orgs/{org}/events'}
respond: {status: 202, content_type: text/plain, template: '{{ event.params.org }}'}
",
    );
    let app = spawn_app(dir.path(), &[]).await;
    for path in ["/API/webhooks/vapi", "/Api/Webhooks/Vapi/"] {
        assert_eq!(status_update_at(&app, path).await.status(), 200, "{path}");
    }
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let url = app.url("/API/Twilio/SMS");
    let body = "MessageSid=SM1&Body=hi";
    let mut req = app.client.post(&url).header(ct.0, ct.1).body(body);
    for (k, v) in sign(&shipped(), &[], "twilio-sms", &url, &[ct], body.as_bytes()) {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 200);
    let res = app
        .client
        .post(app.url("/ORGS/AcMe/Events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.text().await.unwrap(), "AcMe");
    let status = |path: &'static str| {
        let req = app.client.post(app.url(path)).send();
        async move { req.await.unwrap().status() }
    };
    assert_eq!(status("/hooks/Exact").await, 202);
    assert_eq!(status("/hooks/exact").await, 404);
    app.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_405_both_json() {
    let app = spawn_app(&shipped(), &[]).await;
    let res = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "not_found");

    let res = app
        .client
        .get(app.url("/api/webhooks/vapi"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );

    let res = app.client.post(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");

    let res = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn cors_allow_list() {
    let app = spawn_app(&shipped(), &[("CORS_ORIGIN", "https://voxanne.ai")]).await;
    // the seed's own check: an unknown origin gets no Access-Control-Allow-Origin
    let res = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://evil.com")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    assert!(
        res.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );

    let res = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://voxanne.ai")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://voxanne.ai"
    );

    // preflight, allowed and denied
    let pre = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/webhooks/vapi"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let res = pre("https://voxanne.ai").await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://voxanne.ai"
    );
    assert!(
        res.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    // a refused origin's preflight: nothing granted, nothing described
    let res = pre("https://evil.com").await.unwrap();
    assert_eq!(res.status(), 204);
    let cors: Vec<&str> = res
        .headers()
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{cors:?}");
    assert_eq!(res.headers()["vary"], "origin");

    // the settings file's development origin was replaced by CORS_ORIGIN, not added to
    let res = app
        .client
        .get(app.url("/health"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

#[tokio::test]
async fn maintenance_mode_503_on_routes_health_stays_up() {
    let app = spawn_app(&shipped(), &[("MAINTENANCE_MODE", "true")]).await;
    let res = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "120");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "maintenance");
    assert!(body["message"].as_str().unwrap().contains("maintenance"));

    let res = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "maintenance");

    // unknown paths are still 404: maintenance applies to pipeline routes
    assert_eq!(
        app.client
            .get(app.url("/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn body_limit_by_declared_length_is_413_without_reading() {
    let app = spawn_app(&shipped(), &[]).await;
    // twilio-sms accepts 64KiB. Declare 10 MiB but send only the headers: the answer must come
    // without the server waiting for the body.
    let head = format!(
        "POST /api/twilio/sms HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n",
        10 * 1024 * 1024
    );
    let reply = raw_request(app.addr, &[head.as_bytes()], Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload_too_large"), "{reply}");
    app.stop().await;
}

#[tokio::test]
async fn body_limit_for_chunked_body_without_length() {
    let app = spawn_app(&shipped(), &[]).await;
    let head = b"POST /api/twilio/sms HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = format!("8000\r\n{}\r\n", "a".repeat(0x8000));
    // three 32 KiB chunks: over the 64 KiB limit on the third
    let parts: Vec<&[u8]> = vec![
        head,
        chunk.as_bytes(),
        chunk.as_bytes(),
        chunk.as_bytes(),
        b"0\r\n\r\n",
    ];
    let reply = raw_request(app.addr, &parts, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // under the limit, chunked, is read whole and goes on to verification (unsigned: 401)
    let parts: Vec<&[u8]> = vec![
        b"POST /api/twilio/sms HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        chunk.as_bytes(),
        b"0\r\n\r\n",
    ];
    let reply = raw_request(app.addr, &parts, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    app.stop().await;
}

#[tokio::test]
async fn pipeline_body_limit_overrides_settings() {
    let dir = Dir::shipped_copy();
    dir.write(
        "tiny.yaml",
        "name: tiny\nroute: {method: POST, path: /tiny}\nbody_limit: 10B\n",
    );
    let app = spawn_app(dir.path(), &[]).await;
    let ok = app
        .client
        .post(app.url("/tiny"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let big = app
        .client
        .post(app.url("/tiny"))
        .body("0123456789X")
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    app.stop().await;
}

#[tokio::test]
async fn path_parameters_route() {
    let dir = Dir::shipped_copy();
    dir.write(
        "tenant.yaml",
        "name: tenant-hooks\nroute: {method: PUT, path: '/hooks/{tenant}/events'}\nrespond: {status: 202, content_type: text/plain, body: accepted, headers: {x-pipeline: tenant-hooks}}\n",
    );
    let app = spawn_app(dir.path(), &[]).await;
    let res = app
        .client
        .put(app.url("/hooks/acme/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["x-pipeline"], "tenant-hooks");
    assert_eq!(res.text().await.unwrap(), "accepted");
    assert_eq!(
        app.client
            .put(app.url("/hooks/acme"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_request() {
    let app = spawn_app(&shipped(), &[]).await;
    let addr = app.addr;
    // Start a request whose body arrives slowly, then shut down while it is in flight.
    let in_flight = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/webhooks/vapi HTTP/1.1\r\nhost: x\r\nauthorization: Bearer dev-vapi-webhook-secret\r\ncontent-length: 10\r\nconnection: close\r\n\r\n01234")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"56789").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stop = tokio::spawn(app.stop());
    let reply = in_flight.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    stop.await.unwrap();
    // and the listener is gone
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = Dir::shipped_copy();
    let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    dir.write(
        "engine.yaml",
        &format!("{base}\ntimeouts: {{header_secs: 1, body_secs: 2}}\n"),
    );
    let app = spawn_app(dir.path(), &[]).await;

    // slow-loris: half a request head, then nothing
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"POST /api/webhooks/vapi HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "header timeout did not close the connection: {took:?}"
    );

    // a body that stalls halfway
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(
        b"POST /api/webhooks/vapi HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "body timeout did not end the request: {:?}",
        started.elapsed()
    );

    // the server still answers
    assert_eq!(
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}
