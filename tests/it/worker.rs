//! The worker on a real Redis: transform, sink, ack, retry with backoff, dead letters, takeover of
//! a dead consumer's entries. Sinks here capture rows in memory; their failures are scripted.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use engine::queue::Queue;
use engine::queue::redis::RedisQueue;
use engine::sink::{Batch, Sink, SinkError, SinkFuture};
use engine::transform::{EventInput, Program};
use engine::worker::{Handled, Options, PartitionWorkers, Worker};

/// Captures batches; fails the first `fail_first` writes with `failure`.
struct TestSink {
    batches: Mutex<Vec<Batch>>,
    fail_first: u32,
    failure: SinkError,
    calls: AtomicU32,
}

impl TestSink {
    fn new(fail_first: u32, failure: SinkError) -> Arc<TestSink> {
        Arc::new(TestSink {
            batches: Mutex::new(Vec::new()),
            fail_first,
            failure,
            calls: AtomicU32::new(0),
        })
    }
    fn event_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.event_id.clone())
            .collect();
        ids.sort();
        ids
    }
}

impl Sink for TestSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> SinkFuture<'a> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return Err(self.failure.clone());
            }
            self.batches.lock().unwrap().push(batch.clone());
            Ok(())
        })
    }
}

fn vapi_program() -> Arc<Program> {
    Arc::new(common::program_in(&common::shipped(), "vapi"))
}

fn status_update(id: &str) -> EventInput {
    common::event_input(
        id,
        "vapi",
        "/api/webhooks/vapi",
        "application/json",
        format!(
            r#"{{"message":{{"type":"status-update","status":"ringing","call":{{"id":"call-{id}"}}}}}}"#
        ),
    )
}

async fn worker(sink: Arc<TestSink>, options: Options) -> (Arc<Worker>, Arc<RedisQueue>, String) {
    let prefix = format!(
        "wtest:{}:{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let queue = Arc::new(
        RedisQueue::new(
            common::redis(),
            &prefix,
            "vapi",
            &engine::queue::consumer_name(),
        )
        .unwrap(),
    );
    queue.ensure_group().await.unwrap();
    let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    sinks.insert("call_status".into(), sink);
    let worker = Worker {
        outcomes: queue.clone(),
        program: vapi_program(),
        sinks,
        options,
        archive: None,
    };
    (Arc::new(worker), queue, prefix)
}

fn fast() -> Options {
    Options {
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        lease: Duration::from_millis(300),
        block: Duration::from_millis(100),
        max_attempts: 3,
        ..Options::default()
    }
}

async fn wait_until(mut ok: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test]
async fn events_flow_to_the_sink_and_are_acked() {
    let sink = TestSink::new(0, SinkError::retry(""));
    let (w, q, _) = worker(sink.clone(), fast()).await;
    for i in 0..20 {
        q.enqueue(&status_update(&format!("e{i:02}")), None)
            .await
            .unwrap();
    }
    // a speech-update has no route: acked as dropped, never written
    let mut dropped = status_update("speech");
    dropped.body = Bytes::from(r#"{"message":{"type":"speech-update"}}"#);
    q.enqueue(&dropped, None).await.unwrap();

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running =
        tokio::spawn(
            w.clone()
                .run(Queue::Redis(q.clone()), 0, PartitionWorkers::lead(), stop),
        );
    wait_until(|| sink.event_ids().len() == 20).await;
    let expected: Vec<String> = (0..20).map(|i| format!("e{i:02}")).collect();
    assert_eq!(sink.event_ids(), expected);
    let batch = sink.batches.lock().unwrap()[0].clone();
    assert_eq!(
        (batch.sink.as_str(), batch.step.as_str()),
        ("call_status", "status-update")
    );
    assert_eq!(batch.rows[0]["status"], "ringing");
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("stops promptly")
        .unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.pending, s.delayed, s.dead), (0, 0, 0, 0));
}

#[tokio::test]
async fn a_failing_sink_is_retried_with_backoff_then_succeeds() {
    let sink = TestSink::new(2, SinkError::retry("connection refused"));
    let (w, q, _) = worker(
        sink.clone(),
        Options {
            max_attempts: 5,
            ..fast()
        },
    )
    .await;
    q.enqueue(&status_update("r1"), None).await.unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = std::time::Instant::now();
    let running =
        tokio::spawn(
            w.clone()
                .run(Queue::Redis(q.clone()), 0, PartitionWorkers::lead(), stop),
        );
    wait_until(|| sink.event_ids() == ["r1"]).await;
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        3,
        "two failures, then the write"
    );
    // the promoter found the delayed set empty at start and sleeps for its idle bound (5 s):
    // each retry scheduled wakes it, and it sleeps until that one is due (50 + 100 ms here), so
    // both came back long before one idle bound, let alone two
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    stop_tx.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(q.stats().await.unwrap().dead, 0);
}

