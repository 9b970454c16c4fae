//! Operating the engine: what an on-call engineer reads and receives.
//!
//! - [`metrics`]: `/metrics` in Prometheus text format, and the sampler behind its gauges
//! - [`ready`]: `/ready`, whether Redis and Postgres answer
//! - [`outage`]: a dependency's outage logged once when it starts, in summaries while it lasts,
//!   and once when it ends
//! - [`alerts`]: dead letters, lost queues and sink outages posted to Slack, aggregated
//! - [`errors`]: errors and panics to Sentry when SENTRY_DSN is set, secrets scrubbed
//! - [`logs`]: flat JSON lines in production (request fields at the top level), colour only on a
//!   terminal without NO_COLOR

pub mod alerts;
pub mod errors;
pub mod logs;
pub mod metrics;
pub mod outage;
pub mod ready;
pub mod trace;

use crate::config::Project;

/// What [`start`] turned on; keep it alive while serving (Sentry flushes when it drops).
pub struct Started {
    _sentry: Option<sentry::ClientInitGuard>,
}

/// Turn on what the environment asks for, once per process (`engine serve` / `engine worker`):
/// Slack alerts when SLACK_WEBHOOK_URL is set, Sentry when SENTRY_DSN is set.
pub fn start(project: &Project) -> Started {
    let ops = &project.ops;
    let sentry = ops.sentry_dsn.as_ref().and_then(|dsn| {
        let secrets = project.env.secret_values();
        let guard = errors::init(dsn.expose(), project.env.environment(), secrets);
        match &guard {
            Some(_) => tracing::info!("errors go to Sentry"),
            None => tracing::warn!("SENTRY_DSN is set but Sentry could not start"),
        }
        guard
    });
    if let Some(url) = &ops.slack_webhook_url {
        let host = std::env::var("RENDER_INSTANCE_ID")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "engine".into());
        let source = format!("{}, {host}", project.env.environment());
        match alerts::install(alerts::AlertsConfig::new(
            url.expose().to_string(),
            ops.alert_sink_outage,
            source,
        )) {
            Ok(()) => tracing::info!("alerts go to Slack"),
            Err(e) => tracing::warn!(error = %e, "alerts not installed"),
        }
    }
    Started { _sentry: sentry }
}
