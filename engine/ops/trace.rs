//! Traces over OpenTelemetry: one trace per event, from the request to the row
//! (docs/observability.md).
//!
//! ```text
//! request span (an incoming `traceparent` its parent)      tracing span "request" (dispatch)
//!   ├ rate_limit · verify · respond · enqueue              child spans, TRACE_DETAIL=steps only
//!   └ the event stored with the request span's `traceparent` (EventInput::trace)
//!         ... the queue: another process, an hour later, after a restart ...
//! attempt span (parent: the stored traceparent)            worker::traced
//!   ├ transform · sink.write (TRACE_DETAIL=steps only)     outcome: written / dropped / retry /
//!   └ outgoing calls carry `traceparent` (inject)                   dead_letter
//! archive replay: a new trace per event, linked to the original one
//! ```
//!
//! Spans are tracing's spans, exported by `tracing-opentelemetry` through the SDK's batch
//! processor and the OTLP exporter (HTTP/protobuf through the engine's reqwest client, or gRPC
//! through tonic). Configured by the standard `OTEL_*` variables; off when no endpoint is set,
//! and then nothing here runs on the request path but one relaxed atomic load ([`on`]).
//!
//! How many spans an event makes is [`Detail`] (`TRACE_DETAIL`): by default two, the request
//! and each attempt, since every span costs ~3 µs of CPU here and is what tracing backends bill
//! by; `steps` adds a span per step (four at ingest, two per attempt) for finding a slow step.
//!
//! A collector that is down or slow never slows a request: a span ends into a bounded queue
//! ([`BOUND`] spans waiting or being exported); past it the span is dropped and counted
//! (`engine_trace_spans_dropped_total{reason="queue_full"}`), as are the spans of a failed export
//! (`reason="export_failed"`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

mod config;
pub use config::{Detail, Protocol, SamplerConfig, TraceConfig};

/// Spans ended and not yet exported, at most: past it new spans are dropped (and counted)
/// rather than held, so a dead collector costs a bounded amount of memory.
pub const BOUND: usize = 4096;

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether spans are exported (set once, when tracing starts).
static ON: AtomicBool = AtomicBool::new(false);

/// Whether each step is a span of its own (`TRACE_DETAIL=steps`, set when tracing starts).
static STEPS: AtomicBool = AtomicBool::new(false);

/// Whether tracing is on: spans beyond the request's own are made only then.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether tracing is on with a span per step (`TRACE_DETAIL=steps`): the request's
/// `rate_limit`, `verify`, `respond` and `enqueue`, an attempt's `transform` and `sink.write`.
#[inline]
pub fn steps() -> bool {
    STEPS.load(Ordering::Relaxed)
}

/// Tracing on for a unit test that installs its own OpenTelemetry layer.
#[cfg(test)]
pub(crate) fn on_for_tests() {
    ON.store(true, Ordering::Relaxed);
}

/// A child span of the current one, made only while tracing is on with a span per step (else
/// `Span::none()`, which costs nothing): `trace::step!("verify")`.
#[macro_export]
macro_rules! trace_step {
    ($name:literal $(, $($field:tt)*)?) => {
        if $crate::ops::trace::steps() {
            tracing::info_span!($name $(, $($field)*)?)
        } else {
            tracing::Span::none()
        }
    };
}
pub use trace_step as step;

/// Tracing while this lives: dropping it flushes the spans still queued (bounded by the export
/// timeout) and shuts the exporter down.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        ON.store(false, Ordering::Relaxed);
        STEPS.store(false, Ordering::Relaxed);
        let shutdown = || self.provider.shutdown_with_timeout(EXPORT_TIMEOUT);
        // the last export runs on the runtime: a runtime thread waiting for it lets the others
        // run it
        let _ = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(shutdown),
            _ => shutdown(),
        };
    }
}

/// Why traces could not be turned on (the traffic is served without them). Names the setting,
/// never a header's value.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the OTLP exporter's HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("the OTLP exporter could not be built")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Start exporting: the tracer `tracing-opentelemetry`'s layer exports through, and the guard.
/// Called inside the process's runtime (`runtime` runs the exports; gRPC's channel lives on it).
pub fn start(
    config: &TraceConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<(opentelemetry_sdk::trace::Tracer, Tracing), TraceError> {
    let _inside = runtime.enter();
    let exporter = exporter(config, runtime)?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batches = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(BOUND)
            .with_max_export_batch_size(1024)
            .with_scheduled_delay(Duration::from_millis(500))
            .build(),
    )
    .build();
    let mut resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
    for (k, v) in &config.resource {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(k.clone(), v.clone()));
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Bounded {
            inner: batches,
            queued,
        })
        .with_sampler(config.sampler.sampler())
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("engine");
    STEPS.store(config.detail == Detail::Steps, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    Ok((tracer, Tracing { provider }))
}