/// The workers of a partition in one process are a team (`PartitionWorkers`): a helper reads new entries only while
/// its lead finds a backlog, and only the lead runs the promoter (and the reaper).
#[tokio::test]
async fn a_partition_helper_waits_for_a_backlog_and_only_the_lead_promotes_retries() {
    let options = Options { batch: 4, ..fast() };
    let sink = TestSink::new(0, SinkError::retry("unused"));
    let (w, q, _) = worker(sink.clone(), options).await;
    // the helper: the same queue, its own sink, so what it wrote can be told apart
    let helper_sink = TestSink::new(0, SinkError::retry("unused"));
    let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    sinks.insert("call_status".into(), helper_sink.clone());
    let helper_worker = Arc::new(Worker {
        outcomes: q.clone(),
        program: vapi_program(),
        sinks,
        options,
        archive: None,
    });
    // a retry due at once, and a backlog of 201 new events (batches of 4)
    q.enqueue(&status_update("u1"), None).await.unwrap();
    let mut conn = q.reader().await.unwrap();
    let (got, _) = q
        .read(0, &mut conn, 10, Duration::ZERO, false)
        .await
        .unwrap();
    q.retry(&got[0], Duration::ZERO).await.unwrap();
    for i in 0..201 {
        q.enqueue(&status_update(&format!("b{i}")), None)
            .await
            .unwrap();
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let lead = PartitionWorkers::lead();
    let helper =
        tokio::spawn(helper_worker.run(Queue::Redis(q.clone()), 0, lead.helper(), stop.clone()));
    // alone, the helper reads nothing new and promotes nothing
    tokio::time::sleep(Duration::from_millis(700)).await;
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.delayed), (201, 1), "{s:?}");
    assert!(helper_sink.event_ids().is_empty());
    // the lead promotes the retry and reads full batches, so the helper joins: every event
    // written once
    let lead = tokio::spawn(w.clone().run(Queue::Redis(q.clone()), 0, lead, stop));
    let written = || sink.event_ids().len() + helper_sink.event_ids().len();
    wait_until(|| written() == 202).await;
    stop_tx.send(true).unwrap();
    helper.await.unwrap();
    lead.await.unwrap();
    assert!(
        !helper_sink.event_ids().is_empty(),
        "the helper never joined the backlog"
    );
    let mut ids = sink.event_ids();
    ids.extend(helper_sink.event_ids());
    assert_eq!(ids.len(), 202, "every event written once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 202);
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.pending, s.delayed, s.dead), (0, 0, 0, 0));
}

#[tokio::test]
async fn attempts_used_up_and_permanent_errors_are_dead_lettered() {
    let sink = TestSink::new(u32::MAX, SinkError::retry("connection refused"));
    let (w, q, _) = worker(sink.clone(), fast()).await;
    q.enqueue(&status_update("x1"), None).await.unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running =
        tokio::spawn(
            w.clone()
                .run(Queue::Redis(q.clone()), 0, PartitionWorkers::lead(), stop),
        );
    let queue = q.clone();
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = queue.dead_letters(10).await.unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_tx.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, "x1");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(
        dead[0].reason,
        "sink `call_status`: connection refused (gave up after 3 attempts)"
    );

    // a constraint violation is not retried
    let sink = TestSink::new(
        1,
        SinkError::permanent("column \"cost\": numeric field overflow"),
    );
    let (w, q, _) = worker(sink, fast()).await;
    q.enqueue(&status_update("p1"), None).await.unwrap();
    let mut r = q.reader().await.unwrap();
    let (d, _) = q
        .read(0, &mut r, 1, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!(
        w.handle(&d[0]).await.unwrap(),
        Handled::DeadLettered {
            reason: "sink `call_status`: column \"cost\": numeric field overflow".into()
        }
    );
}

