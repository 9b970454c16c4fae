//! `cargo bench --bench load -- --soak 10m [--warmup 60s]`: memory under sustained load.
//!
//! ```text
//! engine serve --no-worker   <- the generator at saturation: signed 2 KiB Vapi end-of-call reports
//! engine worker              <- drains the same queue into Postgres, at the same time
//! every 5 s: requests accepted, events processed (accepted - stream length), RSS of both
//! after the warm-up: RSS growth of each process over the events it handled, and its maximum
//! ```
//!
//! Prints the samples as a table and writes `docs/benchmarks-soak.png` (RSS against events,
//! both processes). The target (issue: memory soak): after a one-minute warm-up, each process grows
//! by less than 5 MiB over 5 million events or 10 minutes, and stays under 64 MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Bodies, CLIENTS, Server, client, engine, send};

const EVERY: Duration = Duration::from_secs(5);
const MIB: f64 = 1024.0 * 1024.0;

/// One sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    accepted: u64,
    processed: u64,
    serve_rss: u64,
    worker_rss: u64,
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

/// Resident memory of a process now (VmRSS), bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub async fn run(setup: &super::support::Bench, length: Duration, warmup: Duration) {
    let dir = setup.dir.path();
    let serve = Server::spawn(engine(&["serve", "--no-worker"], setup, dir));
    let worker = Server::spawn_worker(engine(&["worker"], setup, dir));
    let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", serve.port);
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
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{}:{{q:vapi}}:stream", setup.prefix);
    println!(
        "soak: engine serve --no-worker and engine worker, {CLIENTS} connections at saturation, {:.0} s warm-up then {:.0} s",
        warmup.as_secs_f64(),
        length.as_secs_f64()
    );
    println!("| t (s) | accepted | processed | serve RSS (MiB) | worker RSS (MiB) |");
    println!("|---|---|---|---|---|");
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let secs = started.elapsed().as_secs_f64();
        let queued: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        let a = accepted.load(Ordering::Relaxed);
        let s = Sample {
            secs,
            accepted: a,
            processed: a.saturating_sub(queued),
            serve_rss: rss(serve.child.id()),
            worker_rss: rss(worker.child.id()),
        };
        samples.push(s);
        // every 30 s in the printed table; every sample in the plot
        if samples.len() % 6 == 1 {
            println!(
                "| {:.0} | {} | {} | {:.1} | {:.1} |",
                s.secs,
                s.accepted,
                s.processed,
                s.serve_rss as f64 / MIB,
                s.worker_rss as f64 / MIB
            );
        }
        if secs >= (warmup + length).as_secs_f64() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    serve.stop();
    worker.stop();

    let base = samples
        .iter()
        .find(|s| s.secs >= warmup.as_secs_f64())
        .copied()
        .unwrap_or(samples[0]);
    let last = *samples.last().unwrap();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.secs >= base.secs).collect();
    let max = |f: fn(&Sample) -> u64| after.iter().map(|s| f(s)).max().unwrap_or(0) as f64 / MIB;
    // one process's line: events after the warm-up, RSS then and at the end, growth, maximum
    let line = |name: &str, events: u64, rss: fn(&Sample) -> u64| {
        let growth = (rss(&last) as f64 - rss(&base) as f64) / MIB;
        format!(
            "{name} {events} events, RSS {:.1} -> {:.1} MiB ({growth:+.1} MiB, {:+.1} bytes/event), max {:.1} MiB",
            rss(&base) as f64 / MIB,
            rss(&last) as f64 / MIB,
            growth * MIB / events.max(1) as f64,
            max(rss),
        )
    };
    println!(
        "soak after warm-up ({:.0} s): {}; {}; {} errors",
        last.secs - base.secs,
        line("engine serve", last.accepted - base.accepted, |s| s
            .serve_rss),
        line("engine worker", last.processed - base.processed, |s| s
            .worker_rss),
        errors.load(Ordering::Relaxed)
    );
    // RSS moves by a few MiB with the batch in flight at the moment of a sample, so growth is
    // also measured between the means of the first and the last minute after the warm-up.
    let minute_mean = |from: f64, to: f64, f: fn(&Sample) -> u64| {
        let window: Vec<f64> = after
            .iter()
            .filter(|s| s.secs >= from && s.secs <= to)
            .map(|s| f(s) as f64 / MIB)
            .collect();
        window.iter().sum::<f64>() / window.len().max(1) as f64
    };
    let trend = |f: fn(&Sample) -> u64| {
        minute_mean(last.secs - 60.0, last.secs, f) - minute_mean(base.secs, base.secs + 60.0, f)
    };
    let (serve_trend, worker_trend) = (trend(|s| s.serve_rss), trend(|s| s.worker_rss));
    println!(
        "growth between the first and the last minute's mean RSS: engine serve {serve_trend:+.1} MiB, engine worker {worker_trend:+.1} MiB"
    );
    let met = serve_trend < 5.0
        && worker_trend < 5.0
        && max(|s| s.serve_rss) < 64.0
        && max(|s| s.worker_rss) < 64.0;
    println!(
        "target (< 5 MiB growth each, by the minute means; < 64 MiB throughout): {}",
        if met { "met" } else { "MISSED" }
    );
    plot(&samples, base.secs);
}

/// RSS against events handled, both processes, with the end of the warm-up marked.
fn plot(samples: &[Sample], warm: f64) {
    use plotters::prelude::*;
    if !super::labels_font("soak plot") {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks-soak.png");
    let root = BitMapBackend::new(&path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let events =
        |s: &Sample, worker: bool| (if worker { s.processed } else { s.accepted }) as f64 / 1e6;
    let x_max = samples
        .iter()
        .map(|s| events(s, false).max(events(s, true)))
        .fold(0.1, f64::max);
    let y_max = samples
        .iter()
        .map(|s| s.serve_rss.max(s.worker_rss) as f64 / MIB)
        .fold(0.0, f64::max)
        .max(64.0)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "RSS under sustained load (engine serve --no-worker, engine worker)",
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
    for (worker, color, label) in [
        (false, BLUE, "engine serve --no-worker (accepted)"),
        (true, GREEN, "engine worker (processed)"),
    ] {
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| {
                    (
                        events(s, worker),
                        (if worker { s.worker_rss } else { s.serve_rss }) as f64 / MIB,
                    )
                }),
                color.stroke_width(2),
            ))
            .unwrap()
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        if let Some(w) = samples.iter().find(|s| s.secs >= warm) {
            let x = events(w, worker);
            let y = (if worker { w.worker_rss } else { w.serve_rss }) as f64 / MIB;
            chart
                .draw_series([Circle::new((x, y), 5, color.filled())])
                .unwrap();
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
