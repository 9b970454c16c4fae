//! The Redis Streams queue against a real Redis, a private key prefix per test.

use std::time::Duration;

use engine::queue::Enqueued;
use engine::queue::redis::RedisQueue;
use engine::transform::EventInput;

use crate::common;

fn prefix() -> String {
    format!(
        "qtest:{}:{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

fn event(id: &str) -> EventInput {
    common::event_input(
        id,
        "vapi",
        "/api/webhooks/vapi",
        "application/json",
        format!(r#"{{"message":{{"type":"status-update","call":{{"id":"{id}"}}}}}}"#),
    )
}

async fn queue(prefix: &str, consumer: &str) -> RedisQueue {
    let q = RedisQueue::new(common::redis(), prefix, "vapi", consumer).unwrap();
    q.ensure_group().await.unwrap();
    q
}

/// `ids` enqueued on `q`, then read back by it in one batch (delivered: pending on it).
async fn enqueued_and_read(q: &RedisQueue, ids: &[&str]) -> Vec<engine::queue::Delivery> {
    for id in ids {
        q.enqueue(&event(id), None).await.unwrap();
    }
    let mut r = q.reader().await.unwrap();
    let (got, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!(got.len(), ids.len());
    got
}

#[tokio::test]
async fn enqueue_read_ack() {
    let q = queue(&prefix(), "c1").await;
    let Enqueued::Added(id) = q.enqueue(&event("e1"), None).await.unwrap() else {
        panic!()
    };
    let mut r = q.reader().await.unwrap();
    let (got, lost) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert!(!lost);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].id.as_str(), got[0].event.clone(), got[0].attempts),
        (id.as_str(), event("e1"), 0)
    );
    assert_eq!(q.stats().await.unwrap().pending, 1);
    q.ack(&got[0].id).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!(
        (s.depth, s.pending),
        (0, 0),
        "acked entries are deleted, not just acknowledged"
    );
    // nothing more: the blocking read times out empty
    let (none, _) = q
        .read(0, &mut r, 10, Duration::from_millis(50), false)
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn dedupe_within_the_window() {
    let q = queue(&prefix(), "c1").await;
    let key = Some(("call-1:status-update", Duration::from_secs(60)));
    assert!(matches!(
        q.enqueue(&event("e1"), key).await.unwrap(),
        Enqueued::Added(_)
    ));
    assert_eq!(
        q.enqueue(&event("e1"), key).await.unwrap(),
        Enqueued::Duplicate
    );
    assert_eq!(
        q.enqueue(&event("e1"), key).await.unwrap(),
        Enqueued::Duplicate
    );
    assert!(matches!(
        q.enqueue(
            &event("e2"),
            Some(("call-2:status-update", Duration::from_secs(60)))
        )
        .await
        .unwrap(),
        Enqueued::Added(_)
    ));
    assert_eq!(
        q.stats().await.unwrap().depth,
        2,
        "the same provider event sent 3 times is one entry"
    );
}

#[tokio::test]
async fn retry_comes_back_after_its_delay_with_the_attempt_counted() {
    let q = queue(&prefix(), "c1").await;
    q.enqueue(&event("e1"), None).await.unwrap();
    let mut r = q.reader().await.unwrap();
    let (got, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    q.retry(&got[0], Duration::from_millis(300)).await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.pending, s.delayed), (0, 0, 1));
    let early = q.promote_due(0, 100).await.unwrap();
    assert_eq!(early.moved, 0, "not due yet");
    // and it says when it will be: what the promoter sleeps for
    let next = early.next_due.expect("a retry is waiting");
    assert!(next <= Duration::from_millis(300), "{next:?}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let promoted = q.promote_due(0, 100).await.unwrap();
    assert_eq!((promoted.moved, promoted.next_due), (1, None));
    let (again, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!((again[0].event.id.as_str(), again[0].attempts), ("e1", 1));
}

#[tokio::test]
async fn dead_letters_keep_the_reason_and_can_be_replayed_or_purged() {
    let q = queue(&prefix(), "c1").await;
    for id in ["e1", "e2"] {
        q.enqueue(&event(id), None).await.unwrap();
    }
    let mut r = q.reader().await.unwrap();
    let (got, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    for d in &got {
        q.dead_letter(
            d,
            "scripts/vapi.rhai:10:5: end-of-call-report without message.call.id",
        )
        .await
        .unwrap();
    }
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.pending, s.dead), (0, 0, 2));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead[0].event_id, "e1");
    assert_eq!(dead[0].attempts, 1);
    assert!(dead[0].reason.contains("without message.call.id"));

    assert_eq!(q.replay_dead(&[dead[0].id.clone()]).await.unwrap(), 1);
    let (back, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!(
        (back[0].event.id.as_str(), back[0].attempts),
        ("e1", 0),
        "replayed with a fresh attempt count"
    );
    assert_eq!(q.purge_dead(&[]).await.unwrap(), 1);
    assert_eq!(q.stats().await.unwrap().dead, 0);
}

/// A worker repeats a recording whose answer it lost (a failover, a cut link): the second run
/// of the same ack, retry or dead letter adds nothing.
#[tokio::test]
async fn recording_an_outcome_twice_adds_nothing() {
    let q = queue(&prefix(), "c1").await;
    let got = enqueued_and_read(&q, &["e1", "e2", "e3"]).await;
    for _ in 0..2 {
        q.ack(&got[0].id).await.unwrap();
        q.retry(&got[1], Duration::from_secs(60)).await.unwrap();
        q.dead_letter(&got[2], "gave up").await.unwrap();
    }
    let s = q.stats().await.unwrap();
    assert_eq!(
        (s.depth, s.pending, s.delayed, s.dead),
        (0, 0, 1, 1),
        "one retry scheduled and one dead letter, not two: {s:?}"
    );
}

#[tokio::test]
async fn a_dead_consumers_entries_are_reclaimed_after_the_lease() {
    let p = prefix();
    let crashed = queue(&p, "worker-that-crashed").await;
    enqueued_and_read(&crashed, &["e1", "e2", "e3"]).await;
    drop(crashed); // never acks

    let live = queue(&p, "worker-alive").await;
    let (early, _) = live.reclaim(0, Duration::from_secs(60), 5).await.unwrap();
    assert!(early.is_empty(), "within the lease nothing is taken over");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (claimed, deleted) = live
        .reclaim(0, Duration::from_millis(200), 5)
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    let mut ids: Vec<_> = claimed.iter().map(|d| d.event.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["e1", "e2", "e3"]);
    for d in &claimed {
        live.ack(&d.id).await.unwrap();
    }
    assert_eq!(live.stats().await.unwrap().depth, 0);
}

#[tokio::test]
async fn a_restarted_consumer_reads_its_own_pending_entries_first() {
    let p = prefix();
    let q = queue(&p, "same-name").await;
    q.enqueue(&event("e1"), None).await.unwrap();
    let mut r = q.reader().await.unwrap();
    q.read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    let (own, _) = q.read(0, &mut r, 10, Duration::ZERO, true).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].event.id, "e1");
}

