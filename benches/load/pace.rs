//! `-- --pace`: ingest at saturation with an `engine worker` process writing Postgres beside it:
//! whether the worker keeps pace, and the CPU each event costs it.

use std::sync::Arc;

use super::*;

/// Ingest at saturation with an `engine worker` process writing Postgres beside it: requests/s
/// against `ingest_only`, whether the worker kept pace (rows written during the run against
/// requests accepted, the backlog's growth), and the CPU each event cost the worker.
pub async fn with_workers(setup: &Setup, round: u64, secs: f64, ingest_only: f64) {
    let stream = format!("{}:{{q:vapi}}:stream", setup.prefix);
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    // the ingest-only round's events are not this run's work: without them the worker sees only
    // what arrives while it runs (the consumer group stays)
    let _: i64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap_or(0);
    let mut xlen = async || -> i64 {
        redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap_or(-1)
    };
    let server = Server::spawn(engine(&["serve", "--no-worker"], setup, setup.dir.path()));
    let worker = Server::spawn_worker(engine(&["worker"], setup, setup.dir.path()));
    let url = format!("http://127.0.0.1:{}/api/webhooks/vapi", server.port);
    let bodies = Arc::new(Bodies::new(std::process::id() as u64 * 10 + 100 + round));
    let _ = saturate(&url, Some(bodies.clone()), 1.0).await;
    let (depth0, rows0) = (xlen().await, count(&setup.pg, &setup.schema).await);
    let start = Cost::start(&server).await;
    let worker0 = worker.cpu_secs();
    let sat = saturate(&url, Some(bodies), secs).await;
    let cost = Cost::since(&server, start, sat.count as f64).await;
    let worker_secs = worker.cpu_secs() - worker0;
    let (depth1, rows1) = (xlen().await, count(&setup.pg, &setup.schema).await);
    server.stop();
    worker.stop();
    let rows = (rows1 - rows0).max(1);
    println!(
        "  with a worker: ingest {:.0} req/s ({:.0}% of ingest only; p99 {:.2} ms), {} rows written for {} requests ({:.0}%), backlog {:+}; CPU per event: worker {:.0} µs; per request: ingest {:.0} µs, Redis {:.0} µs",
        sat.achieved,
        100.0 * sat.achieved / ingest_only,
        sat.p99,
        rows,
        sat.count,
        100.0 * rows as f64 / sat.count.max(1) as f64,
        depth1 - depth0,
        worker_secs * 1e6 / rows as f64,
        cost.server_us,
        cost.redis_us,
    );
}
