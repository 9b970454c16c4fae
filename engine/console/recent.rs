//! A sample of each pipeline's recent events for the console, and how any event (a sampled one
//! or a dead letter) is shown: credentials already gone, the pipeline's `redact` applied.
//!
//! ```text
//! dispatch, after answering a pipeline request (console on)
//!   -> Recent::offer(pipeline, now): at most one event per SPACING per pipeline is kept
//!   -> Recent::keep(event, status): the last KEPT per pipeline (the event as the queue stores
//!      it: credential headers already removed)
//! /console/events?pipeline=NAME -> shown(event, redact): headers, query and body redacted
//! ```
//!
//! Redaction happens when a page is drawn, with the pipeline's current `redact` list, so a
//! field added to `redact` hides it from events sampled before. Bounded: [`KEPT`] events per
//! pipeline, [`super::traffic::MAX_PIPELINES`] pipelines.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use crate::config::pipeline::Redact;
use crate::record::{REDACTED, redacted_body_pretty, redacts};
use crate::transform::EventInput;

/// Events kept per pipeline.
pub const KEPT: usize = 25;
/// Shortest time between two sampled events of one pipeline, in milliseconds: under load the
/// sample spreads over time instead of holding the last few milliseconds.
pub const SPACING_MS: i64 = 200;
/// Longest body shown, in bytes.
pub const SHOWN_BODY: usize = 16 * 1024;

/// One sampled event.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ms: i64,
    pub status: u16,
    pub event: EventInput,
}

#[derive(Default)]
struct Kept {
    last_ms: i64,
    events: VecDeque<Sample>,
}

/// Every pipeline's sampled events.
#[derive(Default)]
pub struct Recent {
    pipelines: Mutex<HashMap<String, Kept>>,
}

/// The process's sample.
pub fn global() -> &'static Recent {
    static R: OnceLock<Recent> = OnceLock::new();
    R.get_or_init(Recent::default)
}

impl Recent {
    /// Whether an event of `pipeline` at `now_ms` is to be kept (and if so, the slot is taken:
    /// call [`Recent::keep`]). Cheap: one lock, no copy.
    pub fn offer(&self, pipeline: &str, now_ms: i64) -> bool {
        let mut all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = all.get_mut(pipeline) {
            if now_ms - k.last_ms < SPACING_MS {
                return false;
            }
            k.last_ms = now_ms;
            return true;
        }
        if all.len() >= super::traffic::MAX_PIPELINES {
            let idlest = all
                .iter()
                .min_by_key(|(_, k)| k.last_ms)
                .map(|(name, _)| name.clone());
            if let Some(name) = idlest {
                all.remove(&name);
            }
        }
        all.insert(
            pipeline.to_string(),
            Kept {
                last_ms: now_ms,
                events: VecDeque::new(),
            },
        );
        true
    }

    /// Keep an event [`Recent::offer`] accepted.
    pub fn keep(&self, sample: Sample) {
        let mut all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        let kept = all.entry(sample.event.pipeline.clone()).or_default();
        if kept.events.len() >= KEPT {
            kept.events.pop_front();
        }
        kept.events.push_back(sample);
    }

    /// A pipeline's kept events, newest first.
    pub fn of(&self, pipeline: &str) -> Vec<Sample> {
        let all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        all.get(pipeline)
            .map(|k| k.events.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// An event as the console shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub id: String,
    pub received_at: String,
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// JSON pretty-printed, form fields as JSON, or text; cut at [`SHOWN_BODY`].
    pub body: String,
    pub truncated: bool,
}

/// `event` with the pipeline's `redact` applied to its headers, query and body.
pub fn shown(event: &EventInput, redact: &[Redact]) -> Shown {
    let headers = event
        .headers
        .iter()
        .map(|(k, v)| {
            let hidden = redacts(redact, &Redact::Header(k.clone()));
            (k.clone(), if hidden { REDACTED.into() } else { v.clone() })
        })
        .collect();
    let query = form_urlencoded::parse(event.query.as_bytes())
        .map(|(k, v)| {
            let hidden = redacts(redact, &Redact::Query(k.to_string()));
            let v = if hidden {
                REDACTED.into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    let content_type = event.header("content-type").unwrap_or("");
    let mut body = redacted_body_pretty(content_type, &event.body, redact);
    let truncated = body.len() > SHOWN_BODY;
    if truncated {
        let mut cut = SHOWN_BODY;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    Shown {
        id: event.id.clone(),
        received_at: crate::transform::sandbox::format_time(event.received_at_ms),
        method: event.method.clone(),
        path: event.path.clone(),
        query,
        headers,
        body,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pipeline: &str, body: &str) -> EventInput {
        let mut e = crate::transform::event::sample("application/json", body);
        e.pipeline = pipeline.into();
        e.query = "token=abc&page=2".into();
        e.headers.push(("x-customer".into(), "+15550001".into()));
        e
    }

    #[test]
    fn samples_are_spaced_and_bounded() {
        let r = Recent::default();
        assert!(r.offer("p", 1_000));
        assert!(!r.offer("p", 1_000 + SPACING_MS - 1), "too soon");
        for i in 0..(KEPT as i64 + 5) {
            let at = 10_000 + i * SPACING_MS;
            assert!(r.offer("p", at));
            let mut e = event("p", "{}");
            e.id = format!("e{i}");
            r.keep(Sample {
                at_ms: at,
                status: 200,
                event: e,
            });
        }
        let kept = r.of("p");
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].event.id, format!("e{}", KEPT + 4), "newest first");
        assert!(r.of("other").is_empty());
    }

    #[test]
    fn shown_events_are_redacted() {
        let e = event(
            "p",
            r#"{"message":{"customer":{"number":"+15551234"},"type":"x"}}"#,
        );
        let s = shown(
            &e,
            &[
                Redact::Json("/message/customer/number".into()),
                Redact::Header("X-Customer".into()),
                Redact::Query("token".into()),
            ],
        );
        assert!(!s.body.contains("+15551234"), "{}", s.body);
        assert!(s.body.contains(REDACTED) && s.body.contains("\"type\": \"x\""));
        assert!(s.headers.contains(&("x-customer".into(), REDACTED.into())));
        assert_eq!(
            s.query,
            vec![
                ("token".to_string(), REDACTED.to_string()),
                ("page".into(), "2".into())
            ]
        );
        let big = event("p", &"x".repeat(SHOWN_BODY + 10));
        let mut big = big;
        big.headers = vec![("content-type".into(), "text/plain".into())];
        let s = shown(&big, &[]);
        assert!(s.truncated && s.body.len() == SHOWN_BODY);
    }
}
