//! The whole-process benchmark: the release `engine` binary with the shipped pipelines against
//! the local Redis and Postgres, driven by a load generator in this process, next to a bare salvo
//! handler measured in the same run (`cargo bench --bench load`).
//!
//! ```text
//! 1. ceiling   a bare salvo server (this binary, re-run as a child) answering 200: saturation
//! 2. ingest    engine serve --no-worker: signed 2 KiB Vapi end-of-call-reports, saturation
//!              (closed loop) and fixed offered rates (open loop: latency counted from each
//!              request's scheduled time, so a stall is not hidden); the generator's own floor
//!              (the same open-loop run at half rate against the bare server); peak RSS (VmHWM)
//! 3. drain     engine worker on the filled queue: events/s into Postgres
//! 4. e2e       engine serve with workers at a steady rate: request sent -> row committed
//! 5. start     boot (spawn -> /health 200) and `engine validate` with 50 pipelines
//! ```
//!
//! Prints every figure and writes `docs/benchmarks-latency.png` (latency percentiles against
//! offered load). Everything shares the machine's cores: the generator, the server, Redis and
//! Postgres. `-- --quick` shortens every phase (a smoke run); `LOAD_STATIC_RESPOND=1` answers
//! Vapi statically instead of with its respond script, to show what the script costs.
//! `-- --saturation` runs only phases 1 and 2's saturation, three times, for comparing a change
//! (or attaching `perf` to the engine) in about two minutes, with the CPU each request costs the
//! engine, Redis and the generator; `LOAD_ENGINE=<path>` runs another build of the engine (one
//! built with frame pointers, for `perf record -g`).
//! The open-loop phases hold at most 200 connections (`LOAD_CONNECTIONS=<n>` to change it): the
//! generator is one peer address, and the engine closes a peer's connections past
//! `connections.per_ip` (256) at accept. A phase with errors says what they were.
//! `CONSOLE_TOKEN=<token>` turns the operator console on in the engines it starts (its traffic
//! counts and event sample then run on every request).
//! `-- --pace` adds to each of those rounds the same saturation with an `engine worker` process
//! writing Postgres beside the server: whether the worker keeps pace, and its CPU per event.
//! `-- --redis-floor` measures instead what Redis alone spends per request-path op (the group
//! commit driven directly, no HTTP).
//! `-- --soak 10m [--warmup 60s] [--together]` runs instead a memory soak of `engine serve
//! --no-worker` and `engine worker` (with `--together`, one `engine serve` doing both) under
//! sustained load (`load/soak.rs`).
//! `-- --tool-calls [--quick]` measures instead what a Vapi tool call answered from a calendar
//! costs inside the engine, against a local Google stand-in (`load/tools.rs`).
//! `-- --scale` measures the capacity model's inputs and checks its predictions for this
//! machine: 1 vs 2 engine instances, 1 vs 3 queue partitions, rows/s per Postgres connection
//! (`load/scale.rs`, docs/scaling.md).
//! `-- --archive [--quick]` measures the event archive's search over 10 M events and a replay's
//! rate (`load/archive.rs`).
//! `-- --cost [--quick]` measures instead the CPU one event costs in each process (ingest,
//! worker, Redis, Postgres) at pace and in a backlog, against the 118 µs target (`load/cost.rs`).
//! With `LOAD_TRACES=1` the engines export traces to an OTLP receiver in the bench process
//! (`load/traces.rs`): the same numbers with tracing on.
//! `-- --pipelines [N]` measures instead what N pipelines (1,000 by default) cost at start:
//! validate's time and memory, serve's time to /health, its RSS and Redis connections
//! (`load/many.rs`).
//! `-- --dashboard` draws the Grafana dashboard's main panels from `/metrics` under a changing
//! load into docs/grafana/engine.png (`load/dashboard.rs`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod support;

#[path = "load/soak.rs"]
mod soak;

#[path = "load/tools.rs"]
mod tools;

#[path = "load/dashboard.rs"]
mod dashboard;

