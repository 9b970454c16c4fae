//! Slow and cut networks between the engine and its stores, through a TCP proxy the test
//! controls (`common::proxy`) or a Redis node stopped with SIGSTOP: what breaks services in
//! production more often than a crash. Each test checks the delivery promise (every event
//! answered 2xx reaches the sink exactly once) and what a client and an operator see meanwhile.

use crate::common;
use crate::faults::{Engine, check_exactly_once, dir, engine, status_update};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::{PrivateCluster, free_port, fresh_schema};

/// One answer a producer got.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) call: String,
    /// 0: no answer (the client's 10 s timeout).
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    /// When the request was sent, since the test's start.
    pub(crate) sent: Duration,
    pub(crate) took: Duration,
}

impl Answer {
    /// Send Vapi status update number `n` of a new call, and how it was answered.
    pub(crate) async fn of(
        client: &reqwest::Client,
        port: u16,
        n: usize,
        start: Instant,
    ) -> Answer {
        let call = uuid::Uuid::new_v4().to_string();
        let sent = Instant::now();
        let res = client
            .post(format!("http://127.0.0.1:{port}/api/webhooks/vapi"))
            .header("authorization", "Bearer dev-vapi-webhook-secret")
            .header("content-type", "application/json")
            .body(status_update(&call, n))
            .send()
            .await;
        let (status, retry_after) = match &res {
            Ok(r) => (
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            ),
            Err(_) => (0, None),
        };
        Answer {
            call,
            status,
            retry_after,
            sent: sent - start,
            took: sent.elapsed(),
        }
    }
}

/// `producers` clients sending uniquely numbered Vapi events back to back for `length`.
pub(crate) async fn traffic(
    port: u16,
    producers: usize,
    length: Duration,
    start: Instant,
) -> Vec<Answer> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + length;
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..producers {
        let (client, answers) = (client.clone(), answers.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                let answer = Answer::of(&client, port, p * 1_000_000 + n, start).await;
                answers.lock().unwrap().push(answer);
            }
        });
    }
    tasks.join_all().await;
    let mut out = answers.lock().unwrap().clone();
    out.sort_by_key(|a| a.sent);
    out
}

/// `/ready`'s status every 250 ms for `length`: (time since `start`, status).
async fn readiness(port: u16, length: Duration, start: Instant) -> Vec<(Duration, u16)> {
    readiness_named(port, length, start)
        .await
        .into_iter()
        .map(|(at, status, _)| (at, status))
        .collect()
}

/// `/ready` every 250 ms for `length`: (time since `start`, status, body).
pub(crate) async fn readiness_named(
    port: u16,
    length: Duration,
    start: Instant,
) -> Vec<(Duration, u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let until = Instant::now() + length;
    let mut out = Vec::new();
    while Instant::now() < until {
        let at = start.elapsed();
        let (status, body) = match client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        };
        out.push((at, status, body));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

fn ok_calls(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| (200..300).contains(&a.status))
        .map(|a| a.call.clone())
        .collect()
}

/// [`check_exactly_once`] of what the producers were answered: every 2xx'd call once, none twice.
pub(crate) async fn exactly_once(schema: &str, answers: &[Answer], scenario: &str) {
    let all: Vec<String> = answers.iter().map(|a| a.call.clone()).collect();
    check_exactly_once(schema, &ok_calls(answers), &all, scenario).await;
}

/// The shipped pipelines as `faults::dir` makes them, under Redis keys of their own (`net<pid>-
/// <test>`: these tests share one Redis and run at once), with Vapi's rate limit out of reach:
/// the producers here send faster than its burst, and a 429 is not what these tests are about.
pub(crate) fn unlimited(test: &str) -> (common::Dir, String) {
    let d = dir();
    let prefix = format!("net{}-{test}", std::process::id());
    d.edit("engine.yaml", |s| {
        let own = s.replace(
            &format!("redis_key_prefix: 'fault{}'", std::process::id()),
            &format!("redis_key_prefix: '{prefix}'"),
        );
        assert_ne!(own, s, "faults::dir's key prefix moved");
        own
    });
    d.edit("vapi.yaml", |s| {
        let limited = s.replace(
            "  limit: 20000/1m\n  burst: 2000\n",
            "  limit: 10000000/1m\n  burst: 1000000\n",
        );
        assert_ne!(limited, s, "vapi.yaml's rate limit moved");
        limited
    });
    (d, prefix)
}

/// The shared Redis behind a proxy, an engine (ingest + workers) using it, a fresh schema.
async fn behind_a_redis_proxy(test: &str) -> (Proxy, Engine, u16, String) {
    let proxy = Proxy::start(
        common::redis()
            .trim_start_matches("redis://")
            .parse()
            .unwrap(),
    )
    .await;
    let (database, schema) = fresh_schema().await;
    let port = free_port();
    let engine = engine(&unlimited(test).0, port, &proxy.redis_url(), &database);
    (proxy, engine, port, schema)
}

