//! The default run (`cargo bench --bench load`, and `--saturation` / `--pace`): the bare-server
//! ceiling, ingest at saturation and at fixed offered rates, the drain, end to end, boot and
//! validate times; prints every figure and draws docs/benchmarks-latency.png.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::pace::with_workers;
use crate::redis_floor::redis_group_size;

/// Requests at `rate` for `secs` through the engine with workers: request sent -> row committed.
async fn end_to_end(
    pg: &tokio_postgres::Client,
    setup: &Setup,
    url: &str,
    seed: u64,
    rate: f64,
    secs: f64,
) {
    let e2e_bodies = Arc::new(Bodies::new(std::process::id() as u64 + seed));
    let wall = std::time::SystemTime::now();
    let anchor = Instant::now();
    let (r, sent) = offer(url, e2e_bodies, rate, secs).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = pg
        .query(
            &format!(
                "SELECT call_id::text, extract(epoch from created_at)::float8 FROM {}.call_logs WHERE call_id::text = ANY($1)",
                setup.schema
            ),
            &[&sent.iter().map(|(id, _)| id.clone()).collect::<Vec<String>>()],
        )
        .await
        .unwrap();
    let committed: std::collections::HashMap<String, f64> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let wall0 = wall
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut e2e: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, due)| {
            let at = committed.get(id)?;
            let sent_at = wall0 + due.duration_since(anchor).as_secs_f64();
            Some(Duration::from_secs_f64((at - sent_at).max(0.0)))
        })
        .collect();
    e2e.sort();
    println!(
        "end to end at {rate:.0} req/s (request sent -> row committed): {} of {} rows, p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms (answers p99 {:.2} ms)",
        e2e.len(),
        sent.len(),
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.95),
        percentile(&e2e, 0.99),
        r.p99
    );
}