#[path = "load/scale.rs"]
mod scale;

#[path = "load/archive.rs"]
mod archive;
#[path = "load/cost.rs"]
mod cost;
#[path = "load/many.rs"]
mod many;
#[path = "load/traces.rs"]
mod traces;

#[path = "load/full.rs"]
mod full;

#[path = "load/pace.rs"]
mod pace;

#[path = "load/plot.rs"]
mod plot;

#[path = "load/redis_floor.rs"]
mod redis_floor;

#[path = "load/traffic.rs"]
mod traffic;
use traffic::{Run, client, offer, percentile, saturate, send};

use plot::labels_font;

const SECRET: &str = "bench-vapi-webhook-secret";
/// Concurrent connections of the closed-loop (saturation) runs.
const CLIENTS: usize = 32;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = |flag: &str| args.iter().any(|a| a == flag);
    if mode("--list") {
        return;
    }
    if std::env::var("LOAD_BENCH_BARE").is_ok() {
        bare_server();
        return;
    }
    let quick = mode("--quick");
    let saturation_only = mode("--saturation");
    let pace = mode("--pace");
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                soak::parse_span(v)
                    .unwrap_or_else(|| panic!("{flag} takes a span such as 10m or 60s"))
            })
    };
    let soak = after("--soak");
    let warmup = after("--warmup").unwrap_or(Duration::from_secs(60));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if mode("--redis-floor") {
        rt.block_on(redis_floor::run());
    } else if mode("--scale") {
        rt.block_on(with_setup("scale", async |setup| {
            scale::run(setup, quick).await
        }));
    } else if mode("--archive") {
        rt.block_on(with_setup("archive", async |setup| {
            archive::run(setup, quick).await
        }));
    } else if mode("--cost") {
        rt.block_on(with_setup("cost", async |setup| {
            traces::start_if_asked().await;
            cost::run(setup, quick).await;
            if traces::endpoint().is_some() {
                println!("traces: {} spans received", traces::spans());
            }
        }));
    } else if mode("--pipelines") {
        let n = args
            .iter()
            .position(|a| a == "--pipelines")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        rt.block_on(with_setup("many", async |setup| many::run(setup, n).await));
    } else if mode("--dashboard") {
        rt.block_on(with_setup("dash", async |setup| {
            dashboard::run(setup).await
        }));
    } else if mode("--tool-calls") {
        rt.block_on(with_setup("tools", async |setup| {
            tools::run(setup, quick).await
        }));
    } else if let Some(length) = soak {
        rt.block_on(with_setup("soak", async |setup| {
            soak::run(setup, length, warmup, mode("--together")).await
        }));
    } else {
        rt.block_on(full::run(quick, saturation_only || pace, pace));
    }
}

/// Run one bench mode on a fresh setup (database schema, Redis prefix) named `name`, then clean
/// it up; skipped, with a line saying so, without Postgres.
async fn with_setup(name: &str, mode: impl AsyncFnOnce(&Setup)) {
    let Some(setup) = support::setup(name).await else {
        eprintln!("no Postgres at 127.0.0.1:5432: skipping");
        return;
    };
    mode(&setup).await;
    setup.cleanup().await;
}

/// This bench re-run as the bare server.
fn bare_command() -> Command {
    let mut bare = Command::new(std::env::current_exe().unwrap());
    bare.env("LOAD_BENCH_BARE", "1");
    bare
}

/// The ceiling: salvo with one handler answering 200, nothing else.
fn bare_server() {
    use salvo::conn::Acceptor;
    use salvo::prelude::*;
    #[handler]
    async fn ok(res: &mut Response) {
        res.render("ok");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
        let port = acceptor
            .holdings()
            .first()
            .and_then(|h| h.local_addr.clone().into_std())
            .map(|a| a.port())
            .unwrap();
        eprintln!("Server listening on port {port}");
        let router = Router::new().push(Router::with_path("{**rest}").goal(ok));
        Server::new(acceptor).serve(router).await;
    });
}