/// Redis blackholed (no RST, no FIN: bytes held) for 8 s under traffic: every request meanwhile
/// is answered 503 with `Retry-After` at the 2 s budget (never left hanging, never a 2xx it
/// could not store), `/ready` says 503 during it and 200 after, service resumes at once when the
/// link comes back, and every event answered 2xx is written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_is_answered_503_at_the_budget_and_service_resumes_at_once() {
    let (proxy, _engine, port, schema) = behind_a_redis_proxy("blackhole").await;
    let start = Instant::now();
    let (cut, back) = (Duration::from_secs(3), Duration::from_secs(11));
    let proxy = Arc::new(proxy);
    let switch = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((start + cut).into()).await;
            proxy.set(Mode::Blackhole);
            tokio::time::sleep_until((start + back).into()).await;
            proxy.set(Mode::Pass);
        })
    };
    let length = Duration::from_secs(16);
    let (answers, ready) = tokio::join!(
        traffic(port, 4, length, start),
        readiness(port, length, start)
    );
    switch.await.unwrap();

    // sent while the link was cut, and answered before it came back
    let during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent > cut + Duration::from_millis(100) && a.sent + a.took < back)
        .collect();
    assert!(during.len() >= 8, "requests during the cut: {during:#?}");
    for a in &during {
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.retry_after.as_deref(), Some("5"), "{a:?}");
        assert!(
            a.took < Duration::from_millis(3500),
            "answered at the 2 s budget, not left hanging: {a:?}"
        );
    }
    assert!(
        answers.iter().all(|a| a.status != 0 && a.status != 500),
        "every request answered, none with a 500"
    );
    let not_ready = ready
        .iter()
        .filter(|(at, s)| *at > cut && *at < back && *s == 503)
        .count();
    assert!(not_ready >= 1, "/ready said 503 during the cut: {ready:?}");
    // back: the first 2xx and /ready 200 follow within seconds
    let first_ok = answers
        .iter()
        .find(|a| a.sent > back && a.status == 200)
        .map(|a| a.sent + a.took - back);
    assert!(
        first_ok.is_some_and(|d| d < Duration::from_secs(3)),
        "served again within 3 s of the link's return: {first_ok:?}"
    );
    let ready_again = ready
        .iter()
        .find(|(at, s)| *at > back && *s == 200)
        .map(|(at, _)| *at - back);
    assert!(
        ready_again.is_some_and(|d| d < Duration::from_secs(4)),
        "/ready 200 within 4 s of the link's return: {ready:?}"
    );
    exactly_once(
        &schema,
        &answers,
        "Redis blackholed for 8 s under 4 producers (TCP proxy holding bytes)",
    )
    .await;
}

/// Every Redis packet 500 ms late, both ways: answers still come within the budget (a 2xx, or
/// a 503 once it is spent), and nothing answered 2xx is lost or written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_link_answers_within_the_budget_and_loses_nothing() {
    let (proxy, _engine, port, schema) = behind_a_redis_proxy("slow").await;
    proxy.set(Mode::Delay(Duration::from_millis(500)));
    let start = Instant::now();
    let answers = traffic(port, 4, Duration::from_secs(8), start).await;
    proxy.set(Mode::Pass);
    assert!(answers.len() >= 8, "{answers:#?}");
    for a in &answers {
        assert!(a.status == 200 || a.status == 503, "{a:?}");
        assert!(a.took < Duration::from_millis(3500), "{a:?}");
    }
    let ok = ok_calls(&answers);
    assert!(
        !ok.is_empty(),
        "a 1 s round trip fits the 2 s budget: {answers:#?}"
    );
    exactly_once(
        &schema,
        &answers,
        "every Redis packet delayed 500 ms, 4 producers for 8 s",
    )
    .await;
}

/// The Redis link reset (RST) every 400 ms for 4 s under 8 producers: requests in flight on the
/// group commit (dedupe + append) and the rate-limit check lose their connection mid-pipeline.
/// Whatever was answered 2xx is written exactly once, and service goes on after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_links_reset_mid_pipeline_lose_nothing_answered() {
    let (proxy, _engine, port, schema) = behind_a_redis_proxy("reset").await;
    let proxy = Arc::new(proxy);
    let start = Instant::now();
    let resets = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for _ in 0..10 {
                proxy.reset();
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    let answers = traffic(port, 8, Duration::from_secs(8), start).await;
    resets.await.unwrap();
    let after: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent > Duration::from_secs(6))
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|a| a.status == 200),
        "served once the resets stop: {after:#?}"
    );
    assert!(
        answers.iter().all(|a| [200, 503].contains(&a.status)),
        "{answers:#?}"
    );
    assert!(proxy.accepted() > 2, "the engine reconnected after resets");
    exactly_once(
        &schema,
        &answers,
        "the Redis link reset (RST) 10 times in 4 s, 8 producers",
    )
    .await;
}

