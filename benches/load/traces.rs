//! `LOAD_TRACES=1`: every engine the load bench starts exports its traces (100 % sampled, the
//! default sampler) to an OTLP/HTTP receiver in this process, which decodes and counts the spans
//! that arrive. Its CPU is this process's, not the engines', so the cost bench (`--cost`) shows
//! what tracing adds to the engine per event.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The receiver's base URL, once started.
static ENDPOINT: OnceLock<String> = OnceLock::new();
/// Spans received.
static SPANS: AtomicU64 = AtomicU64::new(0);

/// The OTLP endpoint engines export to, when `LOAD_TRACES` asked for one.
pub fn endpoint() -> Option<&'static str> {
    ENDPOINT.get().map(String::as_str)
}

/// Spans received so far.
pub fn spans() -> u64 {
    SPANS.load(Ordering::Relaxed)
}

/// Start the receiver when `LOAD_TRACES=1`.
pub async fn start_if_asked() {
    if std::env::var("LOAD_TRACES").ok().as_deref() != Some("1") {
        return;
    }
    use salvo::conn::Acceptor;
    use salvo::prelude::*;
    #[handler]
    async fn export(req: &mut Request, res: &mut Response) {
        use prost::Message;
        let body = req
            .payload_with_max_size(64 << 20)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let decoded =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                body.as_slice(),
            );
        let n: usize = decoded
            .map(|r| {
                r.resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .map(|ss| ss.spans.len())
                    .sum()
            })
            .unwrap_or(0);
        SPANS.fetch_add(n as u64, Ordering::Relaxed);
        res.headers_mut().insert(
            "content-type",
            salvo::http::HeaderValue::from_static("application/x-protobuf"),
        );
        res.render("");
    }
    let acceptor = TcpListener::new("127.0.0.1:0").bind().await;
    let port = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .map(|a| a.port())
        .unwrap();
    let router = Router::new().push(Router::with_path("v1/traces").post(export));
    tokio::spawn(Server::new(acceptor).serve(router));
    let _ = ENDPOINT.set(format!("http://127.0.0.1:{port}"));
    println!(
        "traces: every engine exports to the OTLP receiver at 127.0.0.1:{port} (LOAD_TRACES=1)"
    );
}
