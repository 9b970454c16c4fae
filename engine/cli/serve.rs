//! `engine serve` and `engine worker`: load, refuse to start with every problem (JSON lines in
//! production), check the sink tables in production, install logging, Sentry and alerts, serve.

use std::path::Path;
use std::process::ExitCode;

use super::{env_source, started};
use crate::diagnostics::{self, Diagnostic, Format};

/// Install logging (and, with `traces`, the OpenTelemetry layer exporting spans on `runtime`);
/// the returned guard flushes the spans still queued when dropped.
pub(super) fn init_tracing(
    production: bool,
    sentry: bool,
    traces: Option<(&crate::ops::trace::TraceConfig, &tokio::runtime::Handle)>,
) -> Option<crate::ops::trace::Tracing> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // JSON lines in production, request fields at the top level (`ops::logs`); readable lines
    // elsewhere, coloured only on a terminal without NO_COLOR. The Sentry layer only with SENTRY_DSN: even with no client bound it
    // clones a scope on every span entered, a few percent of a request's time.
    let (otel, started, failed) = match traces.map(|(c, rt)| crate::ops::trace::start(c, rt)) {
        Some(Ok((tracer, started))) => (Some(tracer), Some(started), None),
        Some(Err(e)) => (None, None, Some(e)),
        None => (None, None, None),
    };
    let otel = otel.map(otel_layer);
    // RUST_LOG chooses the log lines (and what Sentry sees), never which spans are exported: a
    // deployment quieting its logs to `warn` still gets every event's trace. So the filter is
    // on the log layers only; the OpenTelemetry layer has its own (`otel_layer`).
    let logs = sentry.then(sentry::integrations::tracing::layer);
    let json = crate::ops::logs::FlatJson::default();
    let json_lines = production.then(|| {
        tracing_subscriber::fmt::layer()
            .fmt_fields(crate::ops::logs::span_fields())
            .event_format(json.clone())
            .with_writer(std::io::stderr)
    });
    let readable_lines = (!production).then(|| {
        tracing_subscriber::fmt::layer()
            .compact()
            .fmt_fields(crate::ops::logs::text_fields())
            .with_ansi(crate::ops::logs::colour())
            .with_writer(std::io::stderr)
    });
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(
            Layer::and_then(Layer::and_then(logs, json_lines), readable_lines).with_filter(filter),
        )
        .try_init();
    // JSON lines carry their span's trace and span ids, read through the installed subscriber
    tracing::dispatcher::get_default(|d| json.traces_of(d));
    match (&started, failed) {
        (Some(_), _) => tracing::info!("traces go to the OTLP endpoint (OTEL_EXPORTER_OTLP_*)"),
        (None, Some(e)) => {
            tracing::error!(error = &e as &dyn std::error::Error, "traces are off")
        }
        _ => {}
    }
    started
}

/// The OpenTelemetry layer: the engine's own spans only (not the HTTP or gRPC client's inside an
/// export), and no log events as span events (the spans carry their outcome as attributes).
fn otel_layer<S>(tracer: opentelemetry_sdk::trace::Tracer) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    // what a span costs on the request path, kept small: no busy/idle timings (two clock reads
    // per poll), no code location, thread, level or target attributes, and its context not
    // made the thread's current one on every entry (attached and detached on each poll of an
    // instrumented future: ~1,300 instructions, 14 times a request). What needs a span's
    // context asks for it: a stored or outgoing `traceparent` (`ops::trace::traceparent_of`),
    // a JSON log line (`ops::logs::FlatJson`)
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        // the engine's spans down to `info` (every span the trace design names), whatever
        // RUST_LOG says: that variable chooses log lines
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && *m.level() <= tracing::Level::INFO && m.target().starts_with("engine")
        }))
}

/// Traces alone, for a command that logs nothing but exports spans (`engine events replay`),
/// on the current runtime; `None` when the environment sets no OTLP endpoint.
pub(super) fn init_traces_only(
    source: &crate::env::EnvSource,
) -> Option<crate::ops::trace::Tracing> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let config = crate::ops::trace::TraceConfig::from_source(source)?;
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    match crate::ops::trace::start(&config, &runtime) {
        Ok((tracer, started)) => {
            let _ = tracing_subscriber::registry()
                .with(otel_layer(tracer))
                .try_init();
            Some(started)
        }
        Err(e) => {
            eprintln!("engine: traces are off: {}", crate::diagnostics::chain(&e));
            None
        }
    }
}