/// The OTLP exporter the configuration names.
fn exporter(
    config: &TraceConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let built = match config.protocol {
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(ExportClient {
                client: reqwest::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                    .map_err(TraceError::Client)?,
                runtime: runtime.clone(),
            })
            .with_endpoint(config.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(config.headers.iter().cloned().collect::<HashMap<_, _>>())
            .build(),
        Protocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &config.headers {
                if let (Ok(k), Ok(v)) = (
                    k.to_ascii_lowercase()
                        .parse::<tonic::metadata::MetadataKey<_>>(),
                    v.parse(),
                ) {
                    metadata.insert(k, v);
                }
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .with_metadata(metadata);
            if config.endpoint.starts_with("https://") {
                builder = builder
                    .with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
            }
            builder.build()
        }
    };
    // the error names the setting, never a header's value
    built.map_err(TraceError::Exporter)
}

/// The HTTP exporter's transport: the engine's own reqwest (rustls, the same TLS roots as every
/// other outgoing call). The batch processor exports from its own thread, so each request runs
/// on the process's runtime and the thread only waits for it.
#[derive(Debug)]
struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<bytes::Bytes>,
    ) -> Result<opentelemetry_http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let sent = self.runtime.spawn(async move {
            let mut request = client.request(parts.method, parts.uri.to_string());
            for (name, value) in &parts.headers {
                request = request.header(name, value);
            }
            let answer = request.body(body).send().await?;
            let status = answer.status();
            // the collector's answer is small (a partial-success message at most)
            let body = answer.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        Ok(opentelemetry_http::Response::builder()
            .status(status)
            .body(body)?)
    }
}

/// The exporter, counting what it exported and what a failed export lost.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    /// Spans handed to the batch processor and not yet exported ([`Bounded`] adds, this takes).
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::Relaxed);
        match &result {
            Ok(()) => metrics::counter!("engine_trace_spans_exported_total").increment(n as u64),
            Err(_) => dropped("export_failed", n),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource)
    }
}

/// The batch processor behind a bound it never reaches: a span that would make more than
/// [`BOUND`] wait is dropped here and counted, so the processor's own queue (as large) never
/// overflows uncounted.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx)
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= BOUND {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource)
    }
}

fn dropped(reason: &'static str, n: usize) {
    metrics::counter!("engine_trace_spans_dropped_total", "reason" => reason).increment(n as u64);
}

/// The request span's parent: the caller's `traceparent` (a proxy's or provider's), when it
/// sends a valid one.
pub fn adopt_caller(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx =
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// The W3C `traceparent` of `span`, what a stored event carries to its worker; `None` while
/// tracing is off.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !on() {
        return None;
    }
    let cx = span.context();
    let span = cx.span();
    let sc = span.span_context();
    // what `TraceContextPropagator::inject_context` writes (version 00, only the sampled flag),
    // written at once rather than through a carrier map, and as hex from the ids' bytes rather
    // than through the formatter (~2,000 instructions a request, per callgrind)
    if !sc.is_valid() {
        return None;
    }
    let flags = (sc.trace_flags() & opentelemetry::trace::TraceFlags::SAMPLED).to_u8();
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex::encode_to_slice(sc.trace_id().to_bytes(), &mut out[3..35]).ok()?;
    hex::encode_to_slice(sc.span_id().to_bytes(), &mut out[36..52]).ok()?;
    hex::encode_to_slice([flags], &mut out[53..55]).ok()?;
    String::from_utf8(out.to_vec()).ok()
}

/// A stored `traceparent` as the propagator's carrier (no map built for one value).
struct StoredParent<'a>(&'a str);

