//! Errors and panics to Sentry when SENTRY_DSN is set, with secrets scrubbed.
//!
//! `tracing::error!` lines become Sentry events and warnings become breadcrumbs (the
//! `sentry-tracing` layer in the subscriber, inert until a client is bound here); panics are
//! reported by the panic integration. Before anything leaves the process, every value of an
//! `x-secret` variable is replaced by `[redacted]` wherever it appears in the event or a
//! breadcrumb, and no request data (bodies, headers, IPs) is attached.

use std::sync::Arc;

use sentry::protocol::{Breadcrumb, Event};

/// Start reporting to `dsn`; keep the guard alive for as long as reports should be sent (it
/// flushes on drop).
pub fn init(
    dsn: &str,
    environment: String,
    secrets: Vec<String>,
) -> Option<sentry::ClientInitGuard> {
    let secrets: Arc<Vec<String>> =
        Arc::new(secrets.into_iter().filter(|s| s.len() >= 6).collect());
    let for_events = secrets.clone();
    let guard = sentry::init((
        dsn,
        sentry::ClientOptions {
            release: Some(env!("CARGO_PKG_VERSION").into()),
            environment: Some(environment.into()),
            send_default_pii: false,
            before_send: Some(Arc::new(move |e: Event<'static>| {
                Some(scrub(e, &for_events))
            })),
            before_breadcrumb: Some(Arc::new(move |b: Breadcrumb| Some(scrub(b, &secrets)))),
            ..Default::default()
        },
    ));
    guard.is_enabled().then_some(guard)
}

/// `value` with every secret replaced, wherever it is (message, exception, extra, tags, ...).
pub fn scrub<T: serde::Serialize + serde::de::DeserializeOwned>(value: T, secrets: &[String]) -> T {
    if secrets.is_empty() {
        return value;
    }
    let Ok(mut text) = serde_json::to_string(&value) else {
        return value;
    };
    let mut changed = false;
    for s in secrets {
        // the secret as it appears inside a JSON string (quotes and backslashes escaped)
        let escaped = serde_json::to_string(s).unwrap_or_default();
        let needle = escaped
            .strip_prefix('"')
            .and_then(|e| e.strip_suffix('"'))
            .unwrap_or("");
        if !needle.is_empty() && text.contains(needle) {
            text = text.replace(needle, "[redacted]");
            changed = true;
        }
    }
    if !changed {
        return value;
    }
    serde_json::from_str(&text).unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_everywhere_in_an_event() {
        let mut e = Event {
            message: Some("connect to redis://:hunter2-pw@host failed".into()),
            ..Default::default()
        };
        e.extra
            .insert("url".into(), "postgres://u:hunter2-pw@db/x".into());
        e.tags.insert("key".into(), "sk_live_abcdef".into());
        let e = scrub(e, &["hunter2-pw".into(), "sk_live_abcdef".into()]);
        let text = serde_json::to_string(&e).unwrap();
        assert!(
            !text.contains("hunter2-pw") && !text.contains("sk_live_abcdef"),
            "{text}"
        );
        assert_eq!(
            e.message.as_deref(),
            Some("connect to redis://:[redacted]@host failed")
        );
        assert_eq!(e.tags["key"], "[redacted]");
    }

    #[test]
    fn secrets_with_json_special_characters_are_found() {
        let b = Breadcrumb {
            message: Some(r#"token "a\b" leaked"#.into()),
            ..Default::default()
        };
        let b = scrub(b, &[r#""a\b""#.into()]);
        assert_eq!(b.message.as_deref(), Some("token [redacted] leaked"));
    }
}
