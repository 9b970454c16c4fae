//! A Redis that fills up (`maxmemory` under `noeviction`, as the blueprint sets it), with real
//! processes and a private redis-server: ingest answers 503 with `Retry-After` and never a 2xx it
//! could not store; the logs say once that Redis is full and what to do (not a line per refused
//! request, and not "unreachable"); a worker started afterwards drains it even when the queue's
//! stream was made while the worker was not there (its consumer group is made with the stream),
//! every 2xx'd event written once; ingest takes events again.

use crate::common;

use std::time::{Duration, Instant};

use common::process::EngineProcess;
use common::{PrivateRedis, free_port, fresh_schema, pg, sql_count};

/// A 2 KiB Vapi end-of-call report for `call`.
fn report(call: &str) -> String {
    format!(
        r#"{{"message":{{"type":"end-of-call-report","endedReason":"customer-ended-call","call":{{"id":"{call}","orgId":"5b1f8a4e-3c2d-4e6f-8a9b-0c1d2e3f4a5b"}},"durationSeconds":42,"summary":"{}","artifact":{{"transcript":"hi"}}}}}}"#,
        "s".repeat(2000)
    )
}

async fn post(client: &reqwest::Client, port: u16, call: &str) -> reqwest::Response {
    client
        .post(format!("http://127.0.0.1:{port}/api/webhooks/vapi"))
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .header("content-type", "application/json")
        .body(report(call))
        .send()
        .await
        .unwrap()
}

async fn redis_cmd(url: &str, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut c).await.unwrap()
}

async fn used_memory(url: &str) -> u64 {
    let info = match redis_cmd(url, &["INFO", "memory"]).await {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("{other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_is_named_once_and_a_later_worker_drains_it() {
    let redis = PrivateRedis::start(false);
    let url = redis.url();
    redis_cmd(&url, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
    let (database, schema) = fresh_schema().await;
    let d = common::shipped_under_prefix("full");
    let port = free_port();
    let env = |port: u16| {
        vec![
            ("PORT".to_string(), port.to_string()),
            ("REDIS_URL".to_string(), url.clone()),
            ("DATABASE_URL".to_string(), database.clone()),
        ]
    };
    let ingest = EngineProcess::start(&d, &["serve", "--no-worker"], &env(port));
    // nothing of what the boot made is left (its consumer groups included): the queue's stream
    // is made by the first event, with no worker anywhere
    redis_cmd(&url, &["FLUSHALL"]).await;
    let room = used_memory(&url).await + 3 * 1024 * 1024;
    redis_cmd(&url, &["CONFIG", "SET", "maxmemory", &room.to_string()]).await;

    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..20_000 {
        let call = uuid::Uuid::new_v4().to_string();
        let res = post(&client, port, &call).await;
        match res.status().as_u16() {
            200 => accepted.push(call),
            503 => {
                assert_eq!(
                    res.headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap()),
                    Some("5")
                );
                refused += 1;
                if refused == 200 {
                    break;
                }
            }
            other => panic!("answered {other}"),
        }
    }
    assert_eq!(refused, 200, "Redis filled up");
    assert!(accepted.len() > 100, "events stored before it did");
    let log = ingest.log();
    let full: Vec<&String> = log.iter().filter(|l| l.contains("is full")).collect();
    assert_eq!(full.len(), 1, "one line says Redis is full: {full:#?}");
    assert!(full[0].contains("redis_enqueue") && full[0].contains("maxmemory"));
    assert!(full[0].contains("Add workers"), "says what to do");
    assert!(
        !log.iter()
            .any(|l| l.contains("cannot queue the event") || l.contains("unreachable")),
        "no line per refused request, and not called unreachable"
    );

    // a worker started now (no consumer group was made by a worker) drains the backlog
    let _worker = EngineProcess::start(&d, &["worker"], &env(free_port()));
    let db = pg(&schema).await;
    let want = accepted.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql_count(&db, "SELECT count(*) FROM call_logs").await < want {
        assert!(
            Instant::now() < deadline,
            "the worker never drained the full Redis"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids = accepted
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        sql_count(
            &db,
            &format!("SELECT count(DISTINCT call_id) FROM call_logs WHERE call_id IN ({ids})")
        )
        .await,
        want,
        "every 2xx'd event written"
    );
    assert_eq!(
        sql_count(&db, "SELECT count(*) FROM call_logs").await,
        want,
        "none twice"
    );

    // room again: ingest takes events, and says so once
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let call = uuid::Uuid::new_v4().to_string();
        let status = post(&client, port, &call).await.status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest never took events again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ingest
        .log()
        .iter()
        .any(|l| l.contains("takes writes again"))
    {
        assert!(Instant::now() < deadline, "no line saying it is back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
