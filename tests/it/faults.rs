//! The delivery promise under faults, with real processes: every event answered 2xx reaches the
//! sink exactly once; events not answered 2xx may be absent (the provider retries them), never
//! duplicated.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Dir, PrivateCluster, PrivatePostgres, PrivateRedis, free_port, fresh_schema, pg};

pub(crate) const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// [`dir`] with the Vapi queue split into `n` partitions (`queue.partitions`).
fn partitioned(n: u32) -> Dir {
    let d = dir();
    let vapi = std::fs::read_to_string(d.path().join("vapi.yaml")).unwrap();
    d.write(
        "vapi.yaml",
        &vapi.replace(
            "  lease: 2s\n",
            &format!("  lease: 2s\n  partitions: {n}\n"),
        ),
    );
    d
}

/// The shipped pipelines with a short lease (so a killed process's entries are taken over
/// quickly) and Redis keys under a private prefix.
pub(crate) fn dir() -> Dir {
    let dir = Dir::shipped_copy();
    let vapi = std::fs::read_to_string(dir.path().join("vapi.yaml")).unwrap();
    dir.write(
        "vapi.yaml",
        &vapi.replace(
            "    window: 24h\n",
            // enough attempts to outlast a 30 s database outage at this backoff
            "    window: 24h\n  lease: 2s\n  backoff: {initial: 200ms, max: 1s}\n  max_attempts: 100\n",
        ),
    );
    let base = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    dir.write(
        "engine.yaml",
        &format!(
            "{}redis_key_prefix: 'fault{}'\n",
            base.replace("  limit: 100/1m\n", "  limit: 100000/1s\n")
                .replace("shutdown_grace_secs: 25", "shutdown_grace_secs: 10"),
            std::process::id()
        ),
    );
    dir
}

/// An engine process, killed (and reaped) when dropped.
pub(crate) struct Engine(Child);

