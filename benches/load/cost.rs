//! `cargo bench --bench load -- --cost`: the CPU one event costs end to end, per process, against
//! the target of a tenth of the Node/BullMQ backend's (118 µs: ingest + worker + Redis; Postgres
//! shown, not counted).
//!
//! ```text
//! at pace   engine serve --no-worker + engine worker; signed 2 KiB Vapi end-of-call-reports,
//!           ingest saturated by 32 connections (closed loop) while the worker keeps pace; CPU
//!           of each process from /proc (Redis from INFO cpu, Postgres summed over its
//!           processes) over the run and until every row is committed, divided by the events
//! backlog   the queue filled first by ingest alone (its CPU per request measured), then one
//!           engine worker started on it: CPU until the last row is committed, per event
//! ```
//!
//! Three rounds (`--quick`: one, shorter). `LOAD_COST_RATE=<n>` offers n events/s (open loop)
//! instead of saturating, to see the cost at a steady low load; `LOAD_ENGINE` runs another build
//! (A/B); `LOAD_COST_PERF=<dir>` records the worker and the ingest server with `perf` through each phase
//! (`LOAD_COST_PIDS=1` prints the processes' pids instead, to attach a profiler by hand).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Bodies, Server, Setup, count, engine, offer, redis_cpu_secs, saturate};

/// The target, µs of CPU per event: a tenth of the Node peer's ≈ 1,180.
const TARGET_TOTAL_US: f64 = 118.0;
/// The worker's own share of it.
const TARGET_WORKER_US: f64 = 40.0;

/// CPU per event of one phase, µs.
#[derive(Debug, Clone, Copy, Default)]
struct PerEvent {
    ingest: f64,
    worker: f64,
    redis: f64,
    postgres: f64,
}

impl PerEvent {
    fn total(&self) -> f64 {
        self.ingest + self.worker + self.redis
    }

    fn line(&self, label: &str, events: i64) -> String {
        format!(
            "{label:<8} {events:>7} events   ingest {:>5.1}   worker {:>5.1}   Redis {:>5.1}   | total {:>6.1} µs/event ({}; worker {})   Postgres {:>5.1}",
            self.ingest,
            self.worker,
            self.redis,
            self.total(),
            verdict(self.total(), TARGET_TOTAL_US),
            verdict(self.worker, TARGET_WORKER_US),
            self.postgres,
        )
    }
}

fn verdict(value: f64, target: f64) -> String {
    if value <= target {
        format!("≤ {target:.0}: met")
    } else {
        format!("> {target:.0}: not met")
    }
}

/// Run the cost measurement.
pub async fn run(setup: &Setup, quick: bool) {
    let rate: Option<f64> = std::env::var("LOAD_COST_RATE")
        .ok()
        .and_then(|r| r.parse().ok());
    let (secs, rounds) = if quick { (2.0, 1) } else { (6.0, 3) };
    println!(
        "cost: CPU per event (µs); pace: ingest {} for {secs:.0} s with an engine worker beside it; backlog: the queue filled by ingest alone, then drained by a worker; Vapi end-of-call-reports (2 KiB) -> call_logs",
        rate.map_or("saturated by 32 connections".to_string(), |r| format!(
            "offered {r:.0}/s"
        )),
    );
    let mut met = 0;
    for round in 0..rounds {
        let pace = at_pace(setup, round, rate, secs).await;
        let backlog = backlog(setup, round, pace.0.max(1000) as usize).await;
        println!("round {}:", round + 1);
        println!("  {}", pace.1.line("pace", pace.0));
        println!("  {}", backlog.1.line("backlog", backlog.0));
        if [pace.1, backlog.1]
            .iter()
            .all(|c| c.total() <= TARGET_TOTAL_US && c.worker <= TARGET_WORKER_US)
        {
            met += 1;
        }
    }
    println!(
        "targets (total ≤ {TARGET_TOTAL_US:.0} µs, worker ≤ {TARGET_WORKER_US:.0} µs, at pace and in a backlog) met in {met} of {rounds} rounds"
    );
}

/// Ingest and worker side by side, ingest saturated by 32 connections (or at a fixed rate);
/// CPU until every row is committed.
async fn at_pace(setup: &Setup, round: usize, rate: Option<f64>, secs: f64) -> (i64, PerEvent) {
    let server = Server::spawn(engine(&["serve", "--no-worker"], setup, setup.dir.path()));
    let worker = Server::spawn_worker(engine(&["worker"], setup, setup.dir.path()));
    print_pids(&server, &worker);
    let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", server.port);
    // warm-up: connections, pools, the worker's first reads (not counted)
    let warm = Arc::new(Bodies::new(seed(round, 1)));
    let warm_rows = count(&setup.pg, &setup.schema).await;
    let (_, sent) = offer(&url, warm, 1000.0, 1.0).await;
    settle(setup, warm_rows + sent.len() as i64).await;

    let before = count(&setup.pg, &setup.schema).await;
    let profile = Profile::start(&worker, "worker-pace");
    let ingest_profile = Profile::start(&server, "ingest-pace");
    let cpu = Cpu::now(Some(&server), Some(&worker)).await;
    let bodies = Arc::new(Bodies::new(seed(round, 2)));
    let run = match rate {
        Some(rate) => offer(&url, bodies, rate, secs).await.0,
        None => saturate(&url, Some(bodies), secs).await,
    };
    let rows = settle(setup, before + run.count as i64).await - before;
    let spent = cpu.since(Some(&server), Some(&worker)).await;
    profile.stop();
    ingest_profile.stop();
    server.stop();
    worker.stop();
    if run.errors > 0 {
        println!("  ({} requests failed at pace)", run.errors);
    }
    (rows, spent.per(run.count as f64, rows as f64))
}

