//! `/metrics`: the engine's counters, gauges and histograms in Prometheus text format.
//!
//! Code everywhere records through the `metrics` facade (`metrics::counter!` and friends); this
//! module installs the Prometheus recorder once per process, renders it for `/metrics`, and runs
//! the sampler that turns state into gauges every [`SAMPLE_EVERY`]: queue depth, pending,
//! delayed, dead letters and oldest age per queue, Postgres pool use, and the standard `process_*`
//! metrics (CPU, memory, open files, start time). Every engine metric is listed in [`NAMES`] with
//! its HELP text (registered with the recorder, and in docs/operations.md).
//!
//! Access: with METRICS_TOKEN set, `/metrics` needs `Authorization: Bearer <token>`; without it,
//! it is open outside production and answers 404 in production (metrics tell an attacker which
//! pipelines exist and how busy they are).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::{FilterLayer, Layer};

/// How often the sampler refreshes the gauges.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Latency buckets, seconds: 1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric the engine exports: name, type, labels, meaning.
pub const NAMES: &[(&str, &str, &str, &str)] = &[
    (
        "engine_http_requests_total",
        "counter",
        "pipeline, status",
        "answered requests; pipeline is `health`, `metrics`, `ready` or `-` (no route) for the engine's own paths",
    ),
    (
        "engine_http_request_duration_seconds",
        "histogram",
        "pipeline",
        "time from the request's arrival to its answer",
    ),
    (
        "engine_verify_failures_total",
        "counter",
        "pipeline, reason",
        "requests refused by verification (reason: missing_credentials, missing_header, malformed_header, empty_body, bad_signature, stale_timestamp, body_hash_mismatch, unknown_tenant, ip_not_allowed)",
    ),
    (
        "engine_dependency_up",
        "gauge",
        "dependency",
        "1 while the dependency answers, 0 during an outage: `redis` (the workers' reads), `redis_enqueue` (the request path's writes: 0 while Redis is down or full)",
    ),
    (
        "engine_dependency_failures_total",
        "counter",
        "dependency",
        "failed attempts to reach a dependency (each retry counts)",
    ),
    (
        "engine_rate_limited_total",
        "counter",
        "bucket",
        "requests answered 429",
    ),
    (
        "engine_rate_limit_backend_errors_total",
        "counter",
        "bucket",
        "rate-limit checks the backend (Redis) could not answer",
    ),
    (
        "engine_redis_group_calls_total",
        "counter",
        "",
        "calls the request path made to Redis (each carries a group of operations)",
    ),
    (
        "engine_redis_group_operations_total",
        "counter",
        "",
        "request-path Redis operations (rate checks, appends); divided by the calls: the mean group size",
    ),
    (
        "engine_events_queued_total",
        "counter",
        "pipeline",
        "events stored in the queue",
    ),
    (
        "engine_duplicates_total",
        "counter",
        "pipeline",
        "repeats within the dedupe window, answered and not stored again",
    ),
    (
        "engine_events_processed_total",
        "counter",
        "queue, outcome",
        "worker results: written, dropped, retried, dead_lettered",
    ),
    (
        "engine_dead_lettered_total",
        "counter",
        "queue",
        "events moved to the dead letters",
    ),
    (
        "engine_queue_lost_total",
        "counter",
        "queue",
        "times the consumer group was found gone (Redis restarted without persistence): events queued before are lost",
    ),
    (
        "engine_transform_duration_seconds",
        "histogram",
        "queue",
        "running a pipeline's transform steps on one event",
    ),
    (
        "engine_transform_failures_total",
        "counter",
        "queue, kind",
        "transform failures, retry or permanent",
    ),
    (
        "engine_event_latency_seconds",
        "histogram",
        "queue",
        "from the request's arrival to its rows written",
    ),
    ("engine_sink_rows_total", "counter", "sink", "rows written"),
    (
        "engine_archive_errors_total",
        "counter",
        "queue",
        "batches whose outcomes the event archive could not record (each event retried with backoff)",
    ),
    (
        "engine_trace_spans_exported_total",
        "counter",
        "",
        "spans the OTLP collector accepted (traces on: OTEL_EXPORTER_OTLP_ENDPOINT)",
    ),
    (
        "engine_trace_spans_dropped_total",
        "counter",
        "reason",
        "spans not exported: `queue_full` (4,096 already waiting: the collector is down or slow) or `export_failed` (the collector refused or did not answer in 5 s)",
    ),
    (
        "engine_sink_errors_total",
        "counter",
        "sink, kind",
        "sink write failures, retry or permanent",
    ),
    (
        "engine_tenant_secret_lookups_total",
        "counter",
        "result",
        "per-tenant secret lookups: hit (cache), miss (database) or busy (no place among the lookups at once)",
    ),
    (
        "engine_connections_refused_total",
        "counter",
        "cap",
        "connections closed at accept: over connections.max (total) or connections.per_ip (per_ip)",
    ),
    (
        "engine_queue_depth",
        "gauge",
        "queue",
        "entries in the work stream",
    ),
    (
        "engine_queue_pending",
        "gauge",
        "queue",
        "entries delivered and not yet acknowledged",
    ),
    (
        "engine_queue_delayed",
        "gauge",
        "queue",
        "retries waiting for their time",
    ),
    ("engine_queue_dead", "gauge", "queue", "dead letters kept"),
    (
        "engine_queue_oldest_age_seconds",
        "gauge",
        "queue",
        "age of the oldest entry in the work stream",
    ),
    (
        "engine_db_pool_connections",
        "gauge",
        "state",
        "Postgres pool connections: in_use, idle, max",
    ),
    (
        "engine_connection_calls_total",
        "counter",
        "connection, result",
        "respond-script calls to a connection: ok, refused, unavailable, timeout, unanswered, not_connected, disconnected",
    ),
    (
        "engine_connection_call_duration_seconds",
        "histogram",
        "connection",
        "a connection call, retries and token refresh included",
    ),
    (
        "engine_connection_token_refreshes_total",
        "counter",
        "provider, result",
        "OAuth access-token refreshes: ok, revoked (invalid_grant), failed",
    ),
    (
        "engine_reloads_total",
        "counter",
        "result",
        "pipeline reloads: ok or failed",
    ),
    (
        "engine_alerts_sent_total",
        "counter",
        "",
        "alert messages posted to Slack",
    ),
    (
        "engine_alerts_dropped_total",
        "counter",
        "",
        "alerts not sent: over the hourly cap or the queue to the sender full",
    ),
];