/// Postgres blackholed for 9 s while the workers write, with a 1 s statement timeout: the write
/// in flight gets no answer within 6 s (the timeout + 5 s), its connection is dropped and the
/// batch retried on new ones until the link is back; the statement that reached Postgres late,
/// after the worker gave up on it, meets the conflict key, and no row is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stalled_mid_batch_writes_each_row_once() {
    let proxy = Arc::new(Proxy::start("127.0.0.1:5432".parse().unwrap()).await);
    let (database, schema) = fresh_schema().await;
    let through_proxy = database.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(
        through_proxy, database,
        "the database URL names 127.0.0.1:5432"
    );
    let port = free_port();
    let (d, _) = unlimited("pg-stall");
    d.edit("engine.yaml", |s| {
        format!("{s}statement_timeout_ms: 1000\n")
    });
    let _engine = engine(&d, port, common::redis(), &through_proxy);
    let start = Instant::now();
    let stall = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            proxy.set(Mode::Blackhole);
            tokio::time::sleep(Duration::from_secs(9)).await;
            proxy.set(Mode::Pass);
        })
    };
    let answers = traffic(port, 4, Duration::from_secs(12), start).await;
    stall.await.unwrap();
    assert!(
        answers.iter().all(|a| a.status == 200),
        "ingest does not wait on Postgres: {:?}",
        answers.iter().find(|a| a.status != 200)
    );
    let metrics = common::metrics_of(port).await;
    // the write in flight when the link stalled was given up and its batch retried: the sink's
    // statement, or the archive's record of the batch (whichever was on the wire)
    let given_up = |l: &str| {
        (l.starts_with("engine_sink_errors_total") && l.contains("kind=\"retry\"")
            || l.starts_with("engine_archive_errors_total"))
            && !l.ends_with(" 0")
    };
    assert!(
        metrics.lines().any(given_up),
        "the stalled write was given up and retried: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("engine_") && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    exactly_once(
        &schema,
        &answers,
        "Postgres blackholed for 9 s mid-batch (TCP proxy holding bytes), 4 producers",
    )
    .await;
}

/// The Redis Cluster master holding the Vapi queue stopped (SIGSTOP: a blackholed node, its
/// connections neither answered nor reset) for 6 s: its requests get 503 within the budget,
/// `/ready` says 503 naming the queue, the engine serves again when the node answers, nothing
/// answered 2xx is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_cluster_master_is_answered_503_and_loses_nothing() {
    let (database, schema) = fresh_schema().await;
    let mut cluster = PrivateCluster::start();
    let port = free_port();
    let (d, prefix) = unlimited("cluster");
    let _engine = engine(&d, port, &cluster.url(), &database);
    let stream = format!("{prefix}:{{q:vapi}}:stream");
    let start = Instant::now();
    let (cut, back) = (Duration::from_secs(2), Duration::from_secs(8));
    let (answers, ready) = {
        let traffic = traffic(port, 4, Duration::from_secs(12), start);
        let ready = readiness_named(port, Duration::from_secs(12), start);
        let node = cluster.owner_of(&stream);
        let switch = async {
            tokio::time::sleep_until((start + cut).into()).await;
            node.pause();
            tokio::time::sleep_until((start + back).into()).await;
            node.resume();
        };
        let (answers, ready, ()) = tokio::join!(traffic, ready, switch);
        (answers, ready)
    };
    // `/ready` names the queue whose master does not answer (a PING reaches any node)
    assert!(
        ready.iter().any(|(at, status, body)| *at > cut
            && *at < back
            && *status == 503
            && body.contains("queue:vapi")),
        "{ready:#?}"
    );
    assert!(
        ready
            .iter()
            .any(|(at, status, _)| *at > back + Duration::from_secs(1) && *status == 200),
        "{ready:#?}"
    );
    cluster.wait_ok();
    let during: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.sent > cut + Duration::from_millis(100) && a.sent + a.took < back)
        .collect();
    assert!(!during.is_empty(), "{answers:#?}");
    for a in &during {
        assert_eq!(a.status, 503, "{a:?}");
        assert!(a.took < Duration::from_millis(3500), "{a:?}");
    }
    assert!(
        answers
            .iter()
            .any(|a| a.sent > back + Duration::from_secs(1) && a.status == 200),
        "served once the node answers: {answers:#?}"
    );
    exactly_once(
        &schema,
        &answers,
        "Redis Cluster: the queue's master blackholed (SIGSTOP) for 6 s, 4 producers",
    )
    .await;
}