impl Engine {
    /// SIGTERM (what Render sends on a deploy), then wait for the process to exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, no graceful shutdown.
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn engine(dir: &Dir, port: u16, redis: &str, database: &str) -> Engine {
    engine_with(dir, port, redis, database, &[])
}

/// [`engine`] with more environment variables.
pub(crate) fn engine_with(
    dir: &Dir,
    port: u16,
    redis: &str,
    database: &str,
    env: &[(&str, &str)],
) -> Engine {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env_clear()
        .envs(env.iter().copied())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env("REDIS_URL", redis)
        .env("DATABASE_URL", database)
        .env("ENCRYPTION_KEY", K)
        .env("RUST_LOG", "warn,engine::server=info")
        .args(["serve", "--pipelines"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("Server listening on port") {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("engine started");
    Engine(child)
}

pub(crate) fn status_update(call: &str, n: usize) -> String {
    format!(
        r#"{{"message":{{"type":"status-update","status":"ringing","timestamp":{},"call":{{"id":"{call}"}}}}}}"#,
        1_700_000_000_000u64 + n as u64
    )
}

/// Send `n` uniquely numbered events, running `fault` after `at` of them; returns the call ids
/// that got a 2xx, and all ids sent.
async fn stream_with_fault(
    port: u16,
    n: usize,
    at: usize,
    mut fault: impl FnMut(),
) -> (Vec<String>, Vec<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut ok = Vec::new();
    let mut all = Vec::new();
    for i in 0..n {
        if i == at {
            fault();
        }
        let call = uuid::Uuid::new_v4().to_string();
        let res = client
            .post(format!("http://127.0.0.1:{port}/api/webhooks/vapi"))
            .header("authorization", "Bearer dev-vapi-webhook-secret")
            .header("content-type", "application/json")
            .body(status_update(&call, i))
            .send()
            .await;
        if matches!(&res, Ok(r) if r.status().is_success()) {
            ok.push(call.clone());
        }
        all.push(call);
    }
    (ok, all)
}

/// Wait until every 2xx'd event has a row (or 60 s), then check: each exactly once, none twice.
pub(crate) async fn check_exactly_once(
    schema: &str,
    ok: &[String],
    all: &[String],
    scenario: &str,
) {
    check_exactly_once_on(&pg(schema).await, ok, all, scenario).await;
}

async fn check_exactly_once_on(
    db: &tokio_postgres::Client,
    ok: &[String],
    all: &[String],
    scenario: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rows: HashMap<String, i64> = HashMap::new();
    while Instant::now() < deadline {
        rows = db
            .query(
                "SELECT call_id::text, count(*) FROM call_status GROUP BY call_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if ok.iter().all(|c| rows.contains_key(c)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost: Vec<&String> = ok.iter().filter(|c| !rows.contains_key(*c)).collect();
    let duplicated: Vec<(&String, &i64)> = rows.iter().filter(|(_, n)| **n > 1).collect();
    let unknown = rows.keys().filter(|c| !all.contains(c)).count();
    println!(
        "| {scenario} | {} | {} | {} | {} | {} |",
        all.len(),
        ok.len(),
        rows.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(
        lost.is_empty(),
        "{scenario}: {} events answered 2xx never reached the sink: {lost:?}",
        lost.len()
    );
    assert!(
        duplicated.is_empty(),
        "{scenario}: rows written twice: {duplicated:?}"
    );
    assert_eq!(unknown, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart() {
    let (database, schema) = fresh_schema().await;
    let redis = PrivateRedis::start(true);
    let d = dir();
    let port = free_port();
    let mut first = engine(&d, port, &redis.url(), &database);
    // kill -9: no graceful shutdown; entries in the worker's hands stay pending
    let (ok, all) = stream_with_fault(port, 2000, 1000, || first.kill()).await;
    assert!(
        ok.len() >= 900 && ok.len() < 2000,
        "the engine was down for part of the stream: {} 2xx",
        ok.len()
    );
    // started again: it takes over the dead process's pending entries after the lease
    let _second = engine(&d, port, &redis.url(), &database);
    let (ok2, all2) = stream_with_fault(port, 100, usize::MAX, || {}).await;
    let ok: Vec<String> = ok.into_iter().chain(ok2).collect();
    let all: Vec<String> = all.into_iter().chain(all2).collect();
    check_exactly_once(
        &schema,
        &ok,
        &all,
        "kill -9 of the engine mid-stream, then restart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_aof_killed_and_restarted_mid_stream() {
    let (database, schema) = fresh_schema().await;
    let mut redis = PrivateRedis::start(true);
    let d = dir();
    let port = free_port();
    let _engine = engine(&d, port, &redis.url(), &database);
    let (ok, all) = stream_with_fault(port, 400, 200, || redis.restart()).await;
    assert!(
        ok.len() >= 300,
        "served across the restart: {} of 400",
        ok.len()
    );
    check_exactly_once(
        &schema,
        &ok,
        &all,
        "Redis (AOF on) killed and restarted mid-stream",
    )
    .await;
}

/// REDIS_URL naming a Redis Cluster (three masters): two engine instances take a stream through
/// the cluster's queue into Postgres, each event exactly once; `/ready` and the admin commands
/// answer against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_carries_the_queue_exactly_once() {
    let (database, schema) = fresh_schema().await;
    let cluster = PrivateCluster::start();
    let d = dir();
    let (p1, p2) = (free_port(), free_port());
    let _a = engine(&d, p1, &cluster.url(), &database);
    let _b = engine(&d, p2, &cluster.url(), &database);
    let (mut ok, mut all) = stream_with_fault(p1, 150, usize::MAX, || {}).await;
    let (ok2, all2) = stream_with_fault(p2, 150, usize::MAX, || {}).await;
    ok.extend(ok2);
    all.extend(all2);
    assert_eq!(ok.len(), 300, "every request answered 2xx");
    check_exactly_once(&schema, &ok, &all, "Redis Cluster (3 masters), two engines").await;

    let ready = reqwest::get(format!("http://127.0.0.1:{p1}/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["redis"], "ok", "{body}");
    // the admin commands against the cluster
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", cluster.url())
            .args(args)
            .arg("--pipelines")
            .arg(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "engine {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let stats = cli(&["queue", "stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(v["vapi"]["depth"], 0, "{v}");
    let dlq = cli(&["dlq", "list", "--pipeline", "vapi", "--json"]);
    assert_eq!(String::from_utf8_lossy(&dlq.stdout).trim(), "[]");
}

/// The master holding the Vapi queue's slot killed (kill -9) and restarted (AOF on) mid-stream:
/// requests meanwhile get 503 (the provider retries), none answered 2xx is lost or written twice,
/// and the engine serves again once the node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_and_restarted_mid_stream() {
    let d = dir();
    let stream = format!("fault{}:{{q:vapi}}:stream", std::process::id());
    kill_the_master_of(
        &d,
        &stream,
        "Redis Cluster: the queue's master killed and restarted (AOF on) mid-stream",
    )
    .await;
}

/// One busy pipeline split over the cluster (`queue.partitions: 3`): the master holding
/// partition 0 killed and restarted mid-stream; events of the other partitions keep being
/// answered, none answered 2xx is lost or written twice, nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_over_a_cluster_loses_nothing_when_a_master_dies() {
    let d = partitioned(3);
    let prefix = format!("fault{}", std::process::id());
    let keys = engine::queue::redis::RedisQueue::partitioned("redis://x", &prefix, "vapi", "t", 3)
        .unwrap();
    let cluster = kill_the_master_of(
        &d,
        keys.stream_keys()[0],
        "Redis Cluster, queue in 3 partitions: partition 0's master killed and restarted mid-stream",
    )
    .await;
    let q = engine::queue::redis::RedisQueue::partitioned(&cluster.url(), &prefix, "vapi", "t", 3)
        .unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.depth, stats.dead), (0, 0), "{stats:?}");
}

/// On a private cluster, stream 400 events through `d`'s pipelines, kill -9 and restart (AOF
/// on) the master holding `key` at event 200, then 100 more: every 2xx'd event exactly once.
async fn kill_the_master_of(d: &Dir, key: &str, scenario: &str) -> PrivateCluster {
    let (database, schema) = fresh_schema().await;
    let mut cluster = PrivateCluster::start();
    let port = free_port();
    let _engine = engine(d, port, &cluster.url(), &database);
    let (ok, all) = stream_with_fault(port, 400, 200, || {
        cluster.owner_of(key).restart();
    })
    .await;
    cluster.wait_ok();
    let (ok2, all2) = stream_with_fault(port, 100, usize::MAX, || {}).await;
    assert!(
        ok.len() >= 250,
        "served across the restart: {} of 400",
        ok.len()
    );
    assert!(
        ok2.len() >= 95,
        "serving after the node is back: {} of 100",
        ok2.len()
    );
    let ok: Vec<String> = ok.into_iter().chain(ok2).collect();
    let all: Vec<String> = all.into_iter().chain(all2).collect();
    check_exactly_once(&schema, &ok, &all, scenario).await;
    cluster
}

/// Two instances on a partitioned queue, one killed (`kill -9`) mid-stream: the survivor's
/// workers read every partition and its reaper takes over the dead one's entries in each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_queue_two_instances_one_killed_the_other_takes_over() {
    two_instances_one_killed(
        &partitioned(3),
        200,
        "queue in 3 partitions, two instances, one killed (kill -9) mid-stream",
    )
    .await;
}

/// Two engine instances on one private Redis, streams of `per_stream` events to both, instance A
/// killed (`kill -9`) mid-stream: B's reaper takes its events over after the lease; every 2xx'd
/// event exactly once.
async fn two_instances_one_killed(d: &Dir, per_stream: usize, scenario: &str) {
    let (database, schema) = fresh_schema().await;
    let redis = PrivateRedis::start(true);
    let (p1, p2) = (free_port(), free_port());
    let mut a = engine(d, p1, &redis.url(), &database);
    let _b = engine(d, p2, &redis.url(), &database);
    let load = tokio::spawn(concurrent_streams(vec![p1, p2], 6, per_stream));
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.kill();
    let (ok, all) = load.await.unwrap();
    assert!(ok.len() < all.len(), "A was gone for part of the stream");
    check_exactly_once(&schema, &ok, &all, scenario).await;
}

/// `rediss://`: the queue over TLS to a private `redis-server --tls-port`, its certificate issued
/// by a test CA the engine trusts through `SSL_CERT_FILE` (as a managed Redis's public CA is
/// trusted through the system's roots): every event exactly once. Without the CA the server is
/// not believed: nothing is answered 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_carries_the_queue_and_an_unknown_certificate_is_refused() {
    let (database, schema) = fresh_schema().await;
    let tls = common::PrivateTlsRedis::start();
    let d = dir();
    let port = free_port();
    let ca = tls.ca_file();
    let trusting = engine_with(&d, port, &tls.url(), &database, &[("SSL_CERT_FILE", &ca)]);
    let (ok, all) = stream_with_fault(port, 100, usize::MAX, || {}).await;
    assert_eq!(ok.len(), 100, "every request answered 2xx over TLS");
    check_exactly_once(&schema, &ok, &all, "Redis over TLS (rediss://)").await;
    drop(trusting);

    let other = free_port();
    let _doubting = engine_with(
        &d,
        other,
        &tls.url(),
        &database,
        &[("SSL_CERT_FILE", "/dev/null")],
    );
    let (ok, _) = stream_with_fault(other, 5, usize::MAX, || {}).await;
    assert!(
        ok.is_empty(),
        "a server certificate from an unknown CA is not believed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_the_engine_recovers_and_keeps_serving() {
    let (database, schema) = fresh_schema().await;
    let mut redis = PrivateRedis::start(false);
    let d = dir();
    let port = free_port();
    let _engine = engine(&d, port, &redis.url(), &database);
    let (before, _) = stream_with_fault(port, 100, usize::MAX, || {}).await;
    check_exactly_once(&schema, &before, &before, "before Redis restarts empty").await;
    // no persistence: the stream and the consumer group vanish; the worker sees NOGROUP,
    // recreates the group and raises the alarm; events after the restart flow again
    redis.restart();
    let (after, all) = stream_with_fault(port, 200, usize::MAX, || {}).await;
    assert!(
        after.len() >= 150,
        "serving again after the restart: {} of 200",
        after.len()
    );
    let ok: Vec<String> = before.iter().cloned().chain(after).collect();
    let all: Vec<String> = before.into_iter().chain(all).collect();
    check_exactly_once(&schema, &ok, &all, "Redis restarted empty (no persistence)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_two_engines_exact_set_none_twice() {
    let (database, schema) = fresh_schema().await;
    let redis = PrivateRedis::start(true);
    let d = dir();
    let (p1, p2) = (free_port(), free_port());
    let _a = engine(&d, p1, &redis.url(), &database);
    let _b = engine(&d, p2, &redis.url(), &database);
    let mut producers = tokio::task::JoinSet::new();
    for i in 0..8 {
        let port = if i % 2 == 0 { p1 } else { p2 };
        producers.spawn(stream_with_fault(port, 100, usize::MAX, || {}));
    }
    let (mut ok, mut all) = (Vec::new(), Vec::new());
    while let Some(r) = producers.join_next().await {
        let (o, a) = r.unwrap();
        ok.extend(o);
        all.extend(a);
    }
    assert_eq!(ok.len(), 800);
    check_exactly_once(
        &schema,
        &ok,
        &all,
        "8 producers, two engine instances sharing Redis and Postgres",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_stream_then_started() {
    let postgres = PrivatePostgres::start();
    engine::migrate::run(
        &postgres.url(),
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    )
    .await
    .unwrap();
    let redis = PrivateRedis::start(true);
    let d = dir();
    let port = free_port();
    let _engine = engine(&d, port, &redis.url(), &postgres.url());
    // the sink is down for a while: events are still answered 2xx (they are in Redis) and the
    // worker retries them with backoff until Postgres is back
    let mut down_at = None;
    let (ok, all) = stream_with_fault(port, 300, 100, || {
        postgres.down();
        down_at = Some(Instant::now());
    })
    .await;
    assert_eq!(ok.len(), 300, "ingest does not depend on the sink");
    // 30 s without a database, as a managed Postgres failover or restart can take
    let outage = Duration::from_secs(30);
    let since = down_at.unwrap().elapsed();
    tokio::time::sleep(outage.saturating_sub(since)).await;
    postgres.up();
    let db = {
        let (client, conn) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    check_exactly_once_on(
        &db,
        &ok,
        &all,
        "Postgres (a private instance) stopped mid-stream for 30 s, then started",
    )
    .await;
}

/// `producers` concurrent streams of `n` events each to `port`.
async fn concurrent_streams(
    ports: Vec<u16>,
    producers: usize,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..producers {
        set.spawn(stream_with_fault(
            ports[i % ports.len()],
            n,
            usize::MAX,
            || {},
        ));
    }
    let (mut ok, mut all) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        let (o, a) = r.unwrap();
        ok.extend(o);
        all.extend(a);
    }
    (ok, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_answered() {
    let (database, schema) = fresh_schema().await;
    let redis = PrivateRedis::start(true);
    let d = dir();
    let port = free_port();
    let mut first = engine(&d, port, &redis.url(), &database);
    // a deploy: SIGTERM while 4 producers are sending; requests in flight finish, later ones
    // are refused (the provider retries them against the new instance)
    let load = tokio::spawn(concurrent_streams(vec![port], 4, 300));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = first.terminate();
        (s, first)
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "a clean exit after SIGTERM: {:?}",
        status.0
    );
    let (ok, all) = load.await.unwrap();
    assert!(
        !ok.is_empty() && ok.len() < all.len(),
        "the shutdown happened mid-stream: {} of {}",
        ok.len(),
        all.len()
    );
    // the next instance (the deploy's new one) finishes whatever was queued
    let _second = engine(&d, port, &redis.url(), &database);
    check_exactly_once(
        &schema,
        &ok,
        &all,
        "SIGTERM during load (4 producers), then a new instance",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_killed_the_other_takes_over() {
    two_instances_one_killed(
        &dir(),
        250,
        "two instances sharing Redis and Postgres, one killed (kill -9) mid-stream",
    )
    .await;
}

/// Redis down for a few seconds under `engine worker`: one ERROR when the outage starts, none per
/// retry (the workers used to log ~12 WARN lines a second, 43k an hour), one line when it ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let dir = dir();
    let mut redis = PrivateRedis::start(false);
    let (database, _) = fresh_schema().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("REDIS_URL", redis.url())
        .env("DATABASE_URL", &database)
        .env("ENCRYPTION_KEY", K)
        .env("RUST_LOG", "info")
        .args(["worker", "--pipelines"])
        .arg(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut worker = Engine(child);
    let count = || lines.lock().unwrap().len();
    let wait_for = |needle: &str, within: Duration| {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if lines.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // counted before the kill: the worker may log the outage before this thread looks again
    let before = count();
    redis.kill();
    assert!(
        wait_for("redis unreachable", Duration::from_secs(10)),
        "{:#?}",
        lines.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during: Vec<String> = lines.lock().unwrap()[before..].to_vec();
    assert_eq!(
        during
            .iter()
            .filter(|l| l.contains("redis unreachable"))
            .count(),
        1,
        "{during:#?}"
    );
    assert!(
        during.len() <= 3,
        "a handful of lines for a 4 s outage, not one per retry: {during:#?}"
    );

    redis.restart();
    assert!(
        wait_for("redis reachable again", Duration::from_secs(15)),
        "{:#?}",
        lines.lock().unwrap()
    );
    let end = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("redis reachable again"))
        .cloned()
        .unwrap();
    assert!(end.contains("failed_attempts"), "{end}");
    worker.kill();
}
