//! End to end: a signed request answered 2xx -> queue -> worker -> transform -> sink, against
//! real Redis and Postgres (a private key prefix and a fresh schema per test), and in process.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Dir, fresh_schema, pg, spawn_app};

const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn payload(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/payloads")
            .join(rel),
    )
    .unwrap()
}

fn dir(data: &Path) -> Dir {
    Dir::shipped_with_data(data)
}

async fn post_vapi(app: &common::TestApp, body: Vec<u8>) -> u16 {
    common::post_vapi(app, body).await
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    common::sql_count(db, sql).await
}

async fn eventually(db: &tokio_postgres::Client, sql: &str, want: i64) {
    common::sql_eventually(db, sql, want).await
}

#[tokio::test]
async fn signed_request_to_postgres_row_through_redis() {
    let (database, schema) = fresh_schema().await;
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    let app = spawn_app(
        d.path(),
        &[
            ("REDIS_URL", common::redis()),
            ("DATABASE_URL", &database),
            ("ENCRYPTION_KEY", K),
        ],
    )
    .await;
    let db = pg(&schema).await;

    assert_eq!(
        post_vapi(&app, payload("vapi/end-of-call-report.json")).await,
        200
    );
    eventually(&db, "SELECT count(*) FROM call_logs", 1).await;
    let row = db
        .query_one(
            "SELECT call_id::text, cost::text, summary, event_id FROM call_logs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
    );
    assert_eq!(row.get::<_, String>(1), "0.137200");
    assert_eq!(
        row.get::<_, String>(2),
        "Caller booked a cleaning for Tuesday at 10am."
    );
    assert!(!row.get::<_, String>(3).is_empty());

    // Vapi retrying the same status update three times: one row
    for _ in 0..3 {
        assert_eq!(
            post_vapi(&app, payload("vapi/status-update.json")).await,
            200
        );
    }
    assert_eq!(
        post_vapi(&app, payload("vapi/transcript-final.json")).await,
        200
    );
    eventually(&db, "SELECT count(*) FROM transcripts", 1).await;
    eventually(&db, "SELECT count(*) FROM call_status", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM call_status").await,
        1,
        "deduplicated at ingest"
    );

    // credentials are never stored with the event
    let prefix = common::redis_key_prefix(d.path());
    let q = engine::queue::redis::RedisQueue::new(common::redis(), &prefix, "vapi", "t").unwrap();
    assert_eq!(
        post_vapi(
            &app,
            br#"{"message":{"type":"status-update","timestamp":7}}"#.to_vec()
        )
        .await,
        200
    );
    let mut dead = Vec::new();
    for _ in 0..50 {
        dead = q.dead_letters(10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let headers = &dead[0].event.as_ref().unwrap().headers;
    assert!(
        headers.iter().any(|(k, _)| k == "content-type"),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .all(|(k, v)| k != "authorization" && !v.contains("dev-vapi-webhook-secret")),
        "{headers:?}"
    );

    // a speech-update is answered and dropped by the transform: no table grows
    assert_eq!(
        post_vapi(&app, payload("vapi/speech-update.json")).await,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn no_2xx_without_a_stored_event() {
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    let app = spawn_app(d.path(), &[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let res = app
        .client
        .post(app.url("/api/webhooks/vapi"))
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .header("content-type", "application/json")
        .body(payload("vapi/status-update.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap()["error"],
        "unavailable"
    );
    app.stop().await;
}

#[tokio::test]
async fn development_mode_queues_in_process_and_writes_json_lines() {
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    let app = spawn_app(d.path(), &[]).await;
    assert_eq!(
        post_vapi(&app, payload("vapi/end-of-call-report.json")).await,
        200
    );
    let file = data.path().join("call_logs.jsonl");
    for _ in 0..100 {
        if file.exists() && !std::fs::read_to_string(&file).unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["call_id"], "9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b");
    assert_eq!(line["sink"], "call_logs");
    assert_eq!(line["row_index"], 0);
    app.stop().await;
}

/// The shipped pipelines with the Vapi pipeline acknowledging only after the write.
fn processed_dir(data: &Path) -> (Dir, String) {
    let d = dir(data);
    let vapi = std::fs::read_to_string(d.path().join("vapi.yaml")).unwrap();
    d.write(
        "vapi.yaml",
        &vapi.replace("    window: 24h\n", "    window: 24h\n  ack: processed\n"),
    );
    let prefix = common::redis_key_prefix(d.path());
    (d, prefix)
}

#[tokio::test]
async fn ack_processed_answers_after_the_write() {
    let (database, schema) = fresh_schema().await;
    let data = tempfile::tempdir().unwrap();
    let (d, prefix) = processed_dir(data.path());
    let app = spawn_app(
        d.path(),
        &[
            ("REDIS_URL", common::redis()),
            ("DATABASE_URL", &database),
            ("ENCRYPTION_KEY", K),
        ],
    )
    .await;
    let db = pg(&schema).await;
    assert_eq!(
        post_vapi(&app, payload("vapi/end-of-call-report.json")).await,
        200
    );
    // no waiting: the row is there when the 2xx is
    assert_eq!(count(&db, "SELECT count(*) FROM call_logs").await, 1);
    // a transform failure (the report's required call id missing) is dead-lettered (and
    // answered, as in the queued path)
    assert_eq!(
        post_vapi(
            &app,
            br#"{"message":{"type":"end-of-call-report","timestamp":1}}"#.to_vec()
        )
        .await,
        200
    );
    let q = engine::queue::redis::RedisQueue::new(common::redis(), &prefix, "vapi", "t").unwrap();
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .reason
            .contains("required field `call_id` has no value"),
        "{}",
        dead[0].reason
    );
    app.stop().await;
}

#[tokio::test]
async fn ack_processed_sink_down_is_503_and_the_retry_is_not_taken_for_a_repeat() {
    let data = tempfile::tempdir().unwrap();
    let (d, _) = processed_dir(data.path());
    let app = spawn_app(
        d.path(),
        &[
            ("REDIS_URL", common::redis()),
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test"),
            ("ENCRYPTION_KEY", K),
        ],
    )
    .await;
    assert_eq!(
        post_vapi(&app, payload("vapi/status-update.json")).await,
        503
    );
    assert_eq!(
        post_vapi(&app, payload("vapi/status-update.json")).await,
        503,
        "the provider's retry is processed again"
    );
    app.stop().await;
}

#[tokio::test]
async fn redis_stopped_means_503_until_it_is_back() {
    let mut redis = common::PrivateRedis::start(true);
    let data = tempfile::tempdir().unwrap();
    let d = dir(data.path());
    let app = spawn_app(d.path(), &[("REDIS_URL", &redis.url())]).await;
    assert_eq!(
        post_vapi(&app, payload("vapi/status-update-ended.json")).await,
        200
    );
    redis.kill();
    assert_eq!(
        post_vapi(&app, payload("vapi/status-update.json")).await,
        503
    );
    redis.restart();
    let mut status = 0;
    for _ in 0..20 {
        status = post_vapi(&app, payload("vapi/transcript-final.json")).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "serving again once Redis is back");
    app.stop().await;
}
