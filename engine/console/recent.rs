//! A sample of each pipeline's recent events for the console, and how any event (a sampled one
//! or a dead letter) is shown: credentials already gone, the pipeline's `redact` applied.
//!
//! ```text
//! dispatch, after answering a pipeline request (console on)
//!   -> Recent::offer(pipeline, now, refused): at most one event per SPACING per pipeline and
//!      kind is kept; accepted and refused requests are sampled apart, so a flood of forged
//!      requests cannot push the accepted ones out (nor the reverse)
//!   -> Recent::keep(sample): the last KEPT of its kind per pipeline (the request with its
//!      credential headers removed; a refused one with its status and reason code)
//! /console/events?pipeline=NAME -> shown(event, redact): headers, query and body redacted
//! ```
//!
//! Redaction happens when a page is drawn, with the pipeline's current `redact` list, so a
//! field added to `redact` hides it from events sampled before. Bounded: [`KEPT`] events per
//! pipeline, [`super::traffic::MAX_PIPELINES`] pipelines.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use crate::config::pipeline::Redact;
use crate::config::verify::KeySource;
use crate::fixture::redact::{REDACTED, redacted_body_pretty, redacts};
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
    /// Why it was refused (the verification reason code, `verify_unavailable`), when it was.
    pub refused: Option<&'static str>,
}

/// One kind of sample of one pipeline.
#[derive(Default)]
struct SampleLine {
    last_ms: i64,
    events: VecDeque<Sample>,
}

#[derive(Default)]
struct Kept {
    last_ms: i64,
    accepted: SampleLine,
    refused: SampleLine,
}

impl Kept {
    fn line(&mut self, refused: bool) -> &mut SampleLine {
        if refused {
            &mut self.refused
        } else {
            &mut self.accepted
        }
    }
}

/// Every pipeline's sampled events.
#[derive(Default)]
pub struct Recent {
    pipelines: Mutex<HashMap<String, Kept>>,
}

impl Recent {
    /// Whether a request of `pipeline` at `now_ms` (`refused`: one verification refused) is to
    /// be kept (and if so, the slot is taken: call [`Recent::keep`]). Cheap: one lock, no copy.
    pub fn offer(&self, pipeline: &str, now_ms: i64, refused: bool) -> bool {
        let mut all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = all.get_mut(pipeline) {
            k.last_ms = now_ms;
            let line = k.line(refused);
            if line.last_ms != 0 && now_ms - line.last_ms < SPACING_MS {
                return false;
            }
            line.last_ms = now_ms;
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
        let mut kept = Kept {
            last_ms: now_ms,
            ..Kept::default()
        };
        kept.line(refused).last_ms = now_ms;
        all.insert(pipeline.to_string(), kept);
        true
    }

    /// Keep a sample [`Recent::offer`] accepted.
    pub fn keep(&self, sample: Sample) {
        let mut all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        let kept = all.entry(sample.event.pipeline.clone()).or_default();
        let line = kept.line(sample.refused.is_some());
        if line.events.len() >= KEPT {
            line.events.pop_front();
        }
        line.events.push_back(sample);
    }

    /// A pipeline's kept requests of one kind (`refused` or accepted), newest first.
    pub fn of(&self, pipeline: &str, refused: bool) -> Vec<Sample> {
        let mut all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        all.get_mut(pipeline)
            .map(|k| k.line(refused).events.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// The field a pipeline's answers and steps branch on (its "type": Vapi's `/message/type`), for
/// the Type column of the console's lists: the respond `when` field, else the first transform
/// step's field `when`. `None` when the pipeline branches on none.
pub fn kind_field(config: &crate::config::pipeline::Pipeline) -> Option<&KeySource> {
    use crate::config::transform::When;
    config.respond.when.as_ref().map(|w| &w.field).or_else(|| {
        config.transform.iter().find_map(|step| match &step.when {
            Some(When::Field(w)) => Some(&w.field),
            _ => None,
        })
    })
}

/// The value of `field` in a stored event (as a request field reads it), for the Type column.
pub fn kind(event: &EventInput, field: &KeySource) -> Option<String> {
    let mut headers = salvo::http::HeaderMap::new();
    for (name, value) in &event.headers {
        if let (Ok(n), Ok(v)) = (
            salvo::http::HeaderName::from_bytes(name.as_bytes()),
            salvo::http::HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    let url = match event.query.is_empty() {
        true => event.path.clone(),
        false => format!("{}?{}", event.path, event.query),
    };
    let inbound = crate::request_field::Inbound {
        method: &event.method,
        url: &url,
        headers: &headers,
        body: &event.body,
        now: 0,
    };
    crate::request_field::extract(field, &inbound, &event.params)
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
        assert!(r.offer("p", 1_000, false));
        assert!(!r.offer("p", 1_000 + SPACING_MS - 1, false), "too soon");
        for i in 0..(KEPT as i64 + 5) {
            let at = 10_000 + i * SPACING_MS;
            assert!(r.offer("p", at, false));
            let mut e = event("p", "{}");
            e.id = format!("e{i}");
            r.keep(Sample {
                at_ms: at,
                status: 200,
                event: e,
                refused: None,
            });
        }
        let kept = r.of("p", false);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].event.id, format!("e{}", KEPT + 4), "newest first");
        assert!(r.of("other", false).is_empty());
    }

    #[test]
    fn refused_requests_are_sampled_apart() {
        let r = Recent::default();
        assert!(r.offer("p", 1_000, false));
        // a refused one at the same instant has a slot of its own
        assert!(r.offer("p", 1_000, true));
        assert!(!r.offer("p", 1_001, true));
        r.keep(Sample {
            at_ms: 1_000,
            status: 401,
            event: event("p", "{}"),
            refused: Some("bad_signature"),
        });
        // a flood of refused ones never pushes an accepted one out
        for i in 0..(KEPT as i64 * 2) {
            let at = 2_000 + i * SPACING_MS;
            assert!(r.offer("p", at, true));
            r.keep(Sample {
                at_ms: at,
                status: 401,
                event: event("p", "{}"),
                refused: Some("missing_credentials"),
            });
        }
        r.keep(Sample {
            at_ms: 1_000,
            status: 200,
            event: event("p", "{}"),
            refused: None,
        });
        assert_eq!(r.of("p", false).len(), 1);
        assert_eq!(r.of("p", true).len(), KEPT);
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