/// The queue filled by ingest alone, then drained by one worker.
async fn backlog(setup: &Setup, round: usize, events: usize) -> (i64, PerEvent) {
    let server = Server::spawn(engine(&["serve", "--no-worker"], setup, setup.dir.path()));
    let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", server.port);
    let bodies = Arc::new(Bodies::new(seed(round, 3)));
    let _ = saturate(&url, Some(bodies.clone()), 0.5).await;
    let cpu = Cpu::now(Some(&server), None).await;
    let ingest_profile = Profile::start(&server, "ingest-fill");
    let filled = fill(&url, bodies, events).await;
    let ingest = cpu.since(Some(&server), None).await;
    ingest_profile.stop();
    server.stop();

    let before = count(&setup.pg, &setup.schema).await;
    let cpu = Cpu::now(None, None).await;
    // the worker's CPU counts from its start: its boot is part of draining a backlog
    let worker = Server::spawn_worker(engine(&["worker"], setup, setup.dir.path()));
    let profile = Profile::start(&worker, "worker-backlog");
    let rows = settle(setup, before + filled as i64).await - before;
    let drain = cpu.since(None, Some(&worker)).await;
    profile.stop();
    worker.stop();
    let n = rows.max(1) as f64;
    let per = PerEvent {
        ingest: ingest.server * 1e6 / filled.max(1) as f64,
        worker: drain.worker * 1e6 / n,
        // the fill's Redis work (rate check, dedupe, append) and the drain's (reads, acks)
        redis: ingest.redis * 1e6 / filled.max(1) as f64 + drain.redis * 1e6 / n,
        postgres: (ingest.postgres + drain.postgres) * 1e6 / n,
    };
    (rows, per)
}

/// `events` requests as fast as 32 connections take them; how many were accepted.
async fn fill(url: &str, bodies: Arc<Bodies>, events: usize) -> usize {
    let client = super::client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..super::CLIENTS {
        let (client, url, bodies, next, accepted) = (
            client.clone(),
            url.to_string(),
            bodies.clone(),
            next.clone(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            while next.fetch_add(1, Ordering::Relaxed) < events {
                if super::send(&client, &url, Some(&bodies)).await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    accepted.load(std::sync::atomic::Ordering::Relaxed)
}

/// Wait until `expected` rows are committed (or the count stops moving for 5 s); the count.
async fn settle(setup: &Setup, expected: i64) -> i64 {
    let mut last = (count(&setup.pg, &setup.schema).await, Instant::now());
    loop {
        let n = count(&setup.pg, &setup.schema).await;
        if n >= expected {
            return n;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            println!("  (settled at {n} rows of {expected})");
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seed(round: usize, phase: u64) -> u64 {
    std::process::id() as u64 * 1000 + 500 + round as u64 * 10 + phase
}

/// `LOAD_COST_PERF=<dir>`: `perf record` the worker and the ingest server through each measured
/// phase into `<dir>/<process>-<phase>.data` (`LOAD_COST_PERF_ARGS` adds options, e.g. `--call-graph dwarf`).
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(process: &Server, name: &str) -> Profile {
        let Ok(dir) = std::env::var("LOAD_COST_PERF") else {
            return Profile(None);
        };
        let extra = std::env::var("LOAD_COST_PERF_ARGS").unwrap_or_default();
        let child = std::process::Command::new("perf")
            .args(["record", "-F", "1999", "-q", "-o"])
            .arg(format!("{dir}/{name}.data"))
            .args(extra.split_whitespace())
            .args(["-p", &process.child.id().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        Profile(child)
    }

    fn stop(self) {
        if let Some(mut child) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

fn print_pids(server: &Server, worker: &Server) {
    if std::env::var("LOAD_COST_PIDS").is_ok() {
        println!(
            "  pids: ingest {}, worker {}",
            server.child.id(),
            worker.child.id()
        );
    }
}

/// CPU seconds of the processes measured.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server: f64,
    worker: f64,
    redis: f64,
    postgres: f64,
}

impl Cpu {
    async fn now(server: Option<&Server>, worker: Option<&Server>) -> Cpu {
        Cpu {
            server: server.map_or(0.0, Server::cpu_secs),
            worker: worker.map_or(0.0, Server::cpu_secs),
            redis: redis_cpu_secs().await,
            postgres: postgres_cpu_secs(),
        }
    }

    async fn since(&self, server: Option<&Server>, worker: Option<&Server>) -> Cpu {
        let now = Cpu::now(server, worker).await;
        Cpu {
            server: now.server - self.server,
            worker: now.worker - self.worker,
            redis: now.redis - self.redis,
            postgres: now.postgres - self.postgres,
        }
    }

    /// Per event: ingest per request, the rest per row committed.
    fn per(&self, requests: f64, rows: f64) -> PerEvent {
        PerEvent {
            ingest: self.server * 1e6 / requests.max(1.0),
            worker: self.worker * 1e6 / rows.max(1.0),
            redis: self.redis * 1e6 / rows.max(1.0),
            postgres: self.postgres * 1e6 / rows.max(1.0),
        }
    }
}

/// CPU of every process named `postgres` (the postmaster and its backends), seconds.
fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(super::process_cpu_secs)
        .sum()
}
