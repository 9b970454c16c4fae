//! `cargo bench --bench load -- --pipelines [N]`: what N pipelines (1,000 by default) cost at
//! start — the shipped four plus copies of `twilio-sms.yaml`, each with its own name and path, as
//! a team with many sources or tenants grows.
//!
//! ```text
//! 1. engine validate: wall time and peak RSS (median of 5; RSS through /usr/bin/time)
//! 2. engine serve on the embedded defaults (no Redis, no Postgres): spawn -> /health 200, RSS
//!    3 s later (median of 3)
//! 3. engine serve with Redis and Postgres (the bench's database): the same, and the Redis
//!    connections it holds
//! 4. at rest: engine serve with the N pipelines on a private redis-server, nothing arriving,
//!    over 20 s: the scripts and reads Redis runs a second, and the CPU of each
//! ```
//!
//! The same for the shipped four alone, so what one more pipeline costs is the difference over
//! N - 4.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Server, Setup, engine};

/// Run the many-pipelines measurements with `n` pipelines.
pub async fn run(setup: &Setup, n: usize) {
    let many = super::with_copies(
        setup.dir.path(),
        "twilio-sms",
        "/api/twilio/sms",
        n.saturating_sub(4),
    );
    let shipped = (
        validate(setup, setup.dir.path()),
        validate(setup, many.path()),
    );
    println!(
        "validate: 4 pipelines {:.0} ms, {:.1} MiB; {n} pipelines {:.0} ms, {:.1} MiB",
        ms(shipped.0.0),
        mib(shipped.0.1),
        ms(shipped.1.0),
        mib(shipped.1.1)
    );
    for (label, embedded) in [("embedded defaults", true), ("Redis + Postgres", false)] {
        let few = serve(setup, setup.dir.path(), embedded).await;
        let lots = serve(setup, many.path(), embedded).await;
        println!(
            "serve on {label}: 4 pipelines /health in {:.0} ms, RSS {:.1} MiB, {} Redis connections; {n} pipelines /health in {:.0} ms, RSS {:.1} MiB, {} Redis connections; {:.0} KiB per pipeline beyond the first four",
            ms(few.0),
            mib(few.1),
            few.2,
            ms(lots.0),
            mib(lots.1),
            lots.2,
            (lots.1.saturating_sub(few.1)) as f64 / 1024.0 / (n - 4).max(1) as f64
        );
    }
    at_rest(setup, many.path(), n).await;
}

/// What `n` quiet queued pipelines cost while nothing arrives: `engine serve` on a redis-server
/// of its own (so nothing else's commands are counted), 5 s after /health, then 20 s of
/// `INFO commandstats` (after `CONFIG RESETSTAT`) and the CPU of both processes.
async fn at_rest(setup: &Setup, dir: &Path, n: usize) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(mut redis) = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        println!("at rest: skipped (no redis-server)");
        return;
    };
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut cmd = engine(&["serve"], setup, dir);
    cmd.env("REDIS_URL", &url);
    let server = Server::spawn(cmd);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    let (engine0, redis0) = (server.cpu_secs(), super::redis_cpu_secs_at(&url).await);
    let span = Duration::from_secs(20);
    tokio::time::sleep(span).await;
    let (engine1, redis1) = (server.cpu_secs(), super::redis_cpu_secs_at(&url).await);
    let stats = super::redis_info_at(&url, "commandstats").await;
    let calls = |command: &str| -> f64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|v| v.split(',').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / span.as_secs_f64()
    };
    println!(
        "at rest, {n} pipelines on their own Redis, nothing arriving, over 20 s: {:.0} scripts/s (EVALSHA), {:.0} reads/s (XREADGROUP), {:.0} XAUTOCLAIM/s; Redis {:.1} % of a core, engine {:.1} %",
        calls("evalsha"),
        calls("xreadgroup"),
        calls("xautoclaim"),
        (redis1 - redis0) / span.as_secs_f64() * 100.0,
        (engine1 - engine0) / span.as_secs_f64() * 100.0,
    );
    server.stop();
    let _ = redis.kill();
    let _ = redis.wait();
}

/// `engine validate` on `dir`: the median wall time of 5 runs and their median peak RSS (bytes;
/// 0 without /usr/bin/time).
fn validate(setup: &Setup, dir: &Path) -> (Duration, u64) {
    let time = Path::new("/usr/bin/time");
    let mut runs: Vec<(Duration, u64)> = (0..5)
        .map(|_| {
            let plain = engine(&["validate"], setup, dir);
            let mut cmd = if time.exists() {
                // the same command, its peak RSS (KiB) written by time(1) on the last line
                let mut c = Command::new(time);
                c.arg("-f").arg("%M").arg(plain.get_program());
                c.args(plain.get_args());
                c.env_clear()
                    .envs(plain.get_envs().filter_map(|(k, v)| Some((k, v?))));
                c
            } else {
                plain
            };
            let t = Instant::now();
            let out = cmd.output().unwrap();
            let took = t.elapsed();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            let kib = stderr
                .lines()
                .last()
                .and_then(|l| l.trim().parse::<u64>().ok())
                .unwrap_or(0);
            (took, kib * 1024)
        })
        .collect();
    runs.sort();
    let mut rss: Vec<u64> = runs.iter().map(|r| r.1).collect();
    rss.sort();
    (runs[2].0, rss[2])
}

/// `engine serve` on `dir` (`embedded`: without REDIS_URL and DATABASE_URL), 3 times: the median
/// time from spawn to /health 200, the median RSS 3 s later (bytes) and the Redis connections
/// it held then.
async fn serve(setup: &Setup, dir: &Path, embedded: bool) -> (Duration, u64, i64) {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let mut cmd = engine(&["serve"], setup, dir);
        if embedded {
            cmd.env_remove("REDIS_URL").env_remove("DATABASE_URL");
        }
        let before = redis_clients().await;
        let started = Instant::now();
        let server = Server::spawn(cmd);
        let url = format!("http://127.0.0.1:{}/health", server.port);
        let client = reqwest::Client::new();
        loop {
            let ok = client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let up = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = super::soak::rss(server.child.id());
        let connections = redis_clients().await - before;
        server.stop();
        runs.push((up, rss, connections));
    }
    let mut up: Vec<Duration> = runs.iter().map(|r| r.0).collect();
    let mut rss: Vec<u64> = runs.iter().map(|r| r.1).collect();
    let mut conns: Vec<i64> = runs.iter().map(|r| r.2).collect();
    up.sort();
    rss.sort();
    conns.sort();
    (up[1], rss[1], conns[1])
}

/// The local Redis's connected clients (INFO clients).
async fn redis_clients() -> i64 {
    super::redis_info("clients")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}
