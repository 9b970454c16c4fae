//! `cargo bench --bench load -- --soak 10m [--warmup 60s] [--together]`: memory under sustained
//! load.
//!
//! ```text
//! engine serve --no-worker   <- the generator at saturation: signed 2 KiB Vapi end-of-call reports
//! engine worker              <- drains the same queue into Postgres, at the same time
//!   (--together: one `engine serve` with its workers does both, as a single instance deploys)
//! every 5 s: requests accepted, events processed (accepted - stream length), RSS of each process
//! after the warm-up: RSS growth of each process over the events it handled, its maximum, and
//! its peak (VmHWM, the kernel's high-water mark: nothing between samples escapes it)
//! ```
//!
//! Prints the samples as a table and writes `docs/benchmarks-soak.png` (RSS against events,
//! each process; `docs/benchmarks-soak-together.png` with `--together`). The target (issue:
//! memory soak; issue 40 for one process): after the warm-up, each process grows by less than
//! 5 MiB and stays under 64 MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Bodies, CLIENTS, Server, client, engine, send};

const EVERY: Duration = Duration::from_secs(5);
const MIB: f64 = 1024.0 * 1024.0;

/// One sample.
#[derive(Clone, Debug)]
struct Sample {
    secs: f64,
    accepted: u64,
    processed: u64,
    /// RSS of each watched process, in [`Watched`]'s order
    rss: Vec<u64>,
}

/// A process the soak watches, and which of the counts are its events.
struct Watched {
    name: &'static str,
    server: Server,
    /// its events are the events processed (a worker) rather than the requests accepted
    processes: bool,
}

impl Watched {
    fn events(&self, s: &Sample) -> u64 {
        if self.processes {
            s.processed
        } else {
            s.accepted
        }
    }
}

/// `10m`, `90s`, `1h` as a duration.
pub fn parse_span(text: &str) -> Option<Duration> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// A line of `/proc/<pid>/status` in bytes (`VmRSS`: resident now; `VmHWM`: its peak).
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resident memory of a process now (VmRSS), bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// The generator: [`CLIENTS`] connections sending signed reports until `stop`.
struct Load {
    accepted: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String) -> Load {
        let bodies = Arc::new(Bodies::new(std::process::id() as u64 * 10 + 9));
        let accepted = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let http = client();
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (http, url, bodies) = (http.clone(), url.clone(), bodies.clone());
            let (accepted, errors, stop) = (accepted.clone(), errors.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if send(&http, &url, Some(&bodies)).await {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Load {
            accepted,
            errors,
            stop,
            tasks,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.errors.load(Ordering::Relaxed)
    }
}

pub async fn run(
    setup: &super::support::Bench,
    length: Duration,
    warmup: Duration,
    together: bool,
) {
    let dir = setup.dir.path();
    let watched = if together {
        vec![Watched {
            name: "engine serve",
            server: Server::spawn(engine(&["serve"], setup, dir)),
            processes: false,
        }]
    } else {
        vec![
            Watched {
                name: "engine serve --no-worker",
                server: Server::spawn(engine(&["serve", "--no-worker"], setup, dir)),
                processes: false,
            },
            Watched {
                name: "engine worker",
                server: Server::spawn_worker(engine(&["worker"], setup, dir)),
                processes: true,
            },
        ]
    };
    let url = format!(
        "http://127.0.0.1:{}/api/webhooks/vapi",
        watched[0].server.port
    );
    let load = Load::start(url);
    let names: Vec<&str> = watched.iter().map(|w| w.name).collect();
    println!(
        "soak: {}, {CLIENTS} connections at saturation, {:.0} s warm-up then {:.0} s",
        names.join(" and "),
        warmup.as_secs_f64(),
        length.as_secs_f64()
    );
    let samples = sample(setup, &watched, &load, warmup + length).await;
    // the high-water marks before the processes go
    let peaks: Vec<u64> = watched
        .iter()
        .map(|w| status_kb(w.server.child.id(), "VmHWM:"))
        .collect();
    let errors = load.stop().await;
    report(&watched, &samples, &peaks, warmup, errors);
    plot(&watched, &samples, warmup.as_secs_f64(), together);
    for w in watched {
        w.server.stop();
    }
}

/// Every [`EVERY`] until `until`: the counts and each process's RSS; every 30 s in a table.
async fn sample(
    setup: &super::support::Bench,
    watched: &[Watched],
    load: &Load,
    until: Duration,
) -> Vec<Sample> {
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{}:{{q:vapi}}:stream", setup.prefix);
    let columns: Vec<String> = watched
        .iter()
        .map(|w| format!("{} RSS (MiB)", w.name))
        .collect();
    println!("| t (s) | accepted | processed | {} |", columns.join(" | "));
    println!("|---|---|---|{}", "---|".repeat(columns.len()));
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let secs = started.elapsed().as_secs_f64();
        let queued: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        let a = load.accepted.load(Ordering::Relaxed);
        let s = Sample {
            secs,
            accepted: a,
            processed: a.saturating_sub(queued),
            rss: watched.iter().map(|w| rss(w.server.child.id())).collect(),
        };
        // every 30 s in the printed table; every sample in the plot
        if (samples.len() + 1) % 6 == 0 {
            let rss: Vec<String> = s
                .rss
                .iter()
                .map(|r| format!("{:.1}", *r as f64 / MIB))
                .collect();
            println!(
                "| {:.0} | {} | {} | {} |",
                s.secs,
                s.accepted,
                s.processed,
                rss.join(" | ")
            );
        }
        samples.push(s);
        if secs >= until.as_secs_f64() {
            return samples;
        }
    }
}

/// Each process's growth after the warm-up, its maximum and peak, and whether the target holds.
fn report(watched: &[Watched], samples: &[Sample], peaks: &[u64], warmup: Duration, errors: u64) {
    let base = samples
        .iter()
        .find(|s| s.secs >= warmup.as_secs_f64())
        .unwrap_or(&samples[0]);
    let last = samples.last().unwrap();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.secs >= base.secs).collect();
    // RSS moves by a few MiB with the batch in flight at the moment of a sample, so growth is
    // also measured between the means of the first and the last window after the warm-up: a
    // minute, or a third of a shorter soak
    let window = ((last.secs - base.secs) / 3.0).min(60.0);
    let mean = |from: f64, to: f64, i: usize| {
        let w: Vec<f64> = after
            .iter()
            .filter(|s| s.secs >= from && s.secs <= to)
            .map(|s| s.rss[i] as f64 / MIB)
            .collect();
        w.iter().sum::<f64>() / w.len().max(1) as f64
    };
    println!(
        "soak after warm-up ({:.0} s), {errors} errors:",
        last.secs - base.secs
    );
    let mut met = true;
    for (i, w) in watched.iter().enumerate() {
        let events = w.events(last) - w.events(base);
        let growth = (last.rss[i] as f64 - base.rss[i] as f64) / MIB;
        let trend = mean(last.secs - window, last.secs, i) - mean(base.secs, base.secs + window, i);
        let max = after.iter().map(|s| s.rss[i]).max().unwrap_or(0) as f64 / MIB;
        let peak = peaks[i] as f64 / MIB;
        println!(
            "  {}: {events} events, RSS {:.1} -> {:.1} MiB ({growth:+.1} MiB, {:+.1} bytes/event; \
             first to last {window:.0} s mean {trend:+.1} MiB), max sampled {max:.1} MiB, peak (VmHWM) {peak:.1} MiB",
            w.name,
            base.rss[i] as f64 / MIB,
            last.rss[i] as f64 / MIB,
            growth * MIB / events.max(1) as f64,
        );
        met &= trend < 5.0 && peak <= 64.0;
    }
    println!(
        "target (< 5 MiB growth each, by the window means; peak <= 64 MiB): {}",
        if met { "met" } else { "MISSED" }
    );
}