use support::{Bench as Setup, copy};

/// A child process serving HTTP, and its port (read from its start-up line).
struct Server {
    child: Child,
    port: u16,
    booted: Duration,
}

impl Server {
    fn spawn(mut cmd: Command) -> Server {
        use std::io::{BufRead, BufReader};
        let started = Instant::now();
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut port = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("Server listening on port ").nth(1) {
                port = rest.split_whitespace().next().and_then(|p| p.parse().ok());
                break;
            }
        }
        // LOAD_SERVE_STDERR=<file>: keep the rest of what the server writes (as
        // LOAD_WORKER_STDERR does for the worker)
        let mut keep = std::env::var("LOAD_SERVE_STDERR")
            .ok()
            .map(|path| std::fs::File::create(path).unwrap());
        std::thread::spawn(move || {
            use std::io::Write;
            for line in lines.map_while(Result::ok) {
                if let Some(f) = keep.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let port = port.expect("a listening line");
        // booted = answering /health
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Server {
            child,
            port,
            booted: started.elapsed(),
        }
    }

    /// Peak resident memory so far (VmHWM), bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU time the process has used so far (user + system), seconds.
    fn cpu_secs(&self) -> f64 {
        process_cpu_secs(self.child.id())
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// utime + stime of a process from /proc/<pid>/stat, seconds.
fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Clock ticks per second of /proc's CPU times (asked of `getconf` once).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time the local Redis server has used (INFO cpu), seconds.
async fn redis_cpu_secs() -> f64 {
    redis_cpu_secs_at(LOCAL_REDIS).await
}

/// CPU time the Redis server at `url` has used (INFO cpu), seconds.
async fn redis_cpu_secs_at(url: &str) -> f64 {
    redis_info_at(url, "cpu")
        .await
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum()
}

const LOCAL_REDIS: &str = "redis://127.0.0.1:6379";

/// A section of the local Redis's INFO (empty when it does not answer).
async fn redis_info(section: &str) -> String {
    redis_info_at(LOCAL_REDIS, section).await
}

/// A section of the INFO of the Redis at `url` (empty when it does not answer).
async fn redis_info_at(url: &str, section: &str) -> String {
    let Ok(client) = redis::Client::open(url) else {
        return String::new();
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return String::new();
    };
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .unwrap_or_default()
}

/// CPU per request over a run, microseconds: of the server under load (the engine or the bare
/// one), of Redis, of this process (the load generator).
struct Cost {
    server_us: f64,
    redis_us: f64,
    /// This process: the load generator.
    generator_us: f64,
}

impl Cost {
    async fn start(server: &Server) -> (f64, f64, f64) {
        (
            server.cpu_secs(),
            redis_cpu_secs().await,
            process_cpu_secs(std::process::id()),
        )
    }

    async fn since(server: &Server, start: (f64, f64, f64), requests: f64) -> Cost {
        let per = |secs: f64| secs * 1e6 / requests.max(1.0);
        Cost {
            server_us: per(server.cpu_secs() - start.0),
            redis_us: per(redis_cpu_secs().await - start.1),
            generator_us: per(process_cpu_secs(std::process::id()) - start.2),
        }
    }
}

/// A pipelines directory: the shipped set in `shipped` plus `n` copies of its pipeline `name`
/// (`<name>.yaml`, on route `path`), each with its own name and route (`<path>/<i>`).
fn with_copies(shipped: &Path, name: &str, path: &str, n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy(shipped, dir.path());
    let yaml = std::fs::read_to_string(shipped.join(format!("{name}.yaml"))).unwrap();
    let (name_line, path_line) = (format!("name: {name}\n"), format!("path: {path}\n"));
    assert!(
        yaml.contains(&name_line) && yaml.contains(&path_line),
        "{name}.yaml names itself `{name}` and routes `{path}`"
    );
    for i in 0..n {
        let copy = yaml
            .replace(&name_line, &format!("name: {name}-{i:04}\n"))
            .replace(&path_line, &format!("path: {path}/{i:04}\n"));
        std::fs::write(dir.path().join(format!("{name}-{i:04}.yaml")), copy).unwrap();
    }
    dir
}

fn engine(args: &[&str], setup: &Setup, dir: &Path) -> Command {
    // LOAD_ENGINE: another build of the engine (one with frame pointers, for `perf record -g`)
    let binary =
        std::env::var("LOAD_ENGINE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_engine").into());
    let mut c = Command::new(binary);
    c.args(args);
    if args[0] == "validate" {
        c.arg(dir);
    } else {
        c.arg("--pipelines").arg(dir);
    }
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORT", "0")
        .env("RUST_LOG", "warn,engine::server=info")
        .env("REDIS_URL", LOCAL_REDIS)
        .env("DATABASE_URL", &setup.database)
        .env("VAPI_WEBHOOK_SECRET", SECRET)
        .env(
            "ENCRYPTION_KEY",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        );
    // the allocator's and the runtime's own settings pass through, for experiments
    // (MIMALLOC_PURGE_DELAY, TOKIO_WORKER_THREADS, ...), and CONSOLE_TOKEN, to measure what the
    // operator console costs while it is on
    c.envs(std::env::vars().filter(|(k, _)| {
        k.starts_with("MIMALLOC_") || k.starts_with("TOKIO_") || k == "CONSOLE_TOKEN"
    }));
    // LOAD_TRACES=1: traces exported to the receiver in this process (load/traces.rs)
    if let Some(endpoint) = traces::endpoint() {
        c.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
    }
    c
}

/// 2 KiB Vapi end-of-call-report bodies, each with its own call id.
struct Bodies {
    template: Vec<u8>,
    slot: usize,
    next: AtomicU64,
    run: u64,
}

const SLOT: &str = "ffffffff-ffff-4fff-8fff-ffffffffffff";

impl Bodies {
    fn new(run: u64) -> Bodies {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text =
            std::fs::read_to_string(root.join("fixtures/payloads/vapi/end-of-call-report.json"))
                .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["message"]["call"]["id"] = SLOT.into();
        let mut transcript = v["message"]["artifact"]["transcript"]
            .as_str()
            .unwrap()
            .to_string();
        while serde_json::to_vec(&v).unwrap().len() < 2048 {
            transcript.push_str("\nUser: And could you send me a reminder the day before?");
            v["message"]["artifact"]["transcript"] = transcript.clone().into();
        }
        let template = serde_json::to_vec(&v).unwrap();
        let slot = template
            .windows(SLOT.len())
            .position(|w| w == SLOT.as_bytes())
            .unwrap();
        Bodies {
            template,
            slot,
            next: AtomicU64::new(0),
            run,
        }
    }

    /// The next body and its call id.
    fn next(&self) -> (Vec<u8>, String) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}-0000-4000-8000-{n:012x}", self.run as u32);
        let mut body = self.template.clone();
        body[self.slot..self.slot + SLOT.len()].copy_from_slice(id.as_bytes());
        (body, id)
    }
}

async fn count(pg: &tokio_postgres::Client, schema: &str) -> i64 {
    pg.query_one(&format!("SELECT count(*) FROM {schema}.call_logs"), &[])
        .await
        .unwrap()
        .get(0)
}

impl Server {
    /// `engine worker` has no port: started is enough.
    fn spawn_worker(mut cmd: Command) -> Server {
        // LOAD_WORKER_STDERR=<file>: keep what the worker writes (e.g. MIMALLOC_SHOW_STATS=1's
        // allocator statistics at exit)
        let stderr = match std::env::var("LOAD_WORKER_STDERR") {
            Ok(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            Err(_) => Stdio::null(),
        };
        let child = cmd.stderr(stderr).stdout(Stdio::null()).spawn().unwrap();
        Server {
            child,
            port: 0,
            booted: Duration::ZERO,
        }
    }
}

fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{cores} × {model}")
}