impl opentelemetry::propagation::Extractor for StoredParent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// The context a stored `traceparent` names (a remote parent), when it is valid.
pub fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    if let Some(sc) = written_by_us(traceparent) {
        return Some(opentelemetry::Context::new().with_remote_span_context(sc));
    }
    // any other form the W3C propagator accepts (a later version, surrounding spaces, ...)
    let cx = TraceContextPropagator::new().extract(&StoredParent(traceparent));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The span context of a `traceparent` in the one form [`traceparent_of`] writes (version 00,
/// 55 characters of lowercase hex and dashes), read in place: what the propagator makes of it
/// (a remote parent, only the sampled flag kept, no trace state), without its split into a
/// list and its parse of each part through text (~2,000 instructions a worker's attempt, per
/// callgrind). `None` for anything else, which the propagator then reads.
fn written_by_us(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let b = traceparent.as_bytes();
    let lower_hex = |part: &[u8]| part.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if b.len() != 55
        || !b.starts_with(b"00-")
        || b[35] != b'-'
        || b[52] != b'-'
        || !lower_hex(&b[3..35])
        || !lower_hex(&b[36..52])
        || !lower_hex(&b[53..55])
    {
        return None;
    }
    let (mut trace, mut span, mut flags) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    hex::decode_to_slice(&b[3..35], &mut trace).ok()?;
    hex::decode_to_slice(&b[36..52], &mut span).ok()?;
    hex::decode_to_slice(&b[53..55], &mut flags).ok()?;
    let sc = SpanContext::new(
        TraceId::from_bytes(trace),
        SpanId::from_bytes(span),
        TraceFlags::new(flags[0]) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The trace id a stored `traceparent` names (`00-<trace id>-<span id>-<flags>`): what
/// `engine events show` and the console print.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Continue a stored event's trace in `span` (a worker's attempt), else leave it where it is
/// (the current span's child, or a new trace).
pub fn continue_in(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(context_of) {
        let _ = span.set_parent(cx);
    }
}

/// Link `span` to the trace a stored `traceparent` names (an archive replay's span: a new
/// trace, linked to the original request's).
pub fn link_to(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(context_of) {
        span.add_link(cx.span().span_context().clone());
    }
}

/// An outgoing call carries the current span's `traceparent` (HTTP sinks, connection calls,
/// token refreshes) while tracing is on.
pub fn inject(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    if !on() {
        return request;
    }
    match traceparent_of(&tracing::Span::current()) {
        Some(value) => request.header("traceparent", value),
        None => request,
    }
}

/// The trace and span ids of `span` in `dispatch` (a log line's), `None` for a span the
/// OpenTelemetry layer does not export.
pub fn ids_of(span: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(span, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_calls_carry_the_current_spans_traceparent() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        on_for_tests();
        // as `engine serve` has it: a span's context never made the thread's current one
        let subscriber = tracing_subscriber::registry().with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("test"))
                .with_context_activation(false),
        );
        let client = reqwest::Client::new();
        let (sent, span_tp, propagated) = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("sink.write");
            let _in = span.enter();
            let request = inject(client.get("http://127.0.0.1:9/x")).build().unwrap();
            let mut carrier = HashMap::new();
            TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
            (
                request.headers().get("traceparent").cloned(),
                traceparent_of(&span),
                carrier.remove("traceparent"),
            )
        });
        let sent = sent.expect("a traceparent header");
        assert_eq!(Some(sent.to_str().unwrap().to_string()), span_tp);
        // written as the W3C propagator writes it, and read back as the same span
        assert_eq!(span_tp, propagated);
        let back = context_of(span_tp.as_deref().unwrap()).unwrap();
        assert_eq!(
            format!("{}", back.span().span_context().span_id()),
            span_tp.as_deref().unwrap().split('-').nth(2).unwrap()
        );
        // outside any span: nothing to carry
        let bare = inject(client.get("http://127.0.0.1:9/x")).build().unwrap();
        assert!(bare.headers().get("traceparent").is_none());
    }

    #[test]
    fn a_stored_traceparent_names_its_trace() {
        // the W3C Trace Context specification's example
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let cx = context_of(tp).unwrap();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(cx.span().span_context().is_remote());
        // all-zero ids are invalid (the specification), as is garbage
        assert!(context_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(context_of("not a traceparent").is_none());
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn a_stored_traceparent_reads_as_the_w3c_propagator_reads_it() {
        let propagator = |tp: &str| {
            let cx = TraceContextPropagator::new().extract(&StoredParent(tp));
            let sc = cx.span().span_context().clone();
            sc.is_valid().then_some(sc)
        };
        let ours = |tp: &str| context_of(tp).map(|cx| cx.span().span_context().clone());
        for tp in [
            // the specification's examples: sampled, and not
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            // flags other than "sampled" are dropped
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02",
            // not in the form written here: the propagator's rules decide
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(ours(tp), propagator(tp), "{tp:?}");
        }
        // the form written here: read without the propagator, to the same context
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = written_by_us(tp).unwrap();
        assert_eq!(Some(sc.clone()), propagator(tp));
        assert!(sc.is_remote() && sc.is_sampled());
    }
}
