//! The replication window, closed by `queue.durability: replicated`. A private Redis master with
//! one replica that follows it through a TCP proxy the test controls: replication is delayed
//! (the link blackholed: bytes held, as for a replica partitioned away or far behind), an event is
//! sent, and the master is killed right after its answer (and the link reset: what it held is
//! gone with the master).
//! With `durability: local` the 2xx'd event is not on the replica that would be promoted (the
//! window the issue describes); with `replicated` the same request is answered 503 (no replica
//! confirmed it within the timeout), and once replication is prompt again an event answered 2xx
//! is on the replica before the master dies.

use crate::common;

use std::time::{Duration, Instant};

use common::process::EngineProcess;
use common::proxy::{Mode, Proxy};
use common::{Dir, PrivateRedis, free_port};

/// A master, and a replica that follows it through a proxy; returns once the replica is in sync.
async fn master_and_replica() -> (PrivateRedis, Proxy, PrivateRedis) {
    let master = PrivateRedis::start(false);
    let link = Proxy::start(format!("127.0.0.1:{}", master.port).parse().unwrap()).await;
    let replica = PrivateRedis::start_with(
        false,
        free_port(),
        vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            link.addr.port().to_string(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !info(&replica.url(), "replication")
        .await
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (master, link, replica)
}

async fn info(url: &str, section: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return String::new();
    };
    redis::cmd("INFO")
        .arg(section)
        .query_async::<String>(&mut c)
        .await
        .unwrap_or_default()
}

/// A stream entry as XRANGE answers it: its id and field-value pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// How many entries of `stream` on the node at `url` carry `call` in their body.
async fn stored_on(url: &str, stream: &str, call: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    entries
        .iter()
        .filter(|(_, fields)| {
            fields
                .iter()
                .any(|(k, v)| k == "b" && String::from_utf8_lossy(v).contains(call))
        })
        .count()
}

/// The shipped pipelines under a key prefix of their own, the Vapi queue with `durability`.
fn pipelines(durability: &str) -> (Dir, String) {
    let d = common::shipped_under_prefix("repl");
    let prefix = format!("repl{}", std::process::id());
    d.edit("vapi.yaml", |s| {
        let with = s.replacen(
            "queue:\n",
            &format!("queue:\n  durability: {durability}\n  replication: {{replicas: 1, timeout: 300ms}}\n"),
            1,
        );
        assert_ne!(with, s, "vapi.yaml has a queue section");
        with
    });
    (d, format!("{prefix}:{{q:vapi}}:stream"))
}

async fn send(port: u16, call: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/webhooks/vapi"))
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .header("content-type", "application/json")
        .body(crate::faults::status_update(call, 1))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// An ingest-only engine on `master`: events stay in the stream, where the test looks for them.
fn ingest(d: &Dir, master: &PrivateRedis) -> (EngineProcess, u16) {
    let port = free_port();
    let env = vec![
        ("PORT".to_string(), port.to_string()),
        ("REDIS_URL".to_string(), master.url()),
    ];
    (
        EngineProcess::start(d, &["serve", "--no-worker"], &env),
        port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_durability_loses_a_2xxd_event_when_the_master_dies_before_its_replica_has_it() {
    let (mut master, link, replica) = master_and_replica().await;
    let (d, stream) = pipelines("local");
    let (_engine, port) = ingest(&d, &master);
    link.set(Mode::Blackhole);
    let call = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        send(port, &call).await,
        200,
        "answered once the master has it"
    );
    assert_eq!(stored_on(&master.url(), &stream, &call).await, 1);
    master.kill();
    link.reset();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored_on(&replica.url(), &stream, &call).await,
        0,
        "the replica that a failover would promote never got the 2xx'd event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_durability_answers_2xx_only_for_an_event_a_replica_has() {
    let (mut master, link, replica) = master_and_replica().await;
    let (d, stream) = pipelines("replicated");
    let (engine, port) = ingest(&d, &master);

    // replication held past the 300 ms timeout: 503, the provider retries
    link.set(Mode::Blackhole);
    let slow = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    assert_eq!(send(port, &slow).await, 503, "no replica confirmed in time");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at the wait's timeout"
    );
    let log = engine.log();
    assert!(
        log.iter()
            .any(|l| l.contains("redis_enqueue for queue `vapi` is not replicated")),
        "the condition is named: {log:#?}"
    );

    // replication prompt again: a 2xx, and the event is on the replica when the master dies
    link.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    let call = uuid::Uuid::new_v4().to_string();
    loop {
        match send(port, &call).await {
            200 => break,
            status => {
                assert!(Instant::now() < deadline, "never 2xx again: {status}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    master.kill();
    link.reset();
    assert_eq!(
        stored_on(&replica.url(), &stream, &call).await,
        1,
        "a 2xx'd event is on the replica a failover promotes"
    );
    assert!(
        engine
            .log()
            .iter()
            .any(|l| l.contains("redis_enqueue for queue `vapi` replicated again")),
        "{:#?}",
        engine.log()
    );
}
