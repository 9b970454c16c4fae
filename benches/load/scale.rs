//! `cargo bench --bench load -- --scale`: the capacity model's inputs, measured, and its
//! predictions for this machine checked against runs (docs/scaling.md).
//!
//! ```text
//! 1. one engine instance at saturation: CPU per request of the engine, Redis, the generator
//! 2. the model's prediction for 2 instances and for a queue in 3 partitions on this machine
//! 3. two `engine serve --no-worker` instances, the generator's connections split between them
//! 4. one instance, the Vapi queue in 3 partitions (one Redis node)
//! 5. rows per second per Postgres connection: `engine worker` draining the filled queue with
//!    `database_pool_size: 1`, then 4
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Bodies, CLIENTS, Cost, Server, Setup, copy, count, engine, process_cpu_secs};

/// Run the scale measurements.
pub async fn run(setup: &Setup, quick: bool) {
    let secs = if quick { 1.0 } else { 5.0 };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    println!("scale: {cores} cores shared by the generator, the engines, Redis and Postgres");

    // 1. one instance
    let one = Server::spawn(engine(&["serve", "--no-worker"], setup, setup.dir.path()));
    let (run1, cost) = measure(&[&one], 11, secs).await;
    one.stop();
    let per_request = cost.server_us + cost.redis_us + cost.generator_us;
    println!(
        "1 instance: {:.0} req/s; CPU per request: engine {:.0} µs, Redis {:.0} µs, generator {:.0} µs",
        run1, cost.server_us, cost.redis_us, cost.generator_us
    );

    // 2. the model: the machine's cores are the bound (everything shares them); Redis, one
    // thread, is bounded by one core
    let cpu_bound = cores * 1e6 / per_request;
    let redis_bound = 1e6 / cost.redis_us.max(0.1);
    let predicted = cpu_bound.min(redis_bound);
    println!(
        "model: min(cores × 1 s / {per_request:.0} µs = {cpu_bound:.0}, one Redis core: 1 s / {:.0} µs = {redis_bound:.0}) = {predicted:.0} req/s for 1 or 2 instances or 3 partitions on this machine",
        cost.redis_us
    );

    // 3. two instances
    let a = Server::spawn(engine(&["serve", "--no-worker"], setup, setup.dir.path()));
    let b = Server::spawn(engine(&["serve", "--no-worker"], setup, setup.dir.path()));
    let (run2, cost2) = measure(&[&a, &b], 12, secs).await;
    a.stop();
    b.stop();
    println!(
        "2 instances: {run2:.0} req/s (model {predicted:.0}: {:+.0} %); engine CPU per request {:.0} µs (both), Redis {:.0} µs",
        100.0 * (run2 - predicted) / predicted,
        cost2.server_us,
        cost2.redis_us
    );

    // 4. three partitions
    let parts = tempfile::tempdir().unwrap();
    copy(setup.dir.path(), parts.path());
    partition(&parts.path().join("vapi.yaml"), 3);
    let p = Server::spawn(engine(&["serve", "--no-worker"], setup, parts.path()));
    let (run3, cost3) = measure(&[&p], 13, secs).await;
    p.stop();
    println!(
        "1 instance, queue in 3 partitions (one Redis node): {run3:.0} req/s (model {predicted:.0}: {:+.0} %); Redis {:.0} µs per request",
        100.0 * (run3 - predicted) / predicted,
        cost3.redis_us
    );

    // 5. rows per second per Postgres connection: what the runs above queued is drained first
    // (not measured), then each pool size drains a fresh fill
    let _ = drain(setup, parts.path()).await;
    for pool in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        copy(setup.dir.path(), dir.path());
        partition(&dir.path().join("vapi.yaml"), 3);
        let settings = dir.path().join("engine.yaml");
        let text = std::fs::read_to_string(&settings).unwrap();
        std::fs::write(&settings, format!("{text}\ndatabase_pool_size: {pool}\n")).unwrap();
        let fill = Server::spawn(engine(&["serve", "--no-worker"], setup, dir.path()));
        let (filled, _) = measure(&[&fill], 20 + pool as u64, secs.min(3.0)).await;
        fill.stop();
        let rate = drain(setup, dir.path()).await;
        println!("(filled at {filled:.0} req/s)");
        println!(
            "drain with database_pool_size {pool}: {rate:.0} rows/s ({:.0} per connection)",
            rate / pool as f64
        );
    }
}

/// Saturate the servers' Vapi route (the connections split between them) after a second of
/// warm-up; requests/s and CPU per request (the servers' summed).
async fn measure(servers: &[&Server], seed: u64, secs: f64) -> (f64, Cost) {
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("http://127.0.0.1:{}/api/webhooks/vapi", s.port))
        .collect();
    let bodies = Arc::new(Bodies::new(std::process::id() as u64 * 100 + seed));
    let _ = saturate_all(&urls, bodies.clone(), 1.0).await;
    let cpu = |s: &[&Server]| s.iter().map(|s| s.cpu_secs()).sum::<f64>();
    let (server0, redis0, gen0) = (
        cpu(servers),
        super::redis_cpu_secs().await,
        process_cpu_secs(std::process::id()),
    );
    let (n, took) = saturate_all(&urls, bodies, secs).await;
    let per = |d: f64| d * 1e6 / (n as f64).max(1.0);
    let cost = Cost {
        server_us: per(cpu(servers) - server0),
        redis_us: per(super::redis_cpu_secs().await - redis0),
        generator_us: per(process_cpu_secs(std::process::id()) - gen0),
    };
    (n as f64 / took, cost)
}

/// Closed loop over several servers: the generator's connections split evenly; (answered 2xx,
/// seconds).
async fn saturate_all(urls: &[String], bodies: Arc<Bodies>, secs: f64) -> (u64, f64) {
    let client = super::client();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (client, url, bodies) = (client.clone(), urls[i % urls.len()].clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            while Instant::now() < until {
                if super::send(&client, &url, Some(&bodies)).await {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap_or(0);
    }
    (n, started.elapsed().as_secs_f64())
}

/// Split a pipeline's queue into `n` partitions.
fn partition(vapi: &Path, n: u32) {
    let text = std::fs::read_to_string(vapi).unwrap();
    let text = text.replacen("queue:\n", &format!("queue:\n  partitions: {n}\n"), 1);
    std::fs::write(vapi, text).unwrap();
}

/// `engine worker` on what the ingest runs queued, until the queue is empty: rows/s.
async fn drain(setup: &Setup, dir: &Path) -> f64 {
    let before = count(&setup.pg, &setup.schema).await;
    let started = Instant::now();
    let worker = Server::spawn_worker(engine(&["worker"], setup, dir));
    // the partitions' streams as the engine names them; only their lengths are read (one XLEN
    // each), so the polling costs Redis next to nothing while the drain is measured
    let queue = engine::queue::redis::RedisQueue::partitioned(
        "redis://127.0.0.1:6379",
        &setup.prefix,
        "vapi",
        "bench-drain",
        3,
    )
    .unwrap();
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut depth = 0i64;
        for s in queue.stream_keys() {
            depth += redis::cmd("XLEN")
                .arg(s)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap_or(0);
        }
        if depth == 0 || started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    worker.stop();
    (count(&setup.pg, &setup.schema).await - before) as f64 / secs
}
