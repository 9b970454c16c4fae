//! The Postgres sink against real Postgres (a fresh schema per test, the shipped migrations
//! applied), and the rows the shipped transforms produce landing in the shipped tables.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fresh_schema, pg};
use engine::config::sink::{OnConflict, PostgresConfig};
use engine::sink::postgres::PostgresSink;
use engine::sink::{Batch, Sink, SinkError};
use engine::transform::Output;
use serde_json::json;

fn cfg(table: &str) -> PostgresConfig {
    PostgresConfig {
        table: table.into(),
        columns: Default::default(),
        key: vec![],
        on_conflict: OnConflict::Nothing,
        update: vec![],
        encrypt: vec![],
    }
}

fn batch(event_id: &str, sink: &str, rows: Vec<serde_json::Value>) -> Batch {
    Batch {
        event_id: event_id.into(),
        pipeline: "p".into(),
        sink: sink.into(),
        step: "s".into(),
        rows,
    }
}

/// The rows the shipped transform makes of a payload file.
fn rows_of(pipeline: &str, content_type: &str, file: &str) -> (String, Vec<serde_json::Value>) {
    let program = common::program_in(&common::shipped(), pipeline);
    let body = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/payloads")
            .join(file),
    )
    .unwrap();
    let input = common::event_input("evt_1", pipeline, "/", content_type, body);
    match program.run(&input).unwrap() {
        Output::Rows { sink, rows, .. } => (sink, rows),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn shipped_transform_rows_land_typed_in_the_shipped_tables() {
    let (db, schema) = fresh_schema().await;
    let pool = engine::db::pool(&db, 2).unwrap();
    let mut c = cfg("call_logs");
    c.key = vec!["call_id".into()];
    c.on_conflict = OnConflict::Update;
    let sink = PostgresSink::new(&c, pool.clone(), None).unwrap();
    let (name, rows) = rows_of("vapi", "application/json", "vapi/end-of-call-report.json");
    assert_eq!(name, "call_logs");
    sink.write(&batch("evt_1", "call_logs", rows.clone()))
        .await
        .unwrap();
    // delivered again: still one row
    sink.write(&batch("evt_1", "call_logs", rows))
        .await
        .unwrap();

    let db = pg(&schema).await;
    let row = db
        .query_one(
            "SELECT count(*) OVER (), call_id::text, cost::text, duration_seconds::text, started_at = '2026-11-25T16:00:00Z'::timestamptz, structured_data->>'service', ended_reason FROM call_logs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(
        row.get::<_, String>(1),
        "9f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
    );
    assert_eq!(row.get::<_, String>(2), "0.137200");
    assert_eq!(row.get::<_, String>(3), "201.500");
    assert!(row.get::<_, bool>(4));
    assert_eq!(row.get::<_, String>(5), "cleaning");
    assert_eq!(row.get::<_, String>(6), "customer-ended-call");

    // text[] from the MMS transform
    let sink = PostgresSink::new(&cfg("sms_messages"), pool, None).unwrap();
    let (_, rows) = rows_of(
        "twilio-sms",
        "application/x-www-form-urlencoded",
        "twilio/sms-mms-two-media.form",
    );
    sink.write(&batch("evt_2", "sms_messages", rows))
        .await
        .unwrap();
    let types: Vec<String> = db
        .query_one("SELECT media_content_types FROM sms_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(types, ["image/jpeg", "image/png"]);
}

#[tokio::test]
async fn bad_values_are_permanent_and_name_the_problem() {
    let (db, _schema) = fresh_schema().await;
    let pool = engine::db::pool(&db, 1).unwrap();
    let sink = PostgresSink::new(&cfg("sms_messages"), pool, None).unwrap();
    let base = json!({"message_sid": "SM1", "received_at": "2026-11-25T16:00:00Z", "num_media": 0});

    let mut too_many = base.clone();
    too_many["num_media"] = json!(11);
    let Err(SinkError::Permanent(msg)) = sink.write(&batch("e1", "sms", vec![too_many])).await
    else {
        panic!()
    };
    assert!(
        msg.to_string().contains("sms_messages_num_media_check"),
        "{msg}"
    );

    let mut not_a_time = base.clone();
    not_a_time["received_at"] = json!("yesterday-ish");
    let Err(SinkError::Permanent(msg)) = sink.write(&batch("e2", "sms", vec![not_a_time])).await
    else {
        panic!()
    };
    assert!(msg.to_string().contains("timestamp"), "{msg}");

    let mut unknown = base.clone();
    unknown["colour"] = json!("red");
    let Err(SinkError::Permanent(msg)) = sink.write(&batch("e3", "sms", vec![unknown])).await
    else {
        panic!()
    };
    assert!(msg.to_string().contains("colour"), "{msg}");

    let mut injected = base.clone();
    injected["x\"); DROP TABLE sms_messages; --"] = json!(1);
    let Err(SinkError::Permanent(msg)) = sink.write(&batch("e4", "sms", vec![injected])).await
    else {
        panic!()
    };
    assert!(msg.to_string().contains("is not a column name"), "{msg}");

    // the good row still goes in
    sink.write(&batch("e5", "sms", vec![base])).await.unwrap();
}

#[tokio::test]
async fn database_down_is_a_retry() {
    let pool = engine::db::pool("postgres://postgres@127.0.0.1:1/test", 1).unwrap();
    let sink = PostgresSink::new(&cfg("sms_messages"), pool, None).unwrap();
    let r = sink
        .write(&batch("e1", "sms", vec![json!({"message_sid": "SM1"})]))
        .await;
    assert!(matches!(r, Err(SinkError::Retry(_))), "{r:?}");
}

#[tokio::test]
async fn encrypted_fields_are_stored_encrypted() {
    let (db, schema) = fresh_schema().await;
    let pool = engine::db::pool(&db, 1).unwrap();
    let key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let ring = engine::crypto::Keyring::new(key, &[]).unwrap();
    let mut c = cfg("sms_messages");
    c.encrypt = vec!["body".into()];
    let sink = PostgresSink::new(&c, pool, Some(ring.clone())).unwrap();
    sink.write(&batch("e1", "sms", vec![json!({"message_sid": "SM1", "received_at": "2026-11-25T16:00:00Z", "body": "my card is 4242"})]))
        .await
        .unwrap();
    let stored: String = pg(&schema)
        .await
        .query_one("SELECT body FROM sms_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.starts_with("v1:") && !stored.contains("4242"),
        "{stored}"
    );
    assert_eq!(
        ring.decrypt(
            &stored,
            &engine::sink::postgres::row_context(
                "sms_messages",
                "body",
                &["e1".to_string(), "0".to_string()]
            )
        )
        .unwrap(),
        b"my card is 4242"
    );
    assert!(
        PostgresSink::new(&c, engine::db::pool(&db, 1).unwrap(), None).is_err(),
        "needs ENCRYPTION_KEY"
    );
}

#[tokio::test]
async fn tls_with_sslmode_require_and_verify_full() {
    let pool = engine::db::pool(&format!("{}?sslmode=require", common::pg_url()), 1).unwrap();
    let client = pool
        .get()
        .await
        .expect("TLS connection to the local Postgres (ssl = on)");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session is encrypted");
    let plain = engine::db::pool(&format!("{}?sslmode=disable", common::pg_url()), 1).unwrap();
    let ssl: bool = plain
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!ssl);
    // verify-full checks the certificate: the local self-signed one is refused
    let strict = engine::db::pool(&format!("{}?sslmode=verify-full", common::pg_url()), 1).unwrap();
    assert!(strict.get().await.is_err());
}

/// A receiver on 127.0.0.1 answering the scripted statuses in turn; returns its URL and the
/// requests it saw (head and body).
async fn receiver(statuses: Vec<u16>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    receiver_with(statuses, String::new()).await
}

/// [`receiver`], each answer carrying the `extra` header lines (each ending in CRLF).
async fn receiver_with(
    statuses: Vec<u16>,
    extra: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        for status in statuses {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= head_end + 4 + len || n == 0 {
                        log.lock().unwrap().push(text);
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
            );
            s.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    (url, seen)
}

/// An HTTP sink POSTing to `url` with one configured header.
fn http_sink(url: String, (name, value): (&str, &str)) -> engine::sink::http::HttpSink {
    use engine::config::sink::{Http, HttpSinkMethod};
    engine::sink::http::HttpSink::new(&Http {
        url,
        method: HttpSinkMethod::Post,
        headers: BTreeMap::from([(name.to_string(), value.to_string())]),
        timeout_ms: 2000,
    })
    .unwrap()
}

#[tokio::test]
async fn http_sink_posts_json_with_an_idempotency_key_and_classifies_answers() {
    use engine::config::sink::{Http, HttpSinkMethod};
    use engine::sink::http::HttpSink;
    let (url, seen) = receiver(vec![200, 503, 429, 422]).await;
    let sink = http_sink(url, ("authorization", "Bearer partner-token"));
    let b = batch("evt_42", "partner", vec![json!({"call_id": "c1"})]);
    sink.write(&b).await.unwrap();
    assert!(
        matches!(sink.write(&b).await, Err(SinkError::Retry(_))),
        "503 is retried"
    );
    assert!(
        matches!(sink.write(&b).await, Err(SinkError::Retry(_))),
        "429 is retried"
    );
    assert!(
        matches!(sink.write(&b).await, Err(SinkError::Permanent(m)) if m.to_string().contains("422")),
        "other 4xx dead-letter"
    );
    let first = seen.lock().unwrap()[0].clone();
    assert!(first.starts_with("POST /hook HTTP/1.1"), "{first}");
    let lower = first.to_ascii_lowercase();
    assert!(
        lower.contains("idempotency-key: evt_42")
            && lower.contains("authorization: bearer partner-token"),
        "{first}"
    );
    let body: serde_json::Value =
        serde_json::from_str(&first[first.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(
        body,
        json!({"event_id": "evt_42", "pipeline": "p", "sink": "partner", "rows": [{"call_id": "c1"}]})
    );

    // nothing listening: a retry, and the error does not repeat the URL
    let dead = HttpSink::new(&Http {
        url: "http://127.0.0.1:1/secret-token-in-path".into(),
        method: HttpSinkMethod::Put,
        headers: BTreeMap::new(),
        timeout_ms: 500,
    })
    .unwrap();
    match dead.write(&b).await {
        Err(SinkError::Retry(m)) => assert!(
            !engine::diagnostics::chain(&m).contains("secret-token"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
}

/// A 307 from the sink's endpoint is not followed: the rows and the configured `x-api-key` never
/// reach the host it points to, and the event dead-letters with the status and that host.
#[tokio::test]
async fn http_sink_does_not_follow_redirects() {
    let (elsewhere, taken) = receiver(vec![200]).await;
    let (url, seen) = receiver_with(vec![307], format!("location: {elsewhere}\r\n")).await;
    let sink = http_sink(url, ("x-api-key", "partner-key"));
    let b = batch("evt_7", "partner", vec![json!({"call_id": "c1"})]);
    match sink.write(&b).await {
        Err(SinkError::Permanent(m)) => {
            assert!(
                m.to_string().contains("307") && m.to_string().contains("127.0.0.1"),
                "{m}"
            );
            assert!(
                !m.to_string().contains("/hook"),
                "the target's path stays out of the reason: {m}"
            );
        }
        other => panic!("a redirect was not refused: {other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        taken.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
}

/// Supabase's pooler in transaction mode (port 6543), played by a real PgBouncer with
/// `pool_mode = transaction` and two server connections: eight engine connections write 300
/// events at once (each write a transaction with its statement timeout), and the tenant store
/// stores and reads secrets. Named prepared statements would fail here (`prepared statement
/// "s0" does not exist`) as soon as two clients' transactions share a server connection.
#[tokio::test]
async fn sink_and_tenant_store_work_through_pgbouncer_in_transaction_mode() {
    let bouncer = common::PgBouncer::start(2);
    let (name, direct) = common::fresh_database().await;
    let url = bouncer.url(&name);
    let pool = engine::db::pool(&url, 8).unwrap();
    let sink = std::sync::Arc::new(
        PostgresSink::new(&cfg("sms_messages"), pool.clone(), None)
            .unwrap()
            .with_statement_timeout(std::time::Duration::from_secs(5)),
    );
    let writes = (0..300).map(|i| {
        let sink = sink.clone();
        async move {
            let row = json!({
                "message_sid": format!("SM{i:032}"),
                "account_sid": "AC00000000000000000000000000000000",
                "from_number": "+15550001111",
                "to_number": "+15550002222",
                "body": format!("message {i}"),
                "received_at": "2026-11-29T08:00:00Z",
            });
            sink.write(&batch(&format!("evt_{i}"), "sms", vec![row]))
                .await
        }
    });
    let results = futures::future::join_all(writes).await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", bouncer.log());

    // a bad value still names its column through the pooler (the follow-up query is unnamed too)
    let err = sink
        .write(&batch(
            "evt_bad",
            "sms",
            vec![json!({"message_sid": "SMbad", "num_media": "many", "received_at": "2026-11-29T08:00:00Z"})],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SinkError::Permanent(m) if m.to_string().contains("column `num_media`")),
        "{err:?}"
    );

    // the tenant store: upsert encrypted, read back through a cold cache
    let keyring = engine::crypto::Keyring::new(
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        &[],
    )
    .unwrap();
    let store = |ttl| engine::verify::TenantSecrets::new(pool.clone(), keyring.clone(), ttl, 100);
    for i in 0..20 {
        store(std::time::Duration::from_secs(60))
            .set(
                &format!("AC{i:032}"),
                "twilio_auth_token",
                &format!("token-{i}"),
            )
            .await
            .unwrap();
    }
    let reads = (0..20).map(|i| {
        let s = store(std::time::Duration::ZERO);
        async move { s.get(&format!("AC{i:032}"), "twilio_auth_token").await }
    });
    for (i, got) in futures::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            got.unwrap().as_deref().map(String::as_str),
            Some(format!("token-{i}").as_str())
        );
    }

    let db = common::connect(&direct).await;
    let n: i64 = db
        .query_one("SELECT count(*) FROM sms_messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 300);
    assert!(
        !bouncer.log().contains("prepared statement"),
        "{}",
        bouncer.log()
    );
    drop(bouncer);
    common::drop_database(&name).await;
}

/// Two workers upserting the same keys in two concurrent batches, in opposite orders: the rows of
/// each statement are written in the conflict key's order, so one waits for the other instead of
/// both deadlocking (Postgres's `deadlock detected` would come back as a retry).
#[tokio::test]
async fn concurrent_upserts_of_the_same_keys_do_not_deadlock() {
    let (db, schema) = fresh_schema().await;
    pg(&schema)
        .await
        .batch_execute(
            "CREATE TABLE call_state (call_id text PRIMARY KEY, status text NOT NULL, event_id text NOT NULL, row_index integer NOT NULL)",
        )
        .await
        .unwrap();
    let pool = engine::db::pool(&db, 4).unwrap();
    let mut c = cfg("call_state");
    c.key = vec!["call_id".into()];
    c.on_conflict = OnConflict::Update;
    let (a, b) = (
        PostgresSink::new(&c, pool.clone(), None).unwrap(),
        PostgresSink::new(&c, pool, None).unwrap(),
    );
    let batches = |worker: &str, round: usize, keys: Vec<usize>| -> Vec<Batch> {
        keys.into_iter()
            .map(|k| {
                batch(
                    &format!("{worker}-{round}-{k}"),
                    "call_state",
                    vec![json!({"call_id": format!("call-{k:02}"), "status": worker})],
                )
            })
            .collect()
    };
    for round in 0..40 {
        let up = batches("a", round, (0..30).collect());
        let down = batches("b", round, (0..30).rev().collect());
        let (ra, rb) = tokio::join!(a.write_many(&up), b.write_many(&down));
        assert!(ra.is_ok() && rb.is_ok(), "round {round}: {ra:?} {rb:?}");
    }
    let n: i64 = pg(&schema)
        .await
        .query_one("SELECT count(*) FROM call_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 30);
}

/// `map` fields with `as:` write values each real column type takes: text that spells a
/// boolean or a number, numbers as text, JSON as it is, times from epoch seconds. A value that
/// does not convert is null (the row still written), the field's default, or a dead letter
/// naming the field, as `on_invalid` says; without `as:` the same value dead-letters the whole
/// event at the database.
#[tokio::test]
async fn map_conversions_land_in_real_column_types() {
    let (db, schema) = fresh_schema().await;
    let client = pg(&schema).await;
    client
        .batch_execute(
            "CREATE TABLE conv (event_id text NOT NULL, row_index int NOT NULL, b boolean, \
             i bigint, n numeric, t text, j jsonb, at timestamptz, d boolean, raw boolean, \
             PRIMARY KEY (event_id, row_index))",
        )
        .await
        .unwrap();
    let dir = common::Dir::shipped_copy();
    dir.write(
        "conv.yaml",
        "name: conv\nroute: {method: POST, path: /conv}\ntransform:\n  - map:\n      b: {json: /b, as: boolean}\n      i: {json: /i, as: integer}\n      n: {json: /n, as: number}\n      t: {json: /t, as: text}\n      j: {json: /j, as: json}\n      at: {json: /at, as: time}\n      d: {json: /d, as: boolean, default: false, on_invalid: default}\n      raw: {json: /raw}\n    sink: s\nsinks:\n  s:\n    postgres: {table: conv}\n",
    );
    let program = common::program_in(dir.path(), "conv");
    let sink = PostgresSink::new(&cfg("conv"), engine::db::pool(&db, 1).unwrap(), None).unwrap();
    let write = |id: &'static str, body: &'static str| {
        let input = common::event_input(id, "conv", "/conv", "application/json", body);
        let rows = match program.run(&input) {
            Ok(Output::Rows { rows, .. }) => rows,
            other => panic!("{other:?}"),
        };
        let sink = &sink;
        async move { sink.write(&batch(id, "s", rows)).await }
    };
    write(
        "e1",
        r#"{"b":"yes","i":"42","n":"2.5","t":17,"j":{"x":[1]},"at":1732550400,"d":"off","raw":true}"#,
    )
    .await
    .unwrap();
    write(
        "e2",
        r#"{"b":0,"i":7.0,"n":3,"t":{"k":"v"},"j":"text","at":"2026-11-25T16:00:00+01:00","d":"maybe"}"#,
    )
    .await
    .unwrap();
    // nothing converts: every converted field null, `d` its default; the row is written
    write(
        "e3",
        r#"{"b":"maybe","i":"4.5","n":"many","t":null,"at":"yesterday","d":[]}"#,
    )
    .await
    .unwrap();
    let rows = client
        .query(
            "SELECT event_id, b, i, n::text, t, j::text, at = '2024-11-25T16:00:00Z'::timestamptz \
             OR at = '2026-11-25T15:00:00Z'::timestamptz, d FROM conv ORDER BY event_id",
            &[],
        )
        .await
        .unwrap();
    type Row = (
        String,
        Option<bool>,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<bool>,
        Option<bool>,
    );
    let got: Vec<Row> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
            )
        })
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            (
                "e1".into(),
                Some(true),
                Some(42),
                s("2.5"),
                s("17"),
                s(r#"{"x": [1]}"#),
                Some(true),
                Some(false)
            ),
            (
                "e2".into(),
                Some(false),
                Some(7),
                s("3"),
                s(r#"{"k":"v"}"#),
                s(r#""text""#),
                Some(true),
                Some(false)
            ),
            ("e3".into(), None, None, None, None, None, None, Some(false)),
        ]
    );

    // without `as:`, a value the column refuses fails the whole event at the database
    let e = write("e4", r#"{"raw":"maybe"}"#).await.unwrap_err();
    match e {
        SinkError::Permanent(why) => {
            assert!(
                why.to_string().contains("column `raw`") && why.to_string().contains("boolean"),
                "{why}"
            );
            assert!(
                !why.to_string().contains("maybe"),
                "the value is not quoted: {why}"
            );
        }
        other => panic!("{other:?}"),
    }
}