pub async fn run(quick: bool, saturation_only: bool, pace: bool) {
    let Some(setup) = support::setup("load").await else {
        eprintln!("no Postgres at 127.0.0.1:5432: skipping");
        return;
    };
    let secs = if quick { 1.0 } else { 5.0 };
    if std::env::var("LOAD_STATIC_RESPOND").is_ok() {
        // what the Vapi respond script costs: the same pipeline answering statically
        let path = setup.dir.path().join("vapi.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("respond:\n").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        let fixed = "respond:\n  status: 200\n  content_type: application/json\n  body: '{\"received\":true}'";
        std::fs::write(&path, format!("{}{fixed}{}", &text[..start], &text[end..])).unwrap();
        println!("(the Vapi pipeline answers statically: LOAD_STATIC_RESPOND)");
    }
    let pg = &setup.pg;
    println!(
        "load benchmark: {} (generator, server, Redis and Postgres on the same cores)",
        cpu()
    );

    // 1. the ceiling
    let bare = Server::spawn(bare_command());
    let bare_url = format!("http://127.0.0.1:{}/", bare.port);
    // the same 2 KiB bodies, so the ratio compares the engine's work, not the transfer
    let warm = Arc::new(Bodies::new(0));
    let _ = saturate(&bare_url, Some(warm.clone()), 1.0).await;
    let ceiling = saturate(&bare_url, Some(warm), secs).await;
    bare.stop();
    println!(
        "ceiling (bare salvo, {CLIENTS} connections): {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        ceiling.achieved, ceiling.p50, ceiling.p99
    );

    if saturation_only {
        // three rounds of ingest then ceiling: a change is compared on the spread, not one number
        for round in 1..=3 {
            let server = Server::spawn(engine(&["serve", "--no-worker"], &setup, setup.dir.path()));
            let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", server.port);
            let bodies = Arc::new(Bodies::new(std::process::id() as u64 * 10 + round));
            let _ = saturate(&url, Some(bodies.clone()), 1.0).await;
            let start = Cost::start(&server).await;
            let sat = saturate(&url, Some(bodies), secs).await;
            let cost = Cost::since(&server, start, sat.count as f64).await;
            let group = redis_group_size(server.port).await;
            server.stop();
            let bare = Server::spawn(bare_command());
            let bare_url = format!("http://127.0.0.1:{}/", bare.port);
            let start = Cost::start(&bare).await;
            let ceiling = saturate(&bare_url, Some(Arc::new(Bodies::new(0))), secs).await;
            let bare_cost = Cost::since(&bare, start, ceiling.count as f64).await;
            bare.stop();
            println!(
                "round {round}: ingest {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms, {} errors; CPU per request: engine {:.0} µs, Redis {:.0} µs, generator {:.0} µs; {:.1} Redis ops per call), ceiling {:.0} req/s (bare server {:.0} µs, generator {:.0} µs): {:.1}%; engine + Redis = {:.1}× the bare server's CPU",
                sat.achieved,
                sat.p50,
                sat.p99,
                sat.errors,
                cost.server_us,
                cost.redis_us,
                cost.generator_us,
                group,
                ceiling.achieved,
                bare_cost.server_us,
                bare_cost.generator_us,
                100.0 * sat.achieved / ceiling.achieved,
                (cost.server_us + cost.redis_us) / bare_cost.server_us
            );
            if pace {
                with_workers(&setup, round, secs, sat.achieved).await;
            }
        }
        setup.cleanup().await;
        return;
    }

    // 2. ingest
    let server = Server::spawn(engine(&["serve", "--no-worker"], &setup, setup.dir.path()));
    let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", server.port);
    let bodies = Arc::new(Bodies::new(std::process::id() as u64));
    let _ = saturate(&url, Some(bodies.clone()), 1.0).await;
    let sat = saturate(&url, Some(bodies.clone()), secs).await;
    println!(
        "ingest at saturation ({CLIENTS} connections): {:.0} req/s ({:.0}% of the ceiling), p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, {} errors",
        sat.achieved,
        100.0 * sat.achieved / ceiling.achieved,
        sat.p50,
        sat.p95,
        sat.p99,
        sat.errors
    );
    let mut curve = Vec::new();
    for fraction in [0.1, 0.25, 0.5, 0.75, 0.9] {
        let rate = (sat.achieved * fraction).max(50.0);
        let (r, _) = offer(&url, bodies.clone(), rate, secs).await;
        println!(
            "ingest at {:>3.0}% ({:>6.0} req/s offered): achieved {:>6.0}, p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, {} errors",
            fraction * 100.0,
            rate,
            r.achieved,
            r.p50,
            r.p95,
            r.p99,
            r.errors
        );
        curve.push(r);
    }
    // The harness's own share of those latencies: the same open-loop generator at the half
    // rate against the bare server (timer granularity, the generator's own scheduling).
    let bare = Server::spawn(bare_command());
    let half = (sat.achieved * 0.5).max(50.0);
    let (floor, _) = offer(
        &format!("http://127.0.0.1:{}/", bare.port),
        // bodies of their own: `bodies` counts what the engine queued, for the drain
        Arc::new(Bodies::new(1)),
        half,
        secs,
    )
    .await;
    bare.stop();
    println!(
        "generator floor (bare salvo at {half:.0} req/s offered): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        floor.p50, floor.p95, floor.p99
    );
    let rss = server.peak_rss();
    println!(
        "peak RSS of engine serve under load: {:.1} MiB",
        rss as f64 / 1048576.0
    );
    let ingest_boot = server.booted;
    server.stop();

    // 3. drain
    let queued = bodies.next.load(Ordering::Relaxed) as i64;
    let before = count(pg, &setup.schema).await;
    let started = Instant::now();
    let worker = Server::spawn_worker(engine(&["worker"], &setup, setup.dir.path()));
    // Done when the stream is empty: a worker deletes an entry only after its row is committed.
    // Watching the stream (O(1) in Redis) rather than counting rows: a count(*) of a table of
    // 200,000 rows twenty times a second took Postgres time from the very writes it measured.
    let stream = format!("{}:{{q:vapi}}:stream", setup.prefix);
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let depth: i64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap_or(-1);
        if depth == 0 || started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    let drain_secs = started.elapsed().as_secs_f64();
    let drained = count(pg, &setup.schema).await - before;
    let worker_rss = worker.peak_rss();
    worker.stop();
    println!(
        "drain: {drained} of {queued} events into Postgres in {drain_secs:.2} s: {:.0} events/s (worker peak RSS {:.1} MiB)",
        drained as f64 / drain_secs,
        worker_rss as f64 / 1048576.0
    );

    // 4. end to end, with workers, at a steady rate, then nearly idle
    let server = Server::spawn(engine(&["serve"], &setup, setup.dir.path()));
    let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", server.port);
    for (seed, rate) in [(1, (sat.achieved * 0.25).max(50.0)), (2, 20.0)] {
        end_to_end(pg, &setup, &url, seed, rate, secs).await;
    }
    server.stop();

    // 5. start-up and validate with 50 pipelines
    // the shipped set plus 46 more copies of the Vapi pipeline on their own routes
    let fifty = crate::with_copies(setup.dir.path(), "vapi", "/api/webhooks/vapi", 46);
    let mut boots = Vec::new();
    for _ in 0..5 {
        let s = Server::spawn(engine(&["serve", "--no-worker"], &setup, fifty.path()));
        boots.push(s.booted);
        s.stop();
    }
    boots.sort();
    let mut validates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = engine(&["validate"], &setup, fifty.path())
            .output()
            .unwrap();
        validates.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    validates.sort();
    println!(
        "boot (spawn -> listening, median of 5): shipped pipelines {:.0} ms, 50 pipelines {:.0} ms; engine validate with 50 pipelines: {:.0} ms",
        ingest_boot.as_secs_f64() * 1e3,
        boots[2].as_secs_f64() * 1e3,
        validates[2].as_secs_f64() * 1e3
    );

    crate::plot::plot(&curve, &sat, &ceiling);
    setup.cleanup().await;
}
