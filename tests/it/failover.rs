//! A Redis Cluster failover as an operator sees it: what the log says (once per queue, named as
//! a failover, its end said once), what `/ready` and clients see, and that the workers' outcomes
//! are recorded when it is over rather than left for the lease. Real processes: private clusters
//! (`common::PrivateCluster`), `engine serve` / `engine worker` with their logs kept, traffic and
//! readiness from `network`.

use crate::common;
use crate::network::{exactly_once, readiness_named, traffic, unlimited};

use std::time::{Duration, Instant};

use common::process::EngineProcess;
use common::proxy::{Mode, Proxy};
use common::{PrivateCluster, free_port, fresh_schema};

/// `XPENDING`'s count of the Vapi queue's entries delivered and not yet recorded, read from
/// the node at `url` (`None` while it does not answer).
async fn pending_on(url: &str, stream: &str) -> Option<i64> {
    let client = redis::Client::open(url).ok()?;
    let mut c = client.get_multiplexed_async_connection().await.ok()?;
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(engine::queue::redis::GROUP)
        .query_async(&mut c)
        .await
        .ok()?;
    match summary {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => Some(*n),
            _ => None,
        },
        _ => None,
    }
}

/// A Redis Cluster failover as an operator sees it. The master holding the Vapi queue is
/// killed while the workers are mid-batch (their Postgres writes slowed to seconds by a proxy),
/// and restarted 10 s later (AOF on); an `engine worker` starts while it is down. The log says
/// the outage once per queue and side (no flapping while other queues' masters serve, no line
/// per request), the workers' acks that failed meanwhile are recorded once the node answers
/// (not left pending for the 60 s lease and then taken over as a dead consumer's), the late
/// worker says when its consumer group is made at last, and every 2xx'd event is written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_is_logged_once_and_acks_are_recorded_when_it_is_over() {
    let (database, schema) = fresh_schema().await;
    let pg_proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let through_proxy = database.replace("127.0.0.1:5432", &pg_proxy.addr.to_string());
    let mut cluster = PrivateCluster::start();
    let (d, prefix) = unlimited("failover");
    // the default lease: entries left pending would wait a minute for the reaper
    d.edit("vapi.yaml", |s| {
        s.replace("  lease: 2s\n", "  lease: 60s\n")
    });
    let stream = format!("{prefix}:{{q:vapi}}:stream");
    let owner = |key: &str| match engine::redis_conn::slot(key) {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    };
    assert!(
        ["twilio-sms", "twilio-voice"]
            .iter()
            .any(|q| owner(&format!("{prefix}:{{q:{q}}}:stream")) != owner(&stream)),
        "another queue is served by a live master meanwhile"
    );
    let node_url = cluster.owner_of(&stream).url();
    let port = free_port();
    let cluster_url = cluster.url();
    let env = |port: u16| {
        vec![
            ("PORT".to_string(), port.to_string()),
            ("REDIS_URL".to_string(), cluster_url.clone()),
            ("DATABASE_URL".to_string(), through_proxy.clone()),
        ]
    };
    let serve = EngineProcess::start(&d, &["serve"], &env(port));
    let start = Instant::now();
    let traffic = tokio::spawn(traffic(port, 2, Duration::from_secs(24), start));
    // workers mid-batch: entries delivered, their writes taking seconds
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg_proxy.set(Mode::Delay(Duration::from_millis(700)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending_on(&node_url, &stream).await.unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no entry ever pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.owner_of(&stream).kill();
    let killed = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = EngineProcess::start(&d, &["worker"], &env(free_port()));
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.owner_of(&stream).restart();
    let back = start.elapsed();
    cluster.wait_ok();
    let answers = traffic.await.unwrap();
    pg_proxy.set(Mode::Pass);

    // nothing left pending for the lease: what was delivered before the kill was recorded
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending = pending_on(&node_url, &stream).await;
        if pending == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "entries still pending 20 s after the traffic ({pending:?}): left for the lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    exactly_once(
        &schema,
        &answers,
        "Redis Cluster: the queue's master killed mid-batch, restarted 10 s later",
    )
    .await;
    assert!(
        answers
            .iter()
            .any(|a| a.sent > killed && a.sent + a.took < back && a.status == 503),
        "requests during the outage answered 503"
    );

    let log = serve.log();
    let error = |l: &&String| l.contains("ERROR");
    let is_error = |l: &String| l.contains("ERROR");
    for dependency in ["redis_enqueue", "redis"] {
        let ours: Vec<&String> = log
            .iter()
            .filter(|l| l.contains(&format!("{dependency} for queue `vapi`")))
            .collect();
        let ended = ours
            .iter()
            .filter(|l| l.contains("reachable again") || l.contains("failover over"))
            .count();
        let started = ours.iter().filter(|l| is_error(l)).count();
        assert!(
            ended <= 1 && started <= 2 && started >= ended,
            "{dependency}: one outage, said once and ended once:\n{ours:#?}"
        );
    }
    assert!(
        log.iter()
            .filter(error)
            .any(|l| l.contains("redis_enqueue for queue `vapi`")),
        "the request path's outage was said: {log:#?}"
    );
    let errors = log.iter().filter(error).count();
    assert!(errors <= 8, "not a line per request: {log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("recorded the outcome once Redis answered again")),
        "an ack failed during the outage and was retried: {log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("took over an entry")),
        "no live consumer taken for a dead one: {log:#?}"
    );
    let late = late.log();
    let about_vapi = |what: &str| {
        late.iter()
            .filter(|l| l.contains(what) && l.contains("vapi"))
            .count()
    };
    assert_eq!(
        about_vapi("cannot create the consumer group"),
        1,
        "said once per queue, not per worker: {late:#?}"
    );
    assert!(
        about_vapi("created the consumer group at last") == 1,
        "the worker started during the outage says when its group is made: {late:#?}"
    );
}