#[tokio::test]
async fn poison_entries_are_dead_lettered_after_too_many_deliveries() {
    let p = prefix();
    let q = queue(&p, "c1").await;
    q.enqueue(&event("poison"), None).await.unwrap();
    let mut r = q.reader().await.unwrap();
    q.read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    // each reclaim is another delivery; past the limit the entry is dead-lettered
    let mut last = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        last = q.reclaim(0, Duration::from_millis(20), 2).await.unwrap().0;
    }
    assert!(last.is_empty());
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.dead), (0, 1));
    assert!(
        q.dead_letters(1).await.unwrap()[0]
            .reason
            .starts_with("delivered 3 times")
    );
}

#[tokio::test]
async fn a_lost_group_is_recreated_and_reported() {
    let q = queue(&prefix(), "c1").await;
    // Redis restarted empty: the stream and its group are gone
    let client = redis::Client::open(common::redis()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::AsyncCommands::del(&mut c, q.stream_key())
        .await
        .unwrap();
    let mut r = q.reader().await.unwrap();
    let (got, lost) = q
        .read(0, &mut r, 10, Duration::from_millis(50), false)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(lost, "the caller raises the data-loss alarm");
    q.enqueue(&event("after"), None).await.unwrap();
    let (got, lost) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!((got.len(), lost), (1, false));
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang() {
    let q = RedisQueue::new("redis://127.0.0.1:1", &prefix(), "vapi", "c1").unwrap();
    let started = std::time::Instant::now();
    assert!(q.enqueue(&event("e1"), None).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn queue_and_dlq_commands() {
    use std::process::Command;
    let p = prefix();
    // a deployment whose Redis keys are under `p`
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    for entry in std::fs::read_dir(shipped.join("scripts")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            dir.path().join("scripts").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    let settings = std::fs::read_to_string(dir.path().join("engine.yaml")).unwrap();
    std::fs::write(
        dir.path().join("engine.yaml"),
        format!("{settings}\nredis_key_prefix: '{p}'\n"),
    )
    .unwrap();

    let q = queue(&p, "c1").await;
    for id in ["d1", "d2"] {
        q.enqueue(&event(id), None).await.unwrap();
    }
    let mut r = q.reader().await.unwrap();
    let (got, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    for d in &got {
        q.dead_letter(d, "scripts/vapi.rhai:3:1: boom")
            .await
            .unwrap();
    }

    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engine"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("REDIS_URL", common::redis())
            .args(args)
            .arg("--pipelines")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stats: serde_json::Value =
        serde_json::from_str(&run(&["queue", "stats", "--json"])).unwrap();
    assert_eq!(stats["vapi"]["dead"], 2);
    assert_eq!(stats["vapi"]["depth"], 0);
    assert!(run(&["queue", "stats"]).contains("vapi"));

    let list: serde_json::Value =
        serde_json::from_str(&run(&["dlq", "list", "--pipeline", "vapi", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["reason"], "scripts/vapi.rhai:3:1: boom");
    let first = list[0]["id"].as_str().unwrap().to_string();
    let shown: serde_json::Value =
        serde_json::from_str(&run(&["dlq", "show", "--pipeline", "vapi", "--id", &first])).unwrap();
    assert_eq!(shown["event"]["id"], "d1");
    assert!(
        shown["event"]["body"]
            .as_str()
            .unwrap()
            .contains("status-update")
    );

    assert_eq!(
        run(&[
            "dlq",
            "replay",
            "--pipeline",
            "vapi",
            "--id",
            &first,
            "--json"
        ])
        .trim(),
        r#"{"replayed": 1}"#
    );
    assert_eq!(
        run(&["dlq", "purge", "--pipeline", "vapi", "--all"]).trim(),
        "purged 1"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&run(&["queue", "stats", "--json"])).unwrap();
    assert_eq!(
        (
            stats["vapi"]["dead"].as_u64(),
            stats["vapi"]["depth"].as_u64()
        ),
        (Some(0), Some(1))
    );
}

/// A queue and a Redis limiter under a fresh prefix, a rule of 2 per minute, and its Redis key
/// for the client 1.2.3.4.
async fn limited() -> (
    RedisQueue,
    engine::rate_limit::redis::RedisGcra,
    engine::rate_limit::Rule,
    String,
) {
    use engine::config::rate_limit::RateLimit;
    let p = prefix();
    let q = queue(&p, "c1").await;
    let gcra = engine::rate_limit::redis::RedisGcra::new(common::redis(), &p).unwrap();
    let rule = engine::rate_limit::Rule::new("api", &RateLimit::per_ip(2, Duration::from_secs(60)));
    let key = gcra.key(&rule, "1.2.3.4");
    (q, gcra, rule, key)
}

#[tokio::test]
async fn enqueue_limited_checks_the_shared_limit_before_storing() {
    use engine::rate_limit::redis::decision;
    let (q, gcra, rule, key) = limited().await;
    let window = Some(("k", Duration::from_secs(60)));
    // first: allowed and stored, one left
    let (v, stored) = q
        .enqueue_limited(&event("e1"), window, &rule, &key)
        .await
        .unwrap();
    assert!(matches!(stored, Some(Enqueued::Added(_))));
    let d = decision(&rule, v);
    assert!(d.allowed);
    assert_eq!(d.remaining, 1);
    // the same dedupe key: allowed by the limit (and counted), not stored again
    let (v, stored) = q
        .enqueue_limited(&event("e1"), window, &rule, &key)
        .await
        .unwrap();
    assert_eq!(stored, Some(Enqueued::Duplicate));
    assert_eq!(decision(&rule, v).remaining, 0);
    // over the limit: refused, nothing stored, the dedupe key of the refused event not taken
    let other = Some(("k2", Duration::from_secs(60)));
    let (v, stored) = q
        .enqueue_limited(&event("e2"), other, &rule, &key)
        .await
        .unwrap();
    assert_eq!(stored, None);
    let d = decision(&rule, v);
    assert!(!d.allowed);
    // 2 per minute: the next one 30 s after the first (less the time these calls took)
    assert!(
        (Duration::from_secs(29)..=Duration::from_secs(30)).contains(&d.retry_after),
        "{:?}",
        d.retry_after
    );
    assert_eq!(q.stats().await.unwrap().depth, 1);
    // the limit is the very one `RedisGcra::check` keeps: it refuses too
    assert!(!gcra.check(&rule, "1.2.3.4", None).await.unwrap().allowed);
    // and the refused event's key is free: stored once the limit allows it (plain enqueue here)
    assert!(matches!(
        q.enqueue(&event("e2"), other).await.unwrap(),
        Enqueued::Added(_)
    ));
}

/// A rate-limit key the engine did not write. One of another type (a hash): the limited enqueue
/// fails with `WRONGTYPE`, naming the key and saying to delete it, and stores nothing, its dedupe key not taken, so the request
/// is answered as an error and the provider's retry is stored once the key is mended; the plain
/// check fails the same way. A string that is not a time counts as an empty bucket and is
/// overwritten with one.
#[tokio::test]
async fn a_limited_enqueue_behind_a_spoiled_rate_limit_key_fails_and_stores_nothing() {
    let (q, gcra, rule, key) = limited().await;
    let mut c = redis::Client::open(common::redis()).unwrap();
    let _: () = redis::Commands::hset(&mut c, &key, "f", "v").unwrap();
    let window = Some(("k", Duration::from_secs(60)));
    let e = q
        .enqueue_limited(&event("e1"), window, &rule, &key)
        .await
        .unwrap_err();
    let e = engine::diagnostics::chain(&e);
    assert!(e.contains("WRONGTYPE"), "{e}");
    // the error names the key and what to do about it
    assert!(e.contains(&key) && e.contains("delete it (DEL)"), "{e}");
    assert_eq!(q.stats().await.unwrap().depth, 0);
    let e = gcra.check(&rule, "1.2.3.4", None).await.unwrap_err();
    assert!(e.0.contains("WRONGTYPE"), "{}", e.0);
    assert!(e.0.contains("delete it (DEL)"), "{}", e.0);
    // mended (here: a string that is no time): the same event is stored, the bucket counted
    let _: () = redis::Commands::set(&mut c, &key, "not a time").unwrap();
    let (v, stored) = q
        .enqueue_limited(&event("e1"), window, &rule, &key)
        .await
        .unwrap();
    assert!(matches!(stored, Some(Enqueued::Added(_))), "{stored:?}");
    assert_eq!(v, [1, 0, 30000, 1]);
    let held: String = redis::Commands::get(&mut c, &key).unwrap();
    assert!(held.parse::<u64>().is_ok(), "{held}");
}

#[tokio::test]
async fn concurrent_enqueues_go_to_redis_in_groups_each_with_its_own_answer() {
    use engine::redis_conn::group_commit::GroupCommit;
    let p = prefix();
    let shared = GroupCommit::open(common::redis()).unwrap();
    let pool = engine::queue::redis::QueuePool::new(&shared);
    let q = RedisQueue::on(&pool, &p, "vapi", "c1", 1);
    q.ensure_group().await.unwrap();
    let q = std::sync::Arc::new(q);
    // a queue whose stream key holds a string: its appends fail (WRONGTYPE) inside the groups
    let broken = RedisQueue::on(&pool, &p, "broken", "c1", 1);
    let mut c = redis::Client::open(common::redis()).unwrap();
    let _: () = redis::Commands::set(&mut c, broken.stream_key(), "not a stream").unwrap();
    let broken = std::sync::Arc::new(broken);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        let (q, broken) = (q.clone(), broken.clone());
        tasks.spawn(async move {
            // every fourth event repeats an earlier one's dedupe key
            let key = format!("k{}", if i % 4 == 3 { i - 1 } else { i });
            let window = Some((key.as_str(), Duration::from_secs(60)));
            let good = q.enqueue(&event(&format!("e{i}")), window).await;
            let bad = if i % 10 == 0 {
                Some(broken.enqueue(&event(&format!("b{i}")), None).await)
            } else {
                None
            };
            (good, bad)
        });
    }
    let (mut added, mut duplicates, mut refused) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        let (good, bad) = r.unwrap();
        match good.unwrap() {
            Enqueued::Added(_) => added += 1,
            Enqueued::Duplicate => duplicates += 1,
        }
        if let Some(bad) = bad {
            let e = engine::diagnostics::chain(&bad.unwrap_err());
            assert!(e.contains("WRONGTYPE"), "{e}");
            refused += 1;
        }
    }
    assert_eq!((added, duplicates, refused), (300, 100, 40));
    assert_eq!(q.stats().await.unwrap().depth, 300);
    let (calls, ops) = shared.grouped();
    assert_eq!(ops, 440);
    assert!(
        calls < ops,
        "{calls} calls for {ops} operations: nothing was grouped"
    );
}

/// A queue split into partitions on one node: events spread over the streams by dedupe key, a
/// repeat is caught in its partition, ids name the partition, and every operation on an entry
/// (read, ack, dead letter, replay, purge) finds it.
#[tokio::test]
async fn a_partitioned_queue_spreads_events_and_finds_them_again() {
    let p = prefix();
    let q = RedisQueue::partitioned(common::redis(), &p, "vapi", "c1", 3).unwrap();
    q.ensure_group().await.unwrap();
    let window = Duration::from_secs(60);
    for i in 0..60 {
        let key = format!("call-{i}|status-update");
        let added = q
            .enqueue(&event(&format!("e{i}")), Some((&key, window)))
            .await
            .unwrap();
        assert!(
            matches!(added, Enqueued::Added(ref id) if id.contains('/')),
            "{added:?}"
        );
    }
    assert_eq!(
        q.enqueue(&event("e0"), Some(("call-0|status-update", window)))
            .await
            .unwrap(),
        Enqueued::Duplicate
    );
    let client = redis::Client::open(common::redis()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let mut lengths = Vec::new();
    for key in q.stream_keys() {
        let n: u64 = redis::AsyncCommands::xlen(&mut c, key).await.unwrap();
        lengths.push(n);
    }
    assert_eq!(lengths.iter().sum::<u64>(), 60);
    assert!(lengths.iter().all(|n| *n > 5), "spread: {lengths:?}");
    assert_eq!(q.stats().await.unwrap().depth, 60);

    // each partition read on its own; ack one, dead-letter one of another partition
    let mut r = q.reader().await.unwrap();
    let (first, _) = q.read(0, &mut r, 100, Duration::ZERO, false).await.unwrap();
    let (second, _) = q.read(1, &mut r, 100, Duration::ZERO, false).await.unwrap();
    assert_eq!(first.len() as u64, lengths[0]);
    assert!(first.iter().all(|d| d.id.starts_with("0/")));
    assert!(second.iter().all(|d| d.id.starts_with("1/")));
    q.ack(&first[0].id).await.unwrap();
    engine::queue::Outcomes::dead_letter(&q, &second[0], "broken")
        .await
        .unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.dead), (58, 1));
    let dead = q.newest_dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].id.starts_with("1/"), "{}", dead[0].id);
    assert_eq!(
        q.replay_dead(std::slice::from_ref(&dead[0].id))
            .await
            .unwrap(),
        1
    );
    assert_eq!(q.stats().await.unwrap().dead, 0);
    engine::queue::Outcomes::dead_letter(&q, &second[1], "broken")
        .await
        .unwrap();
    assert_eq!(
        q.purge_dead(&[]).await.unwrap(),
        1,
        "all, over every partition"
    );
}

/// The stored form: an enqueued event is fields `e` (its JSON without the body) and `b` (the
/// body as it arrived, no base64); entries in the full form (`e` alone, the body base64 inside,
/// as retries through the promoter and entries written before the raw-body form carry) read the
/// same event. Retry, promote, dead-letter and replay keep it whole in both forms.
#[tokio::test]
async fn events_read_back_whole_from_both_stored_forms() {
    use base64::Engine as _;
    let p = prefix();
    let q = queue(&p, "c1").await;
    let stream = format!("{p}:{{q:vapi}}:stream");
    let dead = format!("{p}:{{q:vapi}}:dead");
    let redis = redis::Client::open(common::redis()).unwrap();
    let mut c = redis.get_multiplexed_async_connection().await.unwrap();

    // the raw form, with a body that is not UTF-8 (a binary upload) and JSON-special bytes
    let mut raw = event("new");
    raw.body = bytes::Bytes::from_static(b"\xff\x00{\"a\":\"\\\"\"}\n");
    q.enqueue(&raw, None).await.unwrap();
    let fields: Vec<(String, Vec<u8>)> = {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query_async(&mut c)
            .await
            .unwrap();
        let redis::Value::Array(entries) = v else {
            panic!("{v:?}")
        };
        let redis::Value::Array(entry) = &entries[0] else {
            panic!()
        };
        let redis::Value::Array(kv) = &entry[1] else {
            panic!()
        };
        kv.chunks(2)
            .map(|p| {
                let (redis::Value::BulkString(k), redis::Value::BulkString(v)) = (&p[0], &p[1])
                else {
                    panic!()
                };
                (String::from_utf8(k.clone()).unwrap(), v.clone())
            })
            .collect()
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        field("b").as_deref(),
        Some(&raw.body[..]),
        "the body is stored raw"
    );
    let meta: serde_json::Value = serde_json::from_slice(&field("e").unwrap()).unwrap();
    assert!(meta.get("body").is_none(), "{meta}");
    assert_eq!(meta["id"], "new");

    // the full form, as an older engine wrote it
    let old = event("old");
    let full = serde_json::to_value(&old).unwrap();
    assert_eq!(
        full["body"],
        base64::engine::general_purpose::STANDARD.encode(&old.body),
        "the full form carries the body base64"
    );
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("e")
        .arg(full.to_string())
        .arg("a")
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();

    let mut r = q.reader().await.unwrap();
    let (got, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].event, raw);
    assert_eq!(got[1].event, old);

    // retried: through the delayed set and the promoter (the full form), back whole
    for d in &got {
        q.retry(d, Duration::from_millis(1)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(q.promote_due(0, 100).await.unwrap().moved, 2);
    let (again, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    let mut events: Vec<EventInput> = again.iter().map(|d| d.event.clone()).collect();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(events, vec![raw.clone(), old.clone()]);
    assert!(again.iter().all(|d| d.attempts == 1));

    // dead-lettered (the raw form in the dead stream), plus a dead letter of the full form
    for d in &again {
        q.dead_letter(d, "gave up").await.unwrap();
    }
    let mut old_dead = event("old-dead");
    old_dead.body = bytes::Bytes::from_static(b"{\"x\":1}");
    let _: String = redis::cmd("XADD")
        .arg(&dead)
        .arg("*")
        .arg("e")
        .arg(serde_json::to_string(&old_dead).unwrap())
        .arg("reason")
        .arg("old engine")
        .arg("attempts")
        .arg(3)
        .query_async(&mut c)
        .await
        .unwrap();
    let letters = q.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 3);
    let by_id = |id: &str| {
        letters
            .iter()
            .find(|l| l.event_id == id)
            .and_then(|l| l.event.clone())
            .unwrap()
    };
    assert_eq!(by_id("new"), raw);
    assert_eq!(by_id("old"), old);
    assert_eq!(by_id("old-dead"), old_dead);

    // replayed: all three back on the work stream, whole
    assert_eq!(q.replay_dead(&[]).await.unwrap(), 3);
    let (back, _) = q
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    let mut events: Vec<EventInput> = back.iter().map(|d| d.event.clone()).collect();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(events, vec![raw, old, old_dead]);
    assert!(back.iter().all(|d| d.attempts == 0));
}

/// Every Redis queue of a served set shares one pool (`QueuePool`): forty queues made, fed and
/// counted at once hold the pool's connections and the shared enqueue connection, not a pool
/// each (a thousand pipelines held over 6,000 connections before). A private Redis, so only this
/// test's clients are counted.
#[tokio::test]
async fn the_queues_of_a_set_share_one_pool_of_connections() {
    use engine::queue::redis::QueuePool;
    use engine::redis_conn::group_commit::GroupCommit;
    let redis = common::private::PrivateRedis::start(false);
    let shared = GroupCommit::open(&redis.url()).unwrap();
    let pool = QueuePool::new(&shared);
    let p = prefix();
    let queues: Vec<std::sync::Arc<RedisQueue>> = (0..40)
        .map(|i| std::sync::Arc::new(RedisQueue::on(&pool, &p, &format!("q{i}"), "c1", 1)))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, q) in queues.iter().cloned().enumerate() {
        tasks.spawn(async move {
            q.ensure_group().await.unwrap();
            let id = format!("e{i}");
            assert!(matches!(
                q.enqueue(&event(&id), None).await.unwrap(),
                Enqueued::Added(_)
            ));
            q.stats().await.unwrap().depth
        });
    }
    let depths: Vec<u64> = tasks.join_all().await;
    assert_eq!(depths, vec![1; 40], "each queue holds its own event");
    let mut c = redis::Client::open(redis.url()).unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
    let clients = list.lines().count();
    // the pool (16 at most), the shared enqueue connection, and this one
    assert!(
        (2..=18).contains(&clients),
        "{clients} connections for 40 queues:\n{list}"
    );
}

/// The request path's group call is an `EVALSHA` the engine builds itself: a Redis that lost its
/// scripts (a restart, `SCRIPT FLUSH`, a replica promoted) gets the script loaded again and the
/// call run, and each event's body is stored as it came, before and after. A private Redis, so
/// the flush touches no other test.
#[tokio::test]
async fn the_group_call_loads_its_script_again_when_redis_lost_it() {
    use engine::redis_conn::group_commit::GroupCommit;
    let redis = common::private::PrivateRedis::start(false);
    let shared = GroupCommit::open(&redis.url()).unwrap();
    let pool = engine::queue::redis::QueuePool::new(&shared);
    let q = RedisQueue::on(&pool, &prefix(), "vapi", "c1", 1);
    q.ensure_group().await.unwrap();
    let mut c = redis::Client::open(redis.url()).unwrap();
    for (i, id) in ["before", "after"].into_iter().enumerate() {
        if i == 1 {
            let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
        }
        let window = Some((id, Duration::from_secs(60)));
        assert!(matches!(
            q.enqueue(&event(id), window).await.unwrap(),
            Enqueued::Added(_)
        ));
        // the same dedupe key again: the script ran whole, its dedupe included
        assert!(matches!(
            q.enqueue(&event(id), window).await.unwrap(),
            Enqueued::Duplicate
        ));
    }
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(q.stream_key())
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    let bodies: Vec<String> = entries
        .ids
        .iter()
        .map(|e| e.get::<String>("b").unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["before", "after"].map(|id| format!(
            r#"{{"message":{{"type":"status-update","call":{{"id":"{id}"}}}}}}"#
        ))
    );
    assert_eq!(shared.grouped().1, 4);
}