/// Register every metric's HELP text (and unit) with the recorder: what `promtool check
/// metrics` and dashboards read. The process collector's `process_*` metrics describe
/// themselves.
fn describe() {
    for (name, kind, _, meaning) in NAMES {
        let unit = if name.ends_with("_seconds") {
            Some(Unit::Seconds)
        } else if name.ends_with("_bytes") {
            Some(Unit::Bytes)
        } else {
            None
        };
        let help = meaning.to_string();
        match (*kind, unit) {
            ("counter", _) => metrics::describe_counter!(*name, help),
            ("gauge", Some(u)) => metrics::describe_gauge!(*name, u, help),
            ("gauge", None) => metrics::describe_gauge!(*name, help),
            (_, Some(u)) => metrics::describe_histogram!(*name, u, help),
            (_, None) => metrics::describe_histogram!(*name, help),
        }
    }
    process().describe();
}

/// The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_start_time_seconds`, ...), read by the sampler.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use. `None` when another recorder was
/// installed first (a host program's own): then `/metrics` says so instead of lying.
///
/// The recorder keeps every histogram observation in a buffer until "upkeep" folds it into the
/// buckets. Upkeep used to run only when `/metrics` was rendered, so a process nobody scraped
/// (`engine worker`, which has no HTTP port; `engine serve` in production without METRICS_TOKEN;
/// any instance between scrapes) kept 8 bytes and more per observation, a few per event, for ever:
/// RSS grew in a straight line with the events processed. A thread of its own now runs upkeep
/// every [`UPKEEP_EVERY`], whatever the runtime, so the buffers hold at most a few seconds of
/// observations.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            // The Redis pool crate (mobc) records its own metrics through the same facade, in
            // milliseconds and without descriptions: not the engine's to export.
            let filtered = FilterLayer::from_patterns(["mobc_"]).layer(recorder);
            metrics::set_global_recorder(filtered).ok()?;
            describe();
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are folded only when /metrics is read");
            }
            Some(handle)
        })
        .as_ref()
}

