//! Ingest and drain through the real engine (`cargo bench --bench ingest`; needs Redis on
//! 127.0.0.1:6379 and Postgres on 127.0.0.1:5432, like the tests).
//!
//! 1. ingest: signed Vapi status updates from 32 concurrent clients to a server without workers
//!    (verify + rate limit + dedupe + durable enqueue + 2xx): requests/s and latency percentiles;
//! 2. drain: workers started on the filled queue: events/s through the Rhai transform into
//!    Postgres (a batch's rows in one statement), with the event archive on, or off with
//!    `BENCH_ARCHIVE=off`; and the machine's CPU per drained event over that window (everything
//!    on the machine: engine, Redis, Postgres), which shows what the archive adds to all three.
//!
//! Load generator, Redis and Postgres share the machine with the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::env::EnvSource;

mod support;

const EVENTS: usize = 20_000;
const CLIENTS: usize = 32;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    let Some(bench) = support::setup("bench").await else {
        eprintln!("no Postgres at 127.0.0.1:5432: skipping");
        return;
    };
    let (pg, database, dir) = (&bench.pg, &bench.database, &bench.dir);
    let env = [
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("DATABASE_URL", database.as_str()),
        (
            "ENCRYPTION_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ),
    ];
    let load =
        || engine::plan::load(dir.path(), &EnvSource::from_pairs(env.iter().copied())).unwrap();

    // 1. ingest, no workers
    let (project, plan) = load();
    let running = engine::server::start_with(
        project,
        plan,
        "127.0.0.1:0".parse().unwrap(),
        false,
        engine::server::AppContext::default(),
    )
    .await
    .unwrap();
    let url = format!("http://{}/api/webhooks/vapi", running.addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= EVENTS {
                    return latencies;
                }
                let body = format!(
                    r#"{{"message":{{"type":"status-update","status":"in-progress","timestamp":{},"call":{{"id":"{}"}}}}}}"#,
                    1_700_000_000_000u64 + i as u64,
                    uuid::Uuid::new_v4()
                );
                let t = Instant::now();
                let res = client
                    .post(&url)
                    .header("authorization", "Bearer dev-vapi-webhook-secret")
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(res.status().is_success(), "{}", res.status());
                latencies.push(t.elapsed());
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(l) = tasks.join_next().await {
        latencies.extend(l.unwrap());
    }
    let took = started.elapsed();
    latencies.sort();
    println!("ingest: {EVENTS} signed requests, {CLIENTS} concurrent clients");
    println!("  {:.0} requests/s", EVENTS as f64 / took.as_secs_f64());
    println!(
        "  latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.95).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    running.shutdown(Duration::from_secs(5)).await;

    // 2. drain: workers on the filled queue
    let (project, plan) = load();
    let target = engine::sink::SinkTarget::Configured;
    let pool = engine::server::queueing::sink_pool(&project, &target).unwrap();
    // the event archive on (as served), or off with BENCH_ARCHIVE=off: the drain rate of both
    let archive = (std::env::var("BENCH_ARCHIVE").as_deref() != Ok("off")).then(|| {
        Arc::new(engine::archive::Store::new(
            pool.as_ref(),
            &project.settings,
        ))
    });
    if let Some(store) = &archive {
        engine::archive::retention::tend(store, &engine::archive::retention::keeps(&project))
            .await
            .unwrap();
    }
    let wiring = engine::server::queueing::QueueWiring::new(
        &project,
        &target,
        pool.as_ref(),
        &[],
        None,
        archive.as_ref(),
    )
    .unwrap();
    let queued: Vec<_> = project
        .pipelines
        .iter()
        .zip(plan.pipelines)
        .filter_map(|(p, built)| wiring.queued(&project, p, built.program).unwrap())
        .collect();
    let started = Instant::now();
    let ticks = machine_ticks();
    let workers = engine::server::queueing::start(queued.iter());
    loop {
        let n: i64 = pg
            .query_one("SELECT count(*) FROM call_status", &[])
            .await
            .unwrap()
            .get(0);
        if n as usize >= EVENTS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "drain stalled at {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let (busy, all) = machine_ticks();
    let busy = (busy - ticks.0) as f64 / (all - ticks.1).max(1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "drain: {EVENTS} events, queue -> Rhai transform -> Postgres (archive {}), {} workers",
        if archive.is_some() { "on" } else { "off" },
        project
            .pipelines
            .iter()
            .find(|p| p.config.name == "vapi")
            .and_then(|p| p.config.queue.as_ref())
            .map_or(4, |q| q.concurrency)
    );
    println!(
        "  {:.0} events/s ({:.2} s)",
        EVENTS as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    // what the archive costs shows here first: the machine's CPU per event (engine, Redis,
    // Postgres, and this bench's own polling), whatever the share of each
    println!(
        "  machine: {:.0} % of {cores} cores busy over the drain: {:.0} µs of CPU per event",
        busy * 100.0,
        busy * cores as f64 * took.as_secs_f64() / EVENTS as f64 * 1e6
    );
    workers.stop(Duration::from_secs(5)).await;
    bench.cleanup().await;
}

/// The machine's CPU time so far, in the kernel's ticks: (busy, all), from the first line of
/// /proc/stat (user, nice, system, idle, iowait, irq, softirq, steal; idle and iowait not busy).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let t: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let all: u64 = t.iter().sum();
    let idle = t.get(3).unwrap_or(&0) + t.get(4).unwrap_or(&0);
    (all - idle, all)
}