/// What `serve` runs.
#[derive(Debug, Clone)]
pub(super) enum Mode {
    Serve(crate::server::ServeOptions),
    Worker,
}

pub(super) fn serve(dir: &Path, env_file: Option<&Path>, mode: Mode) -> ExitCode {
    let source = match env_source(env_file) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let production = source.get("NODE_ENV") == Some("production");
    let runtime = match started(tokio::runtime::Builder::new_multi_thread()) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let traces = crate::ops::trace::TraceConfig::from_source(&source);
    let _traces = init_tracing(
        production,
        source.get("SENTRY_DSN").is_some(),
        traces.as_ref().map(|c| (c, runtime.handle())),
    );
    let (project, plan) = match crate::plan::load(dir, &source) {
        Ok(loaded) => loaded,
        Err(diags) => return refuse_to_start(&diags, dir, production),
    };
    for w in &project.warnings {
        tracing::warn!(file = %w.file, line = w.line, column = w.column, "{}", w.message);
    }
    if let Err(code) = check_tables_at_boot(&runtime, &project, dir) {
        return code;
    }
    let result = runtime.block_on(async move {
        match mode {
            Mode::Serve(opts) => crate::server::serve(project, plan, opts).await,
            Mode::Worker => crate::server::serve_workers(project, plan).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::from(1)
        }
    }
}

/// In production, every postgres sink's table is checked before the engine takes traffic: a table
/// that would dead-letter every event refuses the boot (the deploy fails, the previous version
/// keeps serving). A database that cannot be reached does not: ingest still works without it (the
/// queue holds events), and `/ready` reports the database.
pub(super) fn check_tables_at_boot(
    runtime: &tokio::runtime::Runtime,
    project: &crate::config::Project,
    dir: &Path,
) -> Result<(), ExitCode> {
    let Some(url) = project
        .settings
        .database_url
        .as_deref()
        .filter(|_| project.env.is_production())
    else {
        return Ok(());
    };
    let fixtures = crate::table_check::default_fixtures(dir);
    // a boot judges the tables as they are: pending migrations are `engine migrate`'s
    let options = crate::table_check::CheckOptions {
        fixtures: &fixtures,
        memo: crate::table_check::Memo::Reuse,
        migrations: None,
    };
    match runtime.block_on(crate::table_check::check_project(project, url, &options)) {
        Ok(problems) if problems.iter().all(Diagnostic::is_warning) => {
            log_diagnostics(&problems);
            tracing::info!(
                "table check: every postgres sink's table takes what its pipeline is known to write"
            );
            Ok(())
        }
        Ok(problems) => Err(refuse_to_start(&problems, dir, true)),
        Err(e) => {
            tracing::error!(
                error = &e as &dyn std::error::Error,
                "table check could not run; starting anyway (events queue until the database answers)"
            );
            Ok(())
        }
    }
}

/// Each finding as one log line (a JSON line in production) at its severity, located.
fn log_diagnostics(diags: &[Diagnostic]) {
    for d in diags {
        if d.is_warning() {
            tracing::warn!(file = %d.file, line = d.line, column = d.column, pointer = %d.pointer, "{}", d.message);
        } else {
            tracing::error!(file = %d.file, line = d.line, column = d.column, pointer = %d.pointer, "{}", d.message);
        }
    }
}

/// Every problem, then one line saying the engine will not start: readable text in
/// development, JSON lines in production like every other production log line (Render's log
/// search and any shipper index them).
pub(super) fn refuse_to_start(diags: &[Diagnostic], dir: &Path, production: bool) -> ExitCode {
    let errors = diags.iter().filter(|d| !d.is_warning()).count();
    let summary = format!(
        "refusing to start: {errors} problem{} in {}",
        if errors == 1 { "" } else { "s" },
        dir.display()
    );
    if !production {
        eprint!("{}", diagnostics::render(diags, Format::Text));
        eprintln!("engine: {summary}");
        return ExitCode::from(1);
    }
    log_diagnostics(diags);
    tracing::error!(problems = errors, "{summary}");
    ExitCode::from(1)
}