/// Lines of `log` about `dependency`'s outage of the Vapi queue.
fn about_vapi<'a>(log: &'a [String], dependency: &str) -> Vec<&'a String> {
    let key = format!("{dependency} for queue `vapi`");
    log.iter().filter(|l| l.contains(&key)).collect()
}

/// The whole cycle on a cluster with a replica per master, the Vapi queue with
/// `durability: replicated`: its master killed (`kill -9`, not restarted) under traffic, its
/// replica promoted after the node timeout, then the old master restarted, rejoining as the new
/// master's replica. No event is answered 2xx unless two nodes have it: 503 while the master is
/// gone and while the promoted node has no replica, 2xx again once the old node replicates it.
/// The log tells that story in a few lines (failing over, not replicated, replicated again),
/// `/ready` says 503 during the failover, and every 2xx'd event is written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_and_replicated_durability_acknowledges_only_what_two_nodes_have() {
    let (database, schema) = fresh_schema().await;
    let mut cluster = PrivateCluster::with_replicas();
    let (d, prefix) = unlimited("replica-failover");
    d.edit("vapi.yaml", |s| {
        s.replace("  lease: 2s\n", "  lease: 60s\n  durability: replicated\n")
    });
    let stream = format!("{prefix}:{{q:vapi}}:stream");
    let port = free_port();
    let env = vec![
        ("PORT".to_string(), port.to_string()),
        ("REDIS_URL".to_string(), cluster.url()),
        ("DATABASE_URL".to_string(), database.clone()),
    ];
    let serve = EngineProcess::start(&d, &["serve"], &env);
    let start = Instant::now();
    let (kill, restart) = (Duration::from_secs(3), Duration::from_secs(13));
    let length = Duration::from_secs(24);
    let (answers, ready) = {
        let traffic = traffic(port, 4, length, start);
        let ready = readiness_named(port, length, start);
        let node = cluster.owner_of(&stream);
        let switch = async {
            tokio::time::sleep_until((start + kill).into()).await;
            node.kill();
            tokio::time::sleep_until((start + restart).into()).await;
            node.restart();
        };
        let (answers, ready, ()) = tokio::join!(traffic, ready, switch);
        (answers, ready)
    };

    // nothing acknowledged that only one node had: 503 from the kill until the old node
    // replicates the new master
    let early: Vec<_> = answers
        .iter()
        .filter(|a| a.sent > kill + Duration::from_millis(100) && a.sent < restart)
        .collect();
    assert!(early.len() >= 8, "{answers:#?}");
    for a in &early {
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.retry_after.as_deref(), Some("5"), "{a:?}");
        assert!(a.took < Duration::from_millis(3500), "{a:?}");
    }
    assert!(
        answers
            .iter()
            .any(|a| a.sent > restart + Duration::from_secs(4) && a.status == 200),
        "2xx again once the restarted node replicates: {:#?}",
        answers.iter().rev().take(5).collect::<Vec<_>>()
    );
    assert!(
        ready
            .iter()
            .any(|(at, status, _)| *at > kill && *at < restart && *status == 503),
        "{ready:#?}"
    );
    assert_eq!(ready.last().map(|r| r.1), Some(200), "{ready:#?}");
    exactly_once(
        &schema,
        &answers,
        "Redis Cluster with replicas, `durability: replicated`: the Vapi queue's master killed, its replica promoted, the old master back as a replica 10 s later",
    )
    .await;

    let log = serve.log();
    let enqueue = about_vapi(&log, "redis_enqueue");
    let said: Vec<&&String> = enqueue.iter().filter(|l| l.contains("ERROR")).collect();
    assert!(
        (1..=3).contains(&said.len()) && said.iter().any(|l| l.contains("is not replicated")),
        "gone / failing over / not replicated, each said once: {enqueue:#?}"
    );
    let ended = enqueue
        .iter()
        .filter(|l| {
            l.contains("replicated again")
                || l.contains("reachable again")
                || l.contains("failover over")
        })
        .count();
    assert_eq!(ended, 1, "its end said once: {enqueue:#?}");
    let worker = about_vapi(&log, "redis");
    assert!(
        worker
            .iter()
            .filter(|l| l.contains("reachable again") || l.contains("failover over"))
            .count()
            <= 1,
        "{worker:#?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("took over an entry")),
        "no live consumer taken for a dead one: {log:#?}"
    );
    // `/ready` was asked every 250 ms: its lines are the changes, not the probes
    let not_ready = log.iter().filter(|l| l.contains("not ready")).count();
    assert!(
        (1..=4).contains(&not_ready) && log.iter().any(|l| l.contains("ready again")),
        "{not_ready} `not ready` lines for {} probes",
        ready.len()
    );
}
