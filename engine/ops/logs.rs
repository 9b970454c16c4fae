//! How log lines are written: JSON lines in production, readable lines elsewhere.
//!
//! Production lines are flat JSON objects: `timestamp`, `level`, `target`, then the fields of the
//! spans the event is in — `request_id`, `pipeline`, `event_id` of the request span — then the
//! event's own fields (`message`, ...), all at the top level (with `trace_id` and `span_id` while
//! traces are exported), where log pipelines (Render's log
//! streams, Datadog, Loki) index them. Readable lines carry ANSI colours only when stderr is a
//! terminal and `NO_COLOR` is not set (<https://no-color.org>). Their fields are written by
//! [`text_fields`], which escapes control characters: a value from a request (a dead letter's
//! reason, a header) holding a newline or an ANSI escape cannot start a forged line of its own
//! or repaint the terminal. JSON lines are escaped by JSON itself.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether readable lines may carry colours: stderr is a terminal and NO_COLOR is unset or empty.
pub fn colour() -> bool {
    colour_for(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The production line format (use with `.fmt_fields(JsonFields::new())`, so span fields are
/// kept as JSON).
#[derive(Clone, Default)]
pub struct FlatJson {
    /// The subscriber the lines' spans live in, once it is installed ([`FlatJson::traces_of`]):
    /// a line reads its span's trace and span ids through it. Inside the subscriber, writing a
    /// line, the current one cannot be reached, and the OpenTelemetry layer does not make each
    /// span's context the thread's current one on every entry (that cost more than a request's
    /// other span work).
    traces: std::sync::Arc<std::sync::OnceLock<tracing::dispatcher::WeakDispatch>>,
}

impl FlatJson {
    /// Lines carry the trace and span ids of their spans in `dispatch`, the installed
    /// subscriber (while traces are exported).
    pub fn traces_of(&self, dispatch: &tracing::Dispatch) {
        let _ = self.traces.set(dispatch.downgrade());
    }

    /// The trace and span ids of the innermost exported span a line is in.
    fn ids<S>(
        &self,
        ctx: &FmtContext<'_, S, impl for<'a> FormatFields<'a> + 'static>,
    ) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        if !super::trace::on() {
            return None;
        }
        let dispatch = self.traces.get()?.upgrade()?;
        ctx.event_scope()?
            .find_map(|span| super::trace::ids_of(&span.id(), &dispatch))
    }
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        // outermost span first, so an inner span's field wins over an outer one's
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(fields.as_str()) {
                    line.extend(m);
                }
            }
        }
        // the trace this line belongs to, while traces are exported (`ops::trace`)
        if let Some((trace_id, span_id)) = self.ids(ctx) {
            line.insert("trace_id".into(), Value::String(trace_id));
            line.insert("span_id".into(), Value::String(span_id));
        }
        event.record(&mut LogFields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The readable layer's field formatter: `name=value` pairs (the message bare), every control
/// character written as an escape (`\n`, `\r`, `\t`, `\u{1b}`).
pub fn text_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            let raw = format!("{value:?}");
            let text = escape_controls(&raw);
            if field.name() == "message" {
                write!(w, "{text}")
            } else {
                write!(w, "{}={text}", field.name())
            }
        },
    )
    .delimited(" ")
}

/// `text` with each control character escaped.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The JSON field formatter the production layer stores span fields with.
pub fn span_fields() -> JsonFields {
    JsonFields::new()
}

/// An event's fields into the line.
struct LogFields<'a>(&'a mut Map<String, Value>);

impl Visit for LogFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    /// An error field (`error = &e as &dyn Error`) with its whole chain of causes.
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = crate::diagnostics::chain(value);
        self.0.insert(field.name().into(), Value::String(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn request_fields_are_at_the_top_level_of_each_line() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(span_fields())
                .event_format(FlatJson::default())
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "req-1",
                pipeline = tracing::field::Empty,
                event_id = tracing::field::Empty
            );
            let _in = span.enter();
            span.record("pipeline", "vapi");
            span.record("event_id", "evt-9");
            tracing::warn!(reason = "bad_signature", n = 3, "verification failed");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["request_id"], "req-1", "{text}");
        assert_eq!(line["pipeline"], "vapi", "{text}");
        assert_eq!(line["event_id"], "evt-9", "{text}");
        assert_eq!(line["message"], "verification failed");
        assert_eq!(line["reason"], "bad_signature");
        assert_eq!(line["n"], 3);
        assert_eq!(line["level"], "WARN");
        assert!(line.get("span").is_none(), "{text}");
    }

    #[test]
    fn lines_in_an_exported_span_carry_its_trace_and_span_ids() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        crate::ops::trace::on_for_tests();
        let json = FlatJson::default();
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            // as `engine serve` has it: a span's context never made the thread's current one
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("test"))
                    .with_context_activation(false),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(span_fields())
                    .event_format(json.clone())
                    .with_writer(move || out.clone()),
            );
        let traceparent = tracing::subscriber::with_default(subscriber, || {
            tracing::dispatcher::get_default(|d| json.traces_of(d));
            let span = tracing::info_span!("request", request_id = "req-2");
            let _in = span.enter();
            tracing::warn!("inside");
            crate::ops::trace::traceparent_of(&span).expect("a traceparent")
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        // 00-<trace id>-<span id>-01
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(line["trace_id"], parts[1], "{text}");
        assert_eq!(line["span_id"], parts[2], "{text}");
        assert_eq!(line["request_id"], "req-2");
    }

    #[test]
    fn readable_lines_escape_control_characters() {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .compact()
                .with_ansi(false)
                .fmt_fields(text_fields())
                .with_writer(move || out.clone()),
        );
        let reason =
            "bad row\n2026-12-04T00:00:00Z  INFO console: signed in client_ip=6.6.6.6\u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(reason = %reason, "dead-lettered");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("dead-lettered reason=bad row\\n2026"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(escape_controls("a\tb\r"), "a\\tb\\r");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_for(true, None));
        assert!(colour_for(true, Some(std::ffi::OsStr::new(""))));
        assert!(!colour_for(true, Some(std::ffi::OsStr::new("1"))));
        assert!(!colour_for(false, None));
    }
}