/// `engine_http_request_duration_seconds` of one pipeline or engine path.
fn request_duration(pipeline: impl Into<metrics::SharedString>) -> metrics::Histogram {
    metrics::histogram!("engine_http_request_duration_seconds", "pipeline" => pipeline)
}

/// `engine_http_requests_total` of one pipeline or engine path and status.
fn requests(pipeline: impl Into<metrics::SharedString>, status: u16) -> metrics::Counter {
    metrics::counter!("engine_http_requests_total", "pipeline" => pipeline, "status" => status.to_string())
}

/// A request to one of the engine's own paths (`health`, `console`, ...; `-` when unrouted)
/// answered, counted through the registry: these are few, and their labels are static.
pub fn own_path_answered(label: &'static str, status: u16, took: Duration) {
    request_duration(label).record(took.as_secs_f64());
    requests(label, status).increment(1);
}

/// One pipeline's request-path metrics (`engine_http_requests_total`,
/// `engine_http_request_duration_seconds`, `engine_events_queued_total`), each handle looked up
/// in the registry once, on first use (after [`handle`] installed the recorder at boot), instead
/// of on every request: a lookup builds the key's labels (a copy of the pipeline's name, the
/// status as text) and hashes them. Statuses outside 100-599 are counted through the registry.
/// The status table is made on the pipeline's first request: 12 KiB a pipeline that a thousand
/// pipelines, most of them quiet, would otherwise hold from the start (docs/benchmarks.md, "Many
/// pipelines").
pub struct PipelineMetrics {
    name: String,
    duration: OnceLock<metrics::Histogram>,
    queued: OnceLock<metrics::Counter>,
    /// `engine_http_requests_total` by status, 100-599: at most 500 handles.
    requests: OnceLock<Box<[OnceLock<metrics::Counter>]>>,
}

impl PipelineMetrics {
    pub fn new(name: &str) -> PipelineMetrics {
        PipelineMetrics {
            name: name.to_string(),
            duration: OnceLock::new(),
            queued: OnceLock::new(),
            requests: OnceLock::new(),
        }
    }

    /// A request answered with `status` after `took`.
    pub fn answered(&self, status: u16, took: Duration) {
        self.duration
            .get_or_init(|| request_duration(self.name.clone()))
            .record(took.as_secs_f64());
        let table = self
            .requests
            .get_or_init(|| (100..600).map(|_| OnceLock::new()).collect());
        match table.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot
                .get_or_init(|| requests(self.name.clone(), status))
                .increment(1),
            None => requests(self.name.clone(), status).increment(1),
        }
    }

    /// An event queued.
    pub fn queued(&self) {
        self.queued
            .get_or_init(
                || metrics::counter!("engine_events_queued_total", "pipeline" => self.name.clone()),
            )
            .increment(1);
    }
}

/// The exposition text.
pub fn render() -> Option<String> {
    let h = handle()?;
    h.run_upkeep();
    Some(h.render())
}

/// What the gauges are sampled from: the queues and the database pool of the app serving now.
pub struct Sources {
    pub queues: Vec<crate::queue::Queue>,
    pub pool: Option<deadpool_postgres::Pool>,
}

/// Refresh the gauges from what `current` gives (the app serving now, across reloads) every
/// [`SAMPLE_EVERY`], until it gives nothing.
pub fn start_sampler(current: impl Fn() -> Option<Sources> + Send + 'static) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let Some(sources) = current() else { break };
            sample(&sources).await;
        }
    });
}