#[tokio::test]
async fn script_failures_carry_their_position_into_the_dead_letter() {
    let sink = TestSink::new(0, SinkError::retry(""));
    let (w, q, _) = worker(sink, fast()).await;
    let mut bad = status_update("b1");
    bad.body = Bytes::from(r#"{"message":{"type":"status-update"}}"#);
    q.enqueue(&bad, None).await.unwrap();
    let mut r = q.reader().await.unwrap();
    let (d, _) = q
        .read(0, &mut r, 1, Duration::from_millis(100), false)
        .await
        .unwrap();
    let Handled::DeadLettered { reason } = w.handle(&d[0]).await.unwrap() else {
        panic!()
    };
    assert!(
        reason.ends_with("vapi-status-update.rhai:6:5: status-update without message.call.id"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_crashed_workers_entries_reach_the_sink_through_another_worker() {
    let sink = TestSink::new(0, SinkError::retry(""));
    let (w, q, prefix) = worker(sink.clone(), fast()).await;
    // another process took three entries and died without acking
    let crashed = RedisQueue::new(common::redis(), &prefix, "vapi", "crashed-consumer").unwrap();
    for id in ["c1", "c2", "c3"] {
        crashed.enqueue(&status_update(id), None).await.unwrap();
    }
    let mut r = crashed.reader().await.unwrap();
    let (taken, _) = crashed
        .read(0, &mut r, 10, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!(taken.len(), 3);
    drop(crashed);

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running =
        tokio::spawn(
            w.clone()
                .run(Queue::Redis(q.clone()), 0, PartitionWorkers::lead(), stop),
        );
    wait_until(|| sink.event_ids().len() == 3).await;
    assert_eq!(sink.event_ids(), ["c1", "c2", "c3"]);
    stop_tx.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(q.stats().await.unwrap().pending, 0);
}

/// A sink that takes `delay` to write.
struct SlowSink(Duration, Mutex<u32>);

impl Sink for SlowSink {
    fn write<'a>(&'a self, _batch: &'a Batch) -> SinkFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            *self.1.lock().unwrap() += 1;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_long_job_renews_its_lease() {
    let (w, q, prefix) = worker(TestSink::new(0, SinkError::retry("")), fast()).await;
    let slow = Arc::new(SlowSink(Duration::from_millis(1200), Mutex::new(0)));
    let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    sinks.insert("call_status".into(), slow.clone());
    let slow_worker = Arc::new(Worker {
        outcomes: q.clone(),
        program: w.program.clone(),
        sinks,
        options: fast(),
        archive: None,
    });
    q.enqueue(&status_update("long"), None).await.unwrap();
    let mut r = q.reader().await.unwrap();
    let (d, _) = q
        .read(0, &mut r, 1, Duration::from_millis(100), false)
        .await
        .unwrap();
    let handling = tokio::spawn({
        let (w, d) = (slow_worker.clone(), d[0].clone());
        async move { w.handle(&d).await }
    });
    // well past the 300 ms lease, another consumer finds nothing to take over
    tokio::time::sleep(Duration::from_millis(800)).await;
    let other = RedisQueue::new(common::redis(), &prefix, "vapi", "other-consumer").unwrap();
    let (taken, _) = other
        .reclaim(0, Duration::from_millis(300), 5)
        .await
        .unwrap();
    assert!(
        taken.is_empty(),
        "the entry was taken over while its worker was still writing"
    );
    assert_eq!(handling.await.unwrap().unwrap(), Handled::Acked);
    assert_eq!(*slow.1.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_batch_with_one_bad_row_dead_letters_only_that_event() {
    let (database, schema) = common::fresh_schema().await;
    let pool = engine::db::pool(&database, 2).unwrap();
    let cfg = engine::config::sink::PostgresConfig {
        table: "call_status".into(),
        columns: Default::default(),
        key: vec![],
        on_conflict: engine::config::sink::OnConflict::Nothing,
        update: vec![],
        encrypt: vec![],
    };
    let sink: Arc<dyn Sink> =
        Arc::new(engine::sink::postgres::PostgresSink::new(&cfg, pool, None).unwrap());
    let (w, q, _) = worker(TestSink::new(0, SinkError::retry("")), fast()).await;
    let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    sinks.insert("call_status".into(), sink);
    let w = Arc::new(Worker {
        outcomes: q.clone(),
        program: w.program.clone(),
        sinks,
        options: fast(),
        archive: None,
    });
    for i in 0..10 {
        // call_status.call_id is a uuid: event 7's is not
        let id = if i == 7 {
            "not-a-uuid".to_string()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        let mut e = status_update(&format!("b{i}"));
        e.body = Bytes::from(format!(
            r#"{{"message":{{"type":"status-update","status":"ringing","call":{{"id":"{id}"}}}}}}"#
        ));
        q.enqueue(&e, None).await.unwrap();
    }
    let mut r = q.reader().await.unwrap();
    let (batch, _) = q
        .read(0, &mut r, 64, Duration::from_millis(100), false)
        .await
        .unwrap();
    assert_eq!(batch.len(), 10);
    w.handle_batch(&batch).await.unwrap();
    let rows: i64 = common::pg(&schema)
        .await
        .query_one("SELECT count(*) FROM call_status", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 9, "the nine good events are written");
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, "b7");
    assert_eq!(
        dead[0].reason,
        "sink `call_status`: call_status: column `call_id`: invalid input syntax for type uuid"
    );
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.pending), (0, 0), "all acknowledged in one go");
}

/// Records the size of every write (a batching sink, as Postgres), each taking `delay`.
#[derive(Default)]
struct SizeSink {
    writes: Mutex<Vec<usize>>,
    delay: Duration,
}

impl Sink for SizeSink {
    fn write<'a>(&'a self, batch: &'a Batch) -> SinkFuture<'a> {
        self.write_many(std::slice::from_ref(batch))
    }
    fn batches(&self) -> bool {
        true
    }
    fn write_many<'a>(&'a self, batches: &'a [Batch]) -> SinkFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.writes.lock().unwrap().push(batches.len());
            Ok(())
        })
    }
}

/// Under sustained load (events already waiting for a read, and for the one before) a small
/// batch is topped up after `batch_wait` and written in one write. After an idle spell the
/// first event is not held back, nor are events arriving one at a time. (The wait is made long
/// here so that which of these happened cannot be mistaken.)
#[tokio::test]
async fn a_busy_queue_is_topped_up_into_batches_and_a_lone_event_goes_at_once() {
    let wait = Duration::from_millis(1500);
    // (the entries waited on are not yet lease-renewed: the wait is held under a tenth of the
    // lease, so a lease long enough for this wait)
    let options = Options {
        batch_wait: wait,
        lease: Duration::from_secs(20),
        ..fast()
    };
    let sink = Arc::new(SizeSink {
        writes: Mutex::new(Vec::new()),
        // a write takes as long as a Postgres round trip under load
        delay: Duration::from_millis(20),
    });
    let (w, q, _) = worker(TestSink::new(0, SinkError::retry("")), options).await;
    let mut sinks: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    sinks.insert("call_status".into(), sink.clone());
    let w = Arc::new(Worker {
        outcomes: q.clone(),
        program: w.program.clone(),
        sinks,
        options,
        archive: None,
    });
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(w.run(Queue::Redis(q.clone()), 0, PartitionWorkers::lead(), stop));
    let written = || sink.writes.lock().unwrap().iter().sum::<usize>();
    // idle: a lone event is written well before the top-up wait would have ended
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = std::time::Instant::now();
    q.enqueue(&status_update("lone"), None).await.unwrap();
    wait_until(|| written() == 1).await;
    assert!(sent.elapsed() < wait, "the lone event waited for company");
    // a trickle slower than a write: each read finds nothing waiting, nothing is held back
    for i in 0..5 {
        q.enqueue(&status_update(&format!("s{i}")), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    wait_until(|| written() == 6).await;
    assert!(sent.elapsed() < wait, "a slow trickle waited for company");
    assert_eq!(*sink.writes.lock().unwrap(), vec![1; 6]);
    // sustained load: 40 events 2 ms apart against 20 ms writes
    for i in 0..40 {
        q.enqueue(&status_update(&format!("t{i:02}")), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for _ in 0..3 {
        if written() == 46 {
            break;
        }
        tokio::time::sleep(wait).await;
    }
    assert_eq!(written(), 46);
    let writes = sink.writes.lock().unwrap()[6..].to_vec();
    // without the top-up a write holds what arrived during the previous one (about 10)
    assert!(
        writes.iter().any(|n| *n >= 20),
        "no write was topped up: {writes:?}"
    );
    stop_tx.send(true).unwrap();
    running.await.unwrap();
    let s = q.stats().await.unwrap();
    assert_eq!((s.depth, s.pending), (0, 0));
}
