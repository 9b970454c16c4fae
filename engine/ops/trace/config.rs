//! What the `OTEL_*` variables (and the engine's `TRACE_DETAIL`) ask of traces: the exporter's
//! endpoint, protocol and headers, the resource, the sampler and how many spans an event makes.
//! Read once at boot from the environment (`EnvSource`); `ops::trace::start` builds from it.

use crate::env::EnvSource;
use opentelemetry_sdk::trace::Sampler;

/// The wire protocol of the OTLP exporter (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`, the specification's default: POST to `<endpoint>/v1/traces`.
    HttpProtobuf,
    /// `grpc`: the collector's gRPC port (4317).
    Grpc,
}

/// How many spans an event makes (`TRACE_DETAIL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// `event`, the default: the request span and each attempt's span, the trace of an event in
    /// two spans (what an attempt's outcome and the request's status say is on them).
    Event,
    /// `steps`: also a span per step, the request's four and an attempt's transform and sink
    /// writes.
    Steps,
}

/// What the `OTEL_*` variables (and `TRACE_DETAIL`) ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Where spans go: for HTTP the full URL of the traces path.
    pub endpoint: String,
    pub protocol: Protocol,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: sent with every export (an API key: never logged).
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, besides `service.name`.
    pub resource: Vec<(String, String)>,
    pub sampler: SamplerConfig,
    pub detail: Detail,
}

/// `OTEL_TRACES_SAMPLER` and `_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl SamplerConfig {
    pub(super) fn sampler(self) -> Sampler {
        let parent = |root: Sampler| Sampler::ParentBased(Box::new(root));
        match self {
            SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
            SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
            SamplerConfig::Ratio(r) => Sampler::TraceIdRatioBased(r),
            SamplerConfig::ParentBasedAlwaysOn => parent(Sampler::AlwaysOn),
            SamplerConfig::ParentBasedAlwaysOff => parent(Sampler::AlwaysOff),
            SamplerConfig::ParentBasedRatio(r) => parent(Sampler::TraceIdRatioBased(r)),
        }
    }
}

impl TraceConfig {
    /// The configuration the environment gives, `None` when tracing is off: no endpoint, or
    /// `OTEL_SDK_DISABLED=true`. Values the env schema refuses never get here at boot; parsing
    /// is lenient anyway (an unknown sampler is the default one).
    pub fn from_source(source: &EnvSource) -> Option<TraceConfig> {
        let get = |name: &str| source.get(name).map(str::trim).filter(|v| !v.is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL") {
            Some("grpc") => Protocol::Grpc,
            _ => Protocol::HttpProtobuf,
        };
        // the signal's own endpoint is used as it is; the generic one gets the signal's path
        // (the OTLP exporter specification)
        let endpoint = match (get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), protocol) {
            (Some(url), _) => url.to_string(),
            (None, Protocol::HttpProtobuf) => format!(
                "{}/v1/traces",
                get("OTEL_EXPORTER_OTLP_ENDPOINT")?.trim_end_matches('/')
            ),
            (None, Protocol::Grpc) => get("OTEL_EXPORTER_OTLP_ENDPOINT")?.to_string(),
        };
        let resource: Vec<(String, String)> = get("OTEL_RESOURCE_ATTRIBUTES")
            .map(pairs)
            .unwrap_or_default();
        let service_name = get("OTEL_SERVICE_NAME")
            .map(str::to_string)
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "engine".to_string());
        Some(TraceConfig {
            endpoint,
            protocol,
            headers: get("OTEL_EXPORTER_OTLP_HEADERS")
                .map(pairs)
                .unwrap_or_default(),
            service_name,
            resource: resource
                .into_iter()
                .filter(|(k, _)| k != "service.name")
                .collect(),
            sampler: sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG")),
            detail: match get("TRACE_DETAIL") {
                Some("steps") => Detail::Steps,
                _ => Detail::Event,
            },
        })
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (the W3C Baggage form both `OTEL_*` lists
/// use); pairs without `=` are skipped.
fn pairs(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            // only `%XX` decoded: a value's own `=` (base64 padding) and `+` stay as they are
            let value = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            Some((k.trim().to_string(), value.into_owned()))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn sampler(name: Option<&str>, arg: Option<&str>) -> SamplerConfig {
    let ratio = arg
        .and_then(|a| a.parse::<f64>().ok())
        .filter(|r| (0.0..=1.0).contains(r))
        .unwrap_or(1.0);
    match name {
        Some("always_on") => SamplerConfig::AlwaysOn,
        Some("always_off") => SamplerConfig::AlwaysOff,
        Some("traceidratio") => SamplerConfig::Ratio(ratio),
        Some("parentbased_always_off") => SamplerConfig::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => SamplerConfig::ParentBasedRatio(ratio),
        _ => SamplerConfig::ParentBasedAlwaysOn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(vars: &[(&str, &str)]) -> EnvSource {
        EnvSource::from_pairs(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(TraceConfig::from_source(&source(&[])), None);
        assert_eq!(
            TraceConfig::from_source(&source(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ])),
            None
        );
    }

    #[test]
    fn the_standard_variables_configure_the_exporter() {
        let c = TraceConfig::from_source(&source(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.honeycomb.io/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-honeycomb-team=abc%3D1,x-other = two",
            ),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=hooks",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]))
        .unwrap();
        assert_eq!(c.endpoint, "https://api.honeycomb.io/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            c.headers,
            vec![
                ("x-honeycomb-team".to_string(), "abc=1".to_string()),
                ("x-other".to_string(), "two".to_string())
            ]
        );
        assert_eq!(c.service_name, "hooks");
        assert_eq!(
            c.resource,
            vec![("deployment.environment".to_string(), "prod".to_string())]
        );
        assert_eq!(c.sampler, SamplerConfig::ParentBasedRatio(0.25));
        assert_eq!(c.detail, Detail::Event);
        // Grafana Cloud's basic credentials: base64 with its `=` padding and a `+`, the space
        // written %20
        assert_eq!(
            pairs("Authorization=Basic%20MTIz+NDU2Ng=="),
            vec![(
                "Authorization".to_string(),
                "Basic MTIz+NDU2Ng==".to_string()
            )]
        );

        let g = TraceConfig::from_source(&source(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "webhooks"),
            ("TRACE_DETAIL", "steps"),
        ]))
        .unwrap();
        assert_eq!(
            (g.endpoint.as_str(), g.protocol),
            ("http://tempo:4317", Protocol::Grpc)
        );
        assert_eq!(g.service_name, "webhooks");
        assert_eq!(g.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert_eq!(g.detail, Detail::Steps);
        let t = TraceConfig::from_source(&source(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://jaeger:4318/v1/traces",
        )]))
        .unwrap();
        assert_eq!(t.endpoint, "http://jaeger:4318/v1/traces");
        assert_eq!(t.service_name, "engine");
    }
}
