//! Overload: producers offering about twice what the workers can drain, for 60 s. The drain is
//! made slow and steady on purpose — the Vapi queue drained one event at a time by one worker,
//! its Postgres link 20 ms late per chunk through the test's proxy — so the offered rate is a
//! known multiple of it on any machine (the ratio is measured, not assumed). Held: every request
//! is answered 2xx within the budget however long the backlog, the backlog shows in `/metrics`
//! and on the console's Queues page while it grows, it drains once the producers stop, and every
//! 2xx'd event is written exactly once.

use crate::common;
use crate::network::{Answer, exactly_once, unlimited};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::EngineProcess;
use common::proxy::{Mode, Proxy};
use common::{free_port, fresh_schema, pg, sql_count};

const TOKEN: &str = "4c1f9e2b7a6d5c3e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";

/// `rate` requests a second for `length`, each sent on time whatever the answers before it.
async fn offered(port: u16, rate: u32, length: Duration) -> Vec<Answer> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0;
    while start.elapsed() < length {
        tick.tick().await;
        n += 1;
        let (client, answers) = (client.clone(), answers.clone());
        tasks.spawn(async move {
            let answer = Answer::of(&client, port, n, start).await;
            answers.lock().unwrap().push(answer);
        });
    }
    tasks.join_all().await;
    answers.lock().unwrap().clone()
}

/// The Vapi queue's depth as `/metrics` shows it.
async fn depth_in_metrics(port: u16) -> u64 {
    let metrics = common::metrics_of(port).await;
    metrics
        .lines()
        .find(|l| l.starts_with("engine_queue_depth{") && l.contains("queue=\"vapi\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// The Vapi queue's depth on the console's Queues page (signed in with [`TOKEN`]).
async fn depth_on_console(port: u16) -> u64 {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(format!("http://127.0.0.1:{port}/console/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = client
        .get(format!("http://127.0.0.1:{port}/console/queues"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // the row of queue `vapi`: its first numeric cell is the depth
    let row = page
        .split("<code>vapi</code>")
        .nth(1)
        .expect("the Queues page lists vapi");
    let cell = row.split("<td class=\"n\">").nth(1).unwrap();
    cell[..cell.find('<').unwrap()].trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_drain_rate_for_a_minute_is_answered_in_time_shown_and_drained_after() {
    let (database, schema) = fresh_schema().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let through_proxy = database.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let (d, _) = unlimited("overload");
    d.edit("vapi.yaml", |s| {
        s.replace(
            "  lease: 2s\n",
            "  lease: 60s\n  concurrency: 1\n  batch_size: 1\n",
        )
    });
    let port = free_port();
    let env = vec![
        ("PORT".to_string(), port.to_string()),
        ("REDIS_URL".to_string(), common::redis().to_string()),
        ("DATABASE_URL".to_string(), through_proxy),
        ("CONSOLE_TOKEN".to_string(), TOKEN.to_string()),
    ];
    let _engine = EngineProcess::start(&d, &["serve"], &env);
    proxy.set(Mode::Delay(Duration::from_millis(20)));
    let db = pg(&schema).await;
    let rows = || async { sql_count(&db, "SELECT count(*) FROM call_status").await };

    let (rate, length) = (22, Duration::from_secs(60));
    let start = Instant::now();
    let producers = tokio::spawn(offered(port, rate, length));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rows_at_10, at_10) = (rows().await, start.elapsed());
    tokio::time::sleep_until((start + Duration::from_secs(55)).into()).await;
    let (rows_at_55, at_55) = (rows().await, start.elapsed());
    let (metrics_depth, console_depth) =
        (depth_in_metrics(port).await, depth_on_console(port).await);
    let answers = producers.await.unwrap();
    let ended = start.elapsed();

    let drain = (rows_at_55 - rows_at_10) as f64 / (at_55 - at_10).as_secs_f64();
    let offered_rate = answers.len() as f64 / length.as_secs_f64();
    println!(
        "offered {offered_rate:.1}/s, drained {drain:.1}/s ({:.1}x); depth at 55 s: /metrics {metrics_depth}, console {console_depth}",
        offered_rate / drain
    );
    assert!(
        offered_rate >= 1.6 * drain,
        "the test offers about twice the drain: {offered_rate:.1}/s against {drain:.1}/s"
    );
    // every request answered 2xx within the budget, however long the backlog
    let late: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != 200 || a.took > Duration::from_secs(2))
        .collect();
    assert!(
        late.is_empty(),
        "{} of {}: {late:#?}",
        late.len(),
        answers.len()
    );
    let mut took: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    took.sort();
    println!(
        "answer times: p50 {:?}, p99 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
    // the backlog shows: what was offered and not drained by 55 s, a few seconds' worth off
    let backlog = (offered_rate * 55.0 - rows_at_55 as f64).max(0.0) as u64;
    assert!(
        metrics_depth >= backlog / 2 && console_depth >= backlog / 2,
        "backlog ~{backlog}: /metrics {metrics_depth}, console {console_depth}"
    );
    // drained after, at the same drain rate
    let deadline = Instant::now() + Duration::from_secs(240);
    while rows().await < answers.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain: {} of {} rows",
            rows().await,
            answers.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "drained {:.0} s after the producers stopped",
        (start.elapsed() - ended).as_secs_f64()
    );
    exactly_once(
        &schema,
        &answers,
        "offered about twice the drain rate for 60 s (the Vapi queue drained one event at a time through a slowed Postgres link)",
    )
    .await;
    // the gauges are sampled every few seconds
    let deadline = Instant::now() + Duration::from_secs(20);
    while depth_in_metrics(port).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the gauge never showed the drained queue"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