/// RSS against events handled, each process, with the end of the warm-up marked.
fn plot(watched: &[Watched], samples: &[Sample], warm: f64, together: bool) {
    use plotters::prelude::*;
    if !super::labels_font("soak plot") {
        return;
    }
    let file = if together {
        "docs/benchmarks-soak-together.png"
    } else {
        "docs/benchmarks-soak.png"
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let root = BitMapBackend::new(&path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let x = |w: &Watched, s: &Sample| w.events(s) as f64 / 1e6;
    let x_max = samples
        .iter()
        .flat_map(|s| watched.iter().map(move |w| x(w, s)))
        .fold(0.1, f64::max);
    let y_max = samples
        .iter()
        .flat_map(|s| s.rss.iter().map(|r| *r as f64 / MIB))
        .fold(0.0, f64::max)
        .max(64.0)
        * 1.1;
    let names: Vec<&str> = watched.iter().map(|w| w.name).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("RSS under sustained load ({})", names.join(", ")),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("events handled (millions)")
        .y_desc("RSS (MiB)")
        .draw()
        .unwrap();
    chart
        .draw_series(LineSeries::new([(0.0, 64.0), (x_max, 64.0)], RED.mix(0.4)))
        .unwrap()
        .label("64 MiB target")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.mix(0.4)));
    for (i, (w, color)) in watched.iter().zip([BLUE, GREEN]).enumerate() {
        let label = format!(
            "{} ({})",
            w.name,
            if w.processes { "processed" } else { "accepted" }
        );
        let points = samples.iter().map(|s| (x(w, s), s.rss[i] as f64 / MIB));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .unwrap()
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if let Some(s) = samples.iter().find(|s| s.secs >= warm) {
            let dot = Circle::new((x(w, s), s.rss[i] as f64 / MIB), 5, color.filled());
            chart.draw_series([dot]).unwrap();
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
    println!("wrote {} (dots: end of the warm-up)", path.display());
}