/// One refresh of the gauges. The in-process queue has no pending or delayed entries to show.
pub async fn sample(sources: &Sources) {
    for q in &sources.queues {
        let name = q.name().to_string();
        match q.stats().await {
            Ok(s) => {
                metrics::gauge!("engine_queue_depth", "queue" => name.clone()).set(s.depth as f64);
                metrics::gauge!("engine_queue_dead", "queue" => name.clone()).set(s.dead as f64);
                if let crate::queue::Queue::Redis(_) = q {
                    metrics::gauge!("engine_queue_pending", "queue" => name.clone())
                        .set(s.pending as f64);
                    metrics::gauge!("engine_queue_delayed", "queue" => name.clone())
                        .set(s.delayed as f64);
                    metrics::gauge!("engine_queue_oldest_age_seconds", "queue" => name)
                        .set(s.oldest_age_ms.unwrap_or(0) as f64 / 1000.0);
                }
            }
            Err(e) => {
                tracing::debug!(queue = %name, error = &e as &dyn std::error::Error, "queue stats unavailable")
            }
        }
    }
    if let Some(pool) = &sources.pool {
        let s = pool.status();
        metrics::gauge!("engine_db_pool_connections", "state" => "in_use")
            .set(s.size.saturating_sub(s.available) as f64);
        metrics::gauge!("engine_db_pool_connections", "state" => "idle").set(s.available as f64);
        metrics::gauge!("engine_db_pool_connections", "state" => "max").set(s.max_size as f64);
    }
    process().collect();
}

/// Whether `/metrics` may be served to a request with this `Authorization` header.
pub fn allowed(token: Option<&str>, production: bool, authorization: Option<&str>) -> Access {
    match token {
        Some(t) => {
            let given = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("");
            if crate::verify::mac::secret_eq(given.as_bytes(), t.as_bytes()) {
                Access::Open
            } else {
                Access::Unauthorized
            }
        }
        None if production => Access::Disabled,
        None => Access::Open,
    }
}

/// The answer to a `/metrics` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Open,
    Unauthorized,
    Disabled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        assert_eq!(allowed(None, false, None), Access::Open);
        assert_eq!(allowed(None, true, None), Access::Disabled);
        assert_eq!(
            allowed(Some("s3cret-token-123456"), true, None),
            Access::Unauthorized
        );
        assert_eq!(
            allowed(
                Some("s3cret-token-123456"),
                true,
                Some("Bearer s3cret-token-123456")
            ),
            Access::Open
        );
        assert_eq!(
            allowed(
                Some("s3cret-token-123456"),
                false,
                Some("Bearer s3cret-token-12345")
            ),
            Access::Unauthorized
        );
    }

    #[test]
    fn every_name_is_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for (name, kind, _, _) in NAMES {
            assert!(name.starts_with("engine_"), "{name}");
            assert!(seen.insert(*name), "{name} twice");
            assert!(["counter", "gauge", "histogram"].contains(kind));
            if *kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }

    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../docs/operations.md");
        for (name, kind, _, _) in NAMES {
            assert!(
                doc.contains(&format!("| `{name}` | {kind} |")),
                "docs/operations.md lacks {name}"
            );
        }
    }

    #[test]
    fn histograms_are_folded_without_a_scrape() {
        // the recorder comes with its upkeep thread: histogram samples are folded into buckets
        // every UPKEEP_EVERY even in a process nobody scrapes (engine worker)
        assert!(handle().is_some());
        let threads = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        };
        // a thread names itself once it runs: give a just-spawned one a moment
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !threads().iter().any(|n| n == "metrics-upkeep")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let names = threads();
        assert!(names.iter().any(|n| n == "metrics-upkeep"), "{names:?}");
    }

    #[test]
    fn every_metric_has_help_and_the_pool_crates_own_are_not_exported() {
        let h = handle().expect("no other metrics recorder is installed in the unit tests");
        metrics::counter!("mobc_pool_connections_opened_total").increment(1);
        metrics::counter!("engine_reloads_total", "result" => "ok").increment(0);
        process().collect();
        let text = h.render();
        assert!(!text.contains("mobc_"), "{text}");
        assert!(
            text.contains("# HELP engine_reloads_total pipeline reloads: ok or failed"),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
