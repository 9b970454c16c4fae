//! `cargo bench --bench load -- --archive [--quick]`: the event archive's search and replay.
//!
//! ```text
//! search   10 M archived events (--quick: 1 M) of `vapi` over the last 7 days, made in SQL
//!          (each its own call id, one of 100 orgs, small requests: a search reads the index
//!          and the fields, not bodies); then `engine events list --where call_id=X` for ten
//!          ids spread over the days: the command's wall time (process start, pipelines
//!          loaded, query) and the query's own, EXPLAIN ANALYZE
//! replay   50,000 2 KiB end-of-call reports (--quick: 10,000) archived as dropped; then
//!          `engine events replay --rate 1000000`: events/s until every row is in call_logs
//! ```

use std::process::Stdio;
use std::time::Instant;

use super::{Bodies, Setup, engine};

pub async fn run(setup: &Setup, quick: bool) {
    search(setup, if quick { 1_000_000 } else { 10_000_000 }).await;
    replay(setup, if quick { 10_000 } else { 50_000 }).await;
}

async fn search(setup: &Setup, events: i64) {
    let pg = &setup.pg;
    pg.batch_execute(&format!("SET search_path TO {}", setup.schema))
        .await
        .unwrap();
    // the days' partitions, as `engine serve` makes them, and the 6 days before
    let pool = engine::db::pool(&setup.database, 2).unwrap();
    let store = engine::archive::Store::new(Some(&pool), &Default::default());
    let engine::archive::Store::Postgres(s) = &store else {
        unreachable!()
    };
    let today = chrono::Utc::now().date_naive();
    s.ensure_days(today - chrono::Days::new(7), today + chrono::Days::new(1))
        .await
        .unwrap();
    let started = Instant::now();
    let span_ms = 7 * 86_400_000i64;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let chunk = 1_000_000i64;
    let mut from = 0;
    while from < events {
        let to = (from + chunk).min(events);
        pg.execute(
            "INSERT INTO engine_events (received_at, pipeline, event_id, fields, meta, body, outcome, attempts, story) \
             SELECT to_timestamp(($3::int8 - $4::int8 + (i * $4::int8 / $5::int8))::float8 / 1000), 'vapi', \
                    'ev-' || i, \
                    jsonb_build_object('call_id', 'call-' || i, 'org_id', 'org-' || (i % 100), 'type', 'end-of-call-report'), \
                    '{}', '\\x7b7d'::bytea, 'written', 1, \
                    '[{\"at_ms\":0,\"attempt\":1,\"outcome\":\"written\",\"sink\":\"call_logs\",\"rows\":1}]' \
             FROM generate_series($1::int8, $2::int8 - 1) AS i",
            &[&from, &to, &now_ms, &span_ms, &events],
        )
        .await
        .unwrap();
        from = to;
    }
    pg.batch_execute("ANALYZE engine_events").await.unwrap();
    println!(
        "search: {events} events archived in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut walls = Vec::new();
    let mut queries = Vec::new();
    for k in 0..10 {
        let i = events / 10 * k + 7;
        let id = format!("call-{i}");
        let t = Instant::now();
        let out = engine(
            &[
                "events",
                "list",
                "--pipeline",
                "vapi",
                "--where",
                &format!("call_id={id}"),
                "--json",
            ],
            setup,
            setup.dir.path(),
        )
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
        walls.push(t.elapsed().as_secs_f64() * 1e3);
        let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
        let plan = pg
            .query(
                "EXPLAIN (ANALYZE, FORMAT JSON) WITH m AS MATERIALIZED (SELECT event_id, received_at FROM engine_events \
                 WHERE pipeline = 'vapi' AND fields @> $1::jsonb) \
                 SELECT event_id FROM m ORDER BY received_at DESC, event_id DESC LIMIT 50",
                &[&serde_json::json!({"call_id": id})],
            )
            .await
            .unwrap();
        let plan: serde_json::Value = plan[0].get(0);
        queries.push(plan[0]["Execution Time"].as_f64().unwrap_or_default());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "  engine events list --where call_id=X: wall {:.1} ms median ({:.1} worst), query {:.2} ms median ({:.2} worst)",
        median(&mut walls.clone()),
        worst(&walls),
        median(&mut queries.clone()),
        worst(&queries)
    );
    pg.batch_execute("TRUNCATE engine_events").await.unwrap();
}

async fn replay(setup: &Setup, events: usize) {
    let pg = &setup.pg;
    let pool = engine::db::pool(&setup.database, 2).unwrap();
    let store = std::sync::Arc::new(engine::archive::Store::new(
        Some(&pool),
        &Default::default(),
    ));
    let index = [(
        "call_id".to_string(),
        engine::config::verify::KeySource::Json("/message/call/id".into()),
    )]
    .into();
    let recorder = engine::archive::Recorder::new(store.clone(), "vapi", &index, None);
    let bodies = Bodies::new(7);
    let now = chrono::Utc::now().timestamp_millis();
    for start in (0..events).step_by(1000) {
        let notes: Vec<_> = (start..(start + 1000).min(events))
            .map(|i| {
                let (body, _) = bodies.next();
                let e = engine::transform::EventInput {
                    id: format!("ev-{i}"),
                    pipeline: "vapi".into(),
                    received_at_ms: now - 3_600_000 + i as i64,
                    method: "POST".into(),
                    path: "/api/webhooks/vapi".into(),
                    query: String::new(),
                    headers: vec![("content-type".into(), "application/json".into())],
                    params: vec![],
                    tenant: None,
                    trace: None,
                    index: None,
                    body: body.into(),
                };
                recorder.note(
                    &e,
                    None,
                    engine::archive::Step::new(engine::archive::Outcome::Dropped, 1)
                        .reason("no step with a sink matched"),
                )
            })
            .collect();
        store.write(&notes).await.unwrap();
    }
    let t = Instant::now();
    let out = engine(
        &[
            "events",
            "replay",
            "--pipeline",
            "vapi",
            "--rate",
            "1000000",
            "--json",
        ],
        setup,
        setup.dir.path(),
    )
    .stderr(Stdio::inherit())
    .output()
    .unwrap();
    let took = t.elapsed().as_secs_f64();
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM call_logs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, events, "{job}");
    println!(
        "replay: {events} archived 2 KiB end-of-call reports -> call_logs in {took:.2} s: {:.0} events/s (written {})",
        events as f64 / took,
        job["counts"]["written"]
    );
}
