//! `cargo bench --bench load -- --dashboard`: the Grafana dashboard's main panels drawn from the
//! engine's own `/metrics` under a changing load, for docs/operations.md
//! (`docs/grafana/engine.png`) where no Grafana can be installed to render the real thing.
//!
//! ```text
//! engine serve (release, workers on, Redis + Postgres)
//!   <- generator: signed Vapi status updates at 150, 500, 300 requests/s, 20 s each, and a few
//!      forged ones (401) every second
//!   <- scraper: GET /metrics every 2 s -> per-interval rates, p99 from the histogram's buckets,
//!      gauges -> six panels, the same queries as the dashboard
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{SECRET, Server, client, engine};

/// One scrape: every sample line `name{labels} value`, keyed by the line's name and labels.
type Scrape = BTreeMap<String, f64>;

fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples whose key starts with `name` and holds every `labels` part.
fn sum(s: &Scrape, name: &str, labels: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| {
            k.starts_with(name)
                && (k.len() == name.len() || k[name.len()..].starts_with(['{', ' ']))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// p99 of a histogram between two scrapes, from its cumulative buckets, seconds.
fn p99(a: &Scrape, b: &Scrape, name: &str, labels: &[&str]) -> Option<f64> {
    let bucket = format!("{name}_bucket");
    let mut les: Vec<(f64, f64)> = b
        .iter()
        .filter(|(k, _)| k.starts_with(&bucket) && labels.iter().all(|l| k.contains(l)))
        .filter_map(|(k, v)| {
            let le = k.split("le=\"").nth(1)?.split('"').next()?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - a.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    les.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = les.last()?.1;
    if total <= 0.0 {
        return None;
    }
    les.iter()
        .find(|(_, c)| *c >= total * 0.99)
        .map(|(le, _)| if le.is_finite() { *le } else { 30.0 })
}

pub async fn run(setup: &super::support::Bench) {
    let server = Server::spawn(engine(&["serve"], setup, setup.dir.path()));
    let base = format!("http://127.0.0.1:{}", server.port);
    let scrapes = Arc::new(std::sync::Mutex::new(Vec::<(f64, Scrape)>::new()));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let scraper = {
        let (scrapes, done, url) = (scrapes.clone(), done.clone(), format!("{base}/metrics"));
        tokio::spawn(async move {
            let c = client();
            while !done.load(Ordering::Relaxed) {
                if let Ok(r) = c.get(&url).send().await
                    && let Ok(t) = r.text().await
                {
                    scrapes
                        .lock()
                        .unwrap()
                        .push((started.elapsed().as_secs_f64(), parse(&t)));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    let url = format!("{base}/api/webhooks/vapi");
    let c = client();
    let mut n = 0u64;
    for (rate, secs) in [(150.0, 20.0), (500.0, 20.0), (300.0, 20.0)] {
        let phase = Instant::now();
        let mut sent = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        while phase.elapsed().as_secs_f64() < secs {
            let due = phase + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            sent += 1;
            n += 1;
            let forged = n.is_multiple_of(100);
            let body = format!(
                r#"{{"message":{{"type":"status-update","status":"in-progress","timestamp":{},"call":{{"id":"00000000-0000-4000-8000-{n:012}","orgId":"00000000-0000-4000-9000-{:012}"}}}}}}"#,
                1_764_000_000_000u64 + n,
                n % 4
            );
            let (c, url) = (c.clone(), url.clone());
            tasks.spawn(async move {
                let token = if forged { "forged" } else { SECRET };
                let _ = c
                    .post(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
            });
            while tasks.len() > 256 {
                let _ = tasks.join_next().await;
            }
        }
        while tasks.join_next().await.is_some() {}
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    done.store(true, Ordering::Relaxed);
    let _ = scraper.await;
    server.stop();
    let scrapes = std::mem::take(&mut *scrapes.lock().unwrap());
    draw(&scrapes);
}

/// A panel's series: (label, points (seconds, value)).
type Series = Vec<(String, Vec<(f64, f64)>)>;

fn draw(scrapes: &[(f64, Scrape)]) {
    use plotters::prelude::*;
    if !super::labels_font("dashboard") {
        return;
    }
    // consecutive scrapes: (time, scrape) then the next
    let pairs: Vec<_> = scrapes.iter().zip(scrapes.iter().skip(1)).collect();
    let rate = |name: &str, labels: &[&str]| -> Vec<(f64, f64)> {
        pairs
            .iter()
            .map(|((ta, a), (tb, b))| {
                (
                    *tb,
                    (sum(b, name, labels) - sum(a, name, labels)) / (tb - ta),
                )
            })
            .collect()
    };
    let gauge = |name: &str| -> Vec<(f64, f64)> {
        scrapes
            .iter()
            .map(|(t, s)| (*t, sum(s, name, &[])))
            .collect()
    };
    let latency: Vec<(f64, f64)> = pairs
        .iter()
        .filter_map(|((_, a), (tb, b))| {
            Some((
                *tb,
                p99(
                    a,
                    b,
                    "engine_http_request_duration_seconds",
                    &["pipeline=\"vapi\""],
                )? * 1e3,
            ))
        })
        .collect();
    let panels: Vec<(&str, &str, Series)> = vec![
        (
            "Requests per second by pipeline",
            "req/s",
            vec![(
                "vapi".into(),
                rate("engine_http_requests_total", &["pipeline=\"vapi\""]),
            )],
        ),
        (
            "Latency p99 (bucket upper bound)",
            "ms",
            vec![("vapi".into(), latency)],
        ),
        (
            "Verification failures",
            "req/s",
            vec![(
                "vapi bad_token/signature".into(),
                rate("engine_verify_failures_total", &[]),
            )],
        ),
        (
            "Rows written and sink errors",
            "rows/s",
            vec![
                (
                    "call_status rows".into(),
                    rate("engine_sink_rows_total", &["sink=\"call_status\""]),
                ),
                ("sink errors".into(), rate("engine_sink_errors_total", &[])),
            ],
        ),
        (
            "Queue depth",
            "entries",
            vec![("vapi".into(), gauge("engine_queue_depth"))],
        ),
        (
            "Memory",
            "MiB",
            vec![(
                "resident".into(),
                gauge("process_resident_memory_bytes")
                    .into_iter()
                    .map(|(t, b)| (t, b / 1048576.0))
                    .collect(),
            )],
        ),
    ];
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana/engine.png");
    let root = BitMapBackend::new(&out, (1200, 760)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let (title, body) = root.split_vertically(40);
    title
        .draw_text(
            "engine dashboard panels from /metrics (150 -> 500 -> 300 req/s, 1 % forged)",
            &("sans-serif", 20).into_font().color(&BLACK),
            (12, 10),
        )
        .unwrap();
    let areas = body.split_evenly((3, 2));
    let max_t = scrapes.last().map_or(1.0, |s| s.0);
    for (area, (name, unit, series)) in areas.iter().zip(panels) {
        let max_y = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.1))
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..max_t, 0f64..max_y)
            .unwrap();
        chart
            .configure_mesh()
            .x_desc("s")
            .y_desc(unit)
            .label_style(("sans-serif", 11))
            .draw()
            .unwrap();
        for ((label, points), colour) in series.into_iter().zip([BLUE, RED, GREEN]) {
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .unwrap()
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .label_font(("sans-serif", 11))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .unwrap();
    }
    root.present().unwrap();
    println!("dashboard: {}", out.display());
}
