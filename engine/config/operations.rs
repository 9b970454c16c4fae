//! The operational settings a deployment gives through its environment (not through pipeline
//! files): the encryption keys, the `/metrics` and console tokens, Sentry and Slack. Read once, at load, by
//! name in this one place; the rest of the engine gets them typed, secrets wrapped in [`Secret`]
//! so printing one (a log line, a `{:?}`, an error) shows `[secret]`, never the value.

use std::fmt;
use std::time::Duration;

use crate::env::Env;

/// A secret value: formatting it never shows it; [`Secret::expose`] hands it to the one place
/// that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the code that sends or uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret]")
    }
}

/// The OpenTelemetry variables the engine reads (`ops::trace`: traces over OTLP), and its own
/// `TRACE_DETAIL` (how many spans an event makes).
pub const TRACE_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
    "TRACE_DETAIL",
];

/// What operating the engine needs from the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Operations {
    /// ENCRYPTION_KEY: stored secrets and `encrypt:` sink fields.
    pub encryption_key: Option<Secret>,
    /// ENCRYPTION_KEY_PREVIOUS: the key being rotated out, read only.
    pub encryption_key_previous: Option<Secret>,
    /// METRICS_TOKEN: the bearer token `/metrics` needs.
    pub metrics_token: Option<Secret>,
    /// CONSOLE_TOKEN: turns the operator console on; what an operator signs in with.
    pub console_token: Option<Secret>,
    /// SENTRY_DSN: errors and panics go to Sentry.
    pub sentry_dsn: Option<Secret>,
    /// SLACK_WEBHOOK_URL: alerts go to Slack.
    pub slack_webhook_url: Option<Secret>,
    /// ALERT_SINK_OUTAGE_SECS: a sink failing this long without a success alerts.
    pub alert_sink_outage: Duration,
}

impl Operations {
    /// The settings of a validated environment.
    pub fn from_env(env: &Env) -> Operations {
        let secret = |name: &str| env.get_string(name).map(Secret);
        Operations {
            encryption_key: secret("ENCRYPTION_KEY"),
            encryption_key_previous: secret("ENCRYPTION_KEY_PREVIOUS"),
            metrics_token: secret("METRICS_TOKEN"),
            console_token: secret("CONSOLE_TOKEN"),
            sentry_dsn: secret("SENTRY_DSN"),
            slack_webhook_url: secret("SLACK_WEBHOOK_URL"),
            alert_sink_outage: Duration::from_secs(
                env.get("ALERT_SINK_OUTAGE_SECS")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(120),
            ),
        }
    }

    /// The keyring of ENCRYPTION_KEY (and ENCRYPTION_KEY_PREVIOUS); `None` without a key.
    pub fn keyring(&self) -> Option<Result<crate::crypto::Keyring, crate::crypto::CryptoError>> {
        let current = self.encryption_key.as_ref()?;
        let previous: Vec<&str> = self
            .encryption_key_previous
            .iter()
            .map(Secret::expose)
            .collect();
        Some(crate::crypto::Keyring::new(current.expose(), &previous))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[secret] [secret]");
        let ops = Operations {
            slack_webhook_url: Some(s.clone()),
            ..Operations::default()
        };
        assert!(!format!("{ops:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }
}
