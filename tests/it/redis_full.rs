//! A Redis that fills up (`maxmemory` under `noeviction`, as the blueprint sets it), with real
//! processes and a private redis-server: ingest answers 503 with `Retry-After` and never a 2xx it
//! could not store; the logs say once that Redis is full and what to do (not a line per refused
//! request, and not "unreachable"); a worker started afterwards drains it even when the queue's
//! stream was made while the worker was not there (its consumer group is made with the stream),
//! every 2xx'd event written once; ingest takes events again. And the other order: a worker that
//! was there first but could not write (its database link held), ingest filling Redis, the link
//! back: the worker drains, ingest recovers by itself, nothing lost.

use crate::common;

use std::time::{Duration, Instant};

use common::process::EngineProcess;
use common::proxy::{Mode, Proxy};
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

/// Send reports until Redis has refused 200 (each 503 with `Retry-After: 5`): the calls
/// answered 2xx.
async fn fill(client: &reqwest::Client, port: u16) -> Vec<String> {
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..20_000 {
        let call = uuid::Uuid::new_v4().to_string();
        let res = post(client, port, &call).await;
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
    accepted
}

/// Until every call of `accepted` has its row in `call_logs` (60 s at most), then: each once;
/// the scenario's row for docs/reliability.md printed (`sent`: the accepted and the 200 refused).
async fn drained(schema: &str, accepted: &[String], scenario: &str) {
    let db = pg(schema).await;
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
    let rows = sql_count(&db, "SELECT count(*) FROM call_logs").await;
    println!(
        "| {scenario} | {} | {want} | {rows} | 0 | {} |",
        want + 200,
        rows - want
    );
    assert_eq!(rows, want, "none twice");
}

/// Until ingest answers 2xx again and its log says it takes writes again (30 s at most): the
/// line comes with the first 2xx once writes have not failed for 5 s (`ops::outage`), so
/// events keep coming meanwhile, as they would from providers.
async fn takes_events_again(client: &reqwest::Client, port: u16, ingest: &EngineProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served = false;
    while !(served
        && ingest
            .log()
            .iter()
            .any(|l| l.contains("takes writes again")))
    {
        assert!(
            Instant::now() < deadline,
            "ingest never took events again (served: {served}), or never said so"
        );
        let call = uuid::Uuid::new_v4().to_string();
        served |= post(client, port, &call).await.status() == 200;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lines = ingest.log();
    let said = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        (said("is full"), said("takes writes again")),
        (1, 1),
        "said once each, no flapping at the edge of maxmemory"
    );
}

/// `maxmemory` set 3 MiB above what Redis at `url` holds now.
async fn room_for_3_mib(url: &str) {
    let room = used_memory(url).await + 3 * 1024 * 1024;
    redis_cmd(url, &["CONFIG", "SET", "maxmemory", &room.to_string()]).await;
}

/// A private Redis under `noeviction`, as the blueprint sets it.
async fn noeviction_redis() -> (PrivateRedis, String) {
    let redis = PrivateRedis::start(false);
    let url = redis.url();
    redis_cmd(&url, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).await;
    (redis, url)
}

fn env(port: u16, redis: &str, database: &str) -> Vec<(String, String)> {
    vec![
        ("PORT".to_string(), port.to_string()),
        ("REDIS_URL".to_string(), redis.to_string()),
        ("DATABASE_URL".to_string(), database.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_is_named_once_and_a_later_worker_drains_it() {
    let (_redis, url) = noeviction_redis().await;
    let (database, schema) = fresh_schema().await;
    let d = common::shipped_under_prefix("full");
    let port = free_port();
    let slack = common::Stub::start().await;
    let env = |port: u16| {
        let mut env = env(port, &url, &database);
        env.push((
            "SLACK_WEBHOOK_URL".to_string(),
            format!("http://127.0.0.1:{}/services/T0/B0/full", slack.port),
        ));
        env
    };
    let ingest = EngineProcess::start(&d, &["serve", "--no-worker"], &env(port));
    // nothing of what the boot made is left (its consumer groups included): the queue's stream
    // is made by the first event, with no worker anywhere
    redis_cmd(&url, &["FLUSHALL"]).await;
    room_for_3_mib(&url).await;

    let client = reqwest::Client::new();
    let accepted = fill(&client, port).await;
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
    let metrics = common::metrics_of(port).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "engine_dependency_up{dependency=\"redis_enqueue\"} 0"),
        "the gauge says it: {}",
        metrics
            .lines()
            .filter(|l| l.contains("dependency"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // a full Redis refuses XGROUP CREATE even for a group that exists: a worker starting now
    // finds the group the stream was made with, and reads
    let q = engine::queue::redis::RedisQueue::new(
        &url,
        &format!("full{}", std::process::id()),
        "vapi",
        "probe",
    )
    .unwrap();
    q.ensure_group()
        .await
        .expect("the stream's group is found on a full Redis");

    // a worker started now (no consumer group was made by a worker) drains the backlog
    let _worker = EngineProcess::start(&d, &["worker"], &env(free_port()));
    drained(
        &schema,
        &accepted,
        "Redis full (ingest only, groups flushed), then an `engine worker` started",
    )
    .await;
    // room again: ingest takes events, and says so once
    takes_events_again(&client, port, &ingest).await;

    // and Slack heard of it, start and end, in the alerter's next message (one a minute)
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let said: String = slack.got().iter().map(|r| r.body.clone()).collect();
        if said.contains("is full") && said.contains("takes writes again") {
            assert!(said.contains("redis_enqueue is full"), "{said}");
            break;
        }
        assert!(Instant::now() < deadline, "Slack was not told: {said}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The other order: the worker is up first, but its database link is held (a sink outage), so
/// the backlog grows until Redis is full and ingest refuses; when the link is back the worker
/// drains and ingest recovers by itself, every 2xx'd event written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_there_first_drains_a_full_redis_once_it_can_write_and_ingest_recovers() {
    let (_redis, url) = noeviction_redis().await;
    let (database, schema) = fresh_schema().await;
    let link = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let through_link = database.replace("127.0.0.1:5432", &link.addr.to_string());
    let d = common::shipped_under_prefix("full-first");
    let worker = EngineProcess::start(&d, &["worker"], &env(free_port(), &url, &through_link));
    let port = free_port();
    let ingest = EngineProcess::start(&d, &["serve", "--no-worker"], &env(port, &url, &database));
    link.set(Mode::Blackhole);
    room_for_3_mib(&url).await;

    let client = reqwest::Client::new();
    let accepted = fill(&client, port).await;
    link.set(Mode::Pass);
    drained(
        &schema,
        &accepted,
        "Redis full with the worker up first (its database link held), then the link back",
    )
    .await;
    takes_events_again(&client, port, &ingest).await;
    assert!(
        !worker.log().iter().any(|l| l.contains("is full")),
        "the worker's reads, acks and deletes go on while Redis is full: {:#?}",
        worker.log()
    );
}
