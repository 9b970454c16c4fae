//! Traces over OpenTelemetry, end to end with real processes and a real OTLP receiver (the
//! protocol's own types decode what arrives): one trace per event from the request to the row,
//! also when the worker is another process started after the enqueue; gRPC as well as
//! HTTP/protobuf; a collector that never answers changes nothing for traffic; archive replays
//! link to the original trace.

use crate::common;
use engine::ops::trace::Detail;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use common::process::{EngineProcess as Engine, KEY};
use common::{Dir, Stub, free_port, fresh_schema, pg, sql_eventually};

/// A span as the collector got it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
    /// Trace ids of the spans it links to.
    links: Vec<String>,
}

fn spans_of(request: ExportTraceServiceRequest) -> Vec<Got> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Got {
                    service: service.clone(),
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    name: s.name.clone(),
                    attributes: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    links: s.links.iter().map(|l| hex::encode(&l.trace_id)).collect(),
                });
            }
        }
    }
    out
}

/// An OTLP receiver: HTTP/protobuf (a [`Stub`] whose bodies are decoded) or gRPC (tonic serving
/// the collector's TraceService).
enum Collector {
    Http(Stub),
    Grpc(Arc<Mutex<Vec<Got>>>, u16),
}

#[derive(Clone)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .unwrap()
            .extend(spans_of(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn http() -> Collector {
        let stub = Stub::start().await;
        stub.reply(200, "", Duration::ZERO);
        Collector::Http(stub)
    }

    async fn grpc() -> Collector {
        let got = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let service = TraceServiceServer::new(Receiver(got.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream_of(listener)),
        );
        Collector::Grpc(got, port)
    }

    /// The engine's OTEL_* variables for this receiver.
    fn env(&self, service: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("OTEL_SERVICE_NAME".to_string(), service.to_string()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".to_string(),
                "deployment.environment=test".to_string(),
            ),
        ];
        match self {
            Collector::Http(stub) => env.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://127.0.0.1:{}", stub.port),
            )),
            Collector::Grpc(_, port) => {
                env.push((
                    "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                    format!("http://127.0.0.1:{port}"),
                ));
                env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()));
            }
        }
        env
    }

    fn spans(&self) -> Vec<Got> {
        match self {
            Collector::Http(stub) => stub
                .got()
                .into_iter()
                .filter(|r| r.path == "/v1/traces")
                .flat_map(|r| {
                    assert_eq!(
                        r.header("content-type"),
                        Some("application/x-protobuf"),
                        "OTLP/HTTP with protobuf"
                    );
                    spans_of(ExportTraceServiceRequest::decode(r.raw.as_slice()).unwrap())
                })
                .collect(),
            Collector::Grpc(got, _) => got.lock().unwrap().clone(),
        }
    }

    /// The spans once `enough` says they are all there (or 20 s).
    async fn wait(&self, what: &str, enough: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if enough(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "{what}; got {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

/// Warnings only, but for the line a test waits for (that the engine serves, or that its
/// workers run).
const QUIET_LOGS: &str = "warn,engine::server::lifecycle=info";

/// An engine process on the shared Redis and `database`.
fn engine(d: &Dir, args: &[&str], database: &str, env: &[(String, String)]) -> Engine {
    let mut env = env.to_vec();
    env.push(("REDIS_URL".into(), common::redis().into()));
    env.push(("DATABASE_URL".into(), database.into()));
    Engine::start(d, args, &env)
}

/// A Vapi end-of-call report for `call`.
fn report(call: &str) -> String {
    format!(
        r#"{{"message":{{"type":"end-of-call-report","endedReason":"customer-ended-call","call":{{"id":"{call}","orgId":"5b1f8a4e-3c2d-4e6f-8a9b-0c1d2e3f4a5b"}},"durationSeconds":42,"summary":"ok","artifact":{{"transcript":"hi"}}}}}}"#
    )
}

async fn post(port: u16, call: &str, traceparent: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/webhooks/vapi"))
        .header("authorization", "Bearer dev-vapi-webhook-secret")
        .header("content-type", "application/json")
        .body(report(call));
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    request.send().await.unwrap().status().as_u16()
}

fn named<'a>(spans: &'a [Got], name: &str) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The request spans of accepted Vapi reports.
fn requests(spans: &[Got]) -> Vec<&Got> {
    spans
        .iter()
        .filter(|s| {
            s.name == "request"
                && s.attributes.get("pipeline").map(String::as_str) == Some("vapi")
                && s.attributes.get("status").map(String::as_str) == Some("200")
        })
        .collect()
}

/// Each of `n` events' attempt span is in its request's trace, the request span its parent,
/// with `outcome=written`; with `Detail::Steps` the request's step spans under the request and
/// `transform` and `sink.write` under the attempt, with `Detail::Event` no other span in the
/// trace.
fn assert_one_trace_per_event(spans: &[Got], n: usize, detail: Detail) {
    let requests = requests(spans);
    assert_eq!(requests.len(), n, "{spans:#?}");
    for request in requests {
        let call = request.attributes.get("event_id").expect("the event id");
        if detail == Detail::Event {
            let names: Vec<&str> = spans
                .iter()
                .filter(|s| s.trace_id == request.trace_id)
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names.len(), 2, "request and attempt only: {names:?}");
        }
        for step in ["rate_limit", "verify", "respond", "enqueue"] {
            let under = spans
                .iter()
                .any(|s| s.name == step && s.parent == request.span_id);
            assert_eq!(
                under,
                detail == Detail::Steps,
                "{step} under the request span of {call}"
            );
        }
        let attempt = spans
            .iter()
            .find(|s| s.name == "attempt" && s.attributes.get("event_id") == Some(call))
            .unwrap_or_else(|| panic!("no attempt span for {call}: {spans:#?}"));
        assert_eq!(attempt.trace_id, request.trace_id, "one trace for {call}");
        assert_eq!(
            attempt.parent, request.span_id,
            "the attempt continues the request"
        );
        assert_eq!(
            attempt.attributes.get("outcome").map(String::as_str),
            Some("written")
        );
        if detail == Detail::Event {
            continue;
        }
        for child in ["transform", "sink.write"] {
            let c = spans
                .iter()
                .find(|s| s.name == child && s.parent == attempt.span_id)
                .unwrap_or_else(|| panic!("no {child} under the attempt of {call}"));
            assert_eq!(c.trace_id, request.trace_id);
        }
    }
}

/// Ingest in one process, which then stops; a worker process started afterwards continues each
/// event's trace from the stored event, two spans an event by default. A caller's `traceparent`
/// is the request's parent. An archive replay starts new traces linked to the originals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_event_even_when_another_process_works_it_later() {
    let collector = Collector::http().await;
    let (database, schema) = fresh_schema().await;
    let d = common::shipped_under_prefix("tracesa");
    let port = free_port();
    // logs quieted to warnings (but the line that says it serves): RUST_LOG chooses log
    // lines, never which spans are exported
    let quiet = ("RUST_LOG".to_string(), QUIET_LOGS.to_string());
    let mut env = collector.env("ingest");
    env.push(("PORT".into(), port.to_string()));
    env.push(quiet.clone());
    let ingest = engine(&d, &["serve", "--no-worker"], &database, &env);
    let calls: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for call in &calls[..2] {
        assert_eq!(post(port, call, None).await, 200);
    }
    // the W3C Trace Context specification's example parent
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(post(port, &calls[2], Some(caller)).await, 200);
    ingest.terminate();
    let spans = collector.spans();
    assert_eq!(named(&spans, "attempt").len(), 0, "no worker ran yet");
    assert_eq!(requests(&spans).len(), 3, "{spans:#?}");
    let joined = spans
        .iter()
        .find(|s| s.name == "request" && s.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the request span of the traced call");
    let traced_event = joined.attributes["event_id"].clone();
    assert_eq!(joined.parent, "00f067aa0ba902b7");
    assert_eq!(joined.service, "ingest");

    let mut env = collector.env("worker");
    env.push(("PORT".into(), free_port().to_string()));
    env.push(quiet);
    let worker = engine(&d, &["worker"], &database, &env);
    let db = pg(&schema).await;
    let ids = calls
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(",");
    sql_eventually(
        &db,
        &format!("SELECT count(*) FROM call_logs WHERE call_id IN ({ids})"),
        3,
    )
    .await;
    let spans = collector
        .wait("three attempts exported by the worker", |s| {
            named(s, "attempt").len() >= 3
        })
        .await;
    assert_one_trace_per_event(&spans, 3, Detail::Event);
    assert!(
        named(&spans, "attempt")
            .iter()
            .all(|s| s.service == "worker")
    );
    drop(worker);

    // an archive replay: a new trace per event, linked to the request's
    let out = common::engine_command()
        .envs(collector.env("replay"))
        .env("DATABASE_URL", &database)
        .env("ENCRYPTION_KEY", KEY)
        .args([
            "events",
            "replay",
            "--pipeline",
            "vapi",
            "--force",
            "--since",
            "1h",
        ])
        .arg("--pipelines")
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = collector
        .wait("replay spans", |s| named(s, "replay").len() >= 3)
        .await;
    for request in requests(&spans) {
        let call = &request.attributes["event_id"];
        let replay = spans
            .iter()
            .find(|s| s.name == "replay" && s.attributes.get("event_id") == Some(call))
            .unwrap();
        assert_ne!(
            replay.trace_id, request.trace_id,
            "a replay is a trace of its own"
        );
        assert_eq!(
            replay.links,
            vec![request.trace_id.clone()],
            "linked to the original"
        );
        assert_eq!(replay.parent, "", "a root span");
    }
    // `engine events show` names the trace
    let show = common::engine_command()
        .env("DATABASE_URL", &database)
        .env("ENCRYPTION_KEY", KEY)
        .args([
            "events",
            "show",
            "--pipeline",
            "vapi",
            "--id",
            &traced_event,
            "--json",
        ])
        .arg("--pipelines")
        .arg(d.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

/// The same trace over gRPC, ingest and worker in one process, a span per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_go_over_grpc_too() {
    let collector = Collector::grpc().await;
    let (database, schema) = fresh_schema().await;
    let d = common::shipped_under_prefix("tracesg");
    let port = free_port();
    let mut env = collector.env("engine-grpc");
    env.push(("PORT".into(), port.to_string()));
    env.push(("TRACE_DETAIL".into(), "steps".into()));
    let _engine = engine(&d, &["serve"], &database, &env);
    let calls: Vec<String> = (0..2).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for call in &calls {
        assert_eq!(post(port, call, None).await, 200);
    }
    let db = pg(&schema).await;
    sql_eventually(&db, "SELECT count(*) FROM call_logs", 2).await;
    let spans = collector
        .wait("two events' spans over gRPC", |s| {
            named(s, "sink.write").len() >= 2
        })
        .await;
    assert_one_trace_per_event(&spans, 2, Detail::Steps);
    assert!(spans.iter().all(|s| s.service == "engine-grpc"));
}

/// A collector that accepts connections and never answers: every request is still answered
/// 2xx and every event written; the lost spans are counted in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_changes_nothing_for_traffic() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    // accepted and held, never read: an export waits for its 5 s timeout
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in hole.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let (database, schema) = fresh_schema().await;
    let d = common::shipped_under_prefix("tracesd");
    let port = free_port();
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{hole_port}"),
        ),
        ("PORT".to_string(), port.to_string()),
    ];
    let _engine = engine(&d, &["serve"], &database, &env);
    for i in 0..50 {
        let call = uuid::Uuid::new_v4().to_string();
        assert_eq!(post(port, &call, None).await, 200, "request {i}");
    }
    sql_eventually(&pg(&schema).await, "SELECT count(*) FROM call_logs", 50).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = common::metrics_of(port).await;
        if metrics
            .lines()
            .any(|l| l.starts_with("engine_trace_spans_dropped_total{reason=\"export_failed\"}"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dropped spans counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !held.lock().unwrap().is_empty(),
        "the engine tried the collector"
    );
}
