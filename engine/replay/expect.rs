//! Comparing what a case produced with what its fixture expects, and (`--update`) writing the
//! expectation back from what it produced.
//!
//! Every difference is reported, not only the first, each on its own line and saying where:
//! `status: expected 200, got 401`, `sink call_logs row 0: at .ended_reason: expected ..., got
//! ...`. JSON comparisons (body, rows) are exact or subset (`match: subset`).

use std::collections::BTreeMap;

use assert_json_diff::{CompareMode, Config, assert_json_matches_no_panic};
use serde_json::Value;

use super::case::Actual;
use crate::fixture::{BodyMatch, Expect, Match, RowsMatch, TextMatch};

/// Every way `actual` differs from `expect`; empty when the case passes.
pub fn compare(expect: &Expect, actual: &Actual) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(status) = expect.status
        && status != actual.status
    {
        out.push(format!(
            "status: expected {status}, got {}{}",
            actual.status,
            error_hint(actual)
        ));
    }
    if let Some(outcome) = expect.outcome
        && outcome != actual.outcome
    {
        let why = actual
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        out.push(format!(
            "outcome: expected {}, got {}{why}",
            outcome.as_str(),
            actual.outcome.as_str()
        ));
    }
    if let Some(pattern) = &expect.reason {
        match (&actual.reason, regex::Regex::new(pattern)) {
            (Some(r), Ok(re)) if re.is_match(r) => {}
            (Some(r), _) => out.push(format!("reason: expected to match /{pattern}/, got {r:?}")),
            (None, _) => out.push(format!(
                "reason: expected to match /{pattern}/, but the event was {} without a reason",
                actual.outcome.as_str()
            )),
        }
    }
    for (name, m) in &expect.headers {
        let got = actual.header(name);
        if let Some(problem) = text_problem(m, got.as_deref()) {
            out.push(format!("header {name}: {problem}"));
        }
    }
    if let Some(b) = &expect.body {
        out.extend(
            body_problems(b, &actual.body)
                .into_iter()
                .map(|p| format!("body: {p}")),
        );
    }
    if let Some(sinks) = &expect.sinks {
        let names: std::collections::BTreeSet<&String> =
            sinks.keys().chain(actual.sinks.keys()).collect();
        for name in names {
            let got = actual.sinks.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let (want, mode) = sinks
                .get(name)
                .map_or((&[][..], Match::Exact), RowsMatch::rows);
            out.extend(
                rows_problems(want, mode, got)
                    .into_iter()
                    .map(|p| format!("sink {name}: {p}")),
            );
        }
    }
    if let Some(calls) = &expect.calls
        && calls != &actual.calls
    {
        out.push(format!("calls: expected {calls:?}, got {:?}", actual.calls));
    }
    if let Some(alerts) = &expect.alerts {
        let fits = alerts.len() == actual.alerts.len()
            && alerts
                .iter()
                .zip(&actual.alerts)
                .all(|(w, g)| g.contains(w.as_str()));
        if !fits {
            out.push(format!(
                "alerts: expected {alerts:?}, got {:?}",
                actual.alerts
            ));
        }
    }
    out
}

/// The engine's error message, when the answer is one, to explain an unexpected status.
fn error_hint(actual: &Actual) -> String {
    serde_json::from_slice::<Value>(&actual.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

fn text_problem(m: &TextMatch, got: Option<&str>) -> Option<String> {
    match (m, got) {
        (TextMatch::Exact(want), Some(g)) if want == g => None,
        (TextMatch::Exact(want), Some(g)) => Some(format!("expected {want:?}, got {g:?}")),
        (TextMatch::Exact(want), None) => Some(format!("expected {want:?}, but it is absent")),
        (TextMatch::Regex { regex }, Some(g)) => match regex::Regex::new(regex) {
            Ok(re) if re.is_match(g) => None,
            _ => Some(format!("expected to match /{regex}/, got {g:?}")),
        },
        (TextMatch::Regex { regex }, None) => {
            Some(format!("expected to match /{regex}/, but it is absent"))
        }
    }
}

fn body_problems(m: &BodyMatch, body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    match m {
        BodyMatch::Json { json, mode } => match serde_json::from_slice::<Value>(body) {
            Ok(got) => json_problems(json, *mode, &got),
            Err(_) => vec![format!("expected JSON, got {:?}", shorten(&text))],
        },
        BodyMatch::Text { text: want } if *want == text => Vec::new(),
        BodyMatch::Text { text: want } => vec![format!(
            "expected {:?}, got {:?}",
            shorten(want),
            shorten(&text)
        )],
        BodyMatch::Regex { regex } => match regex::Regex::new(regex) {
            Ok(re) if re.is_match(&text) => Vec::new(),
            _ => vec![format!(
                "expected to match /{regex}/, got {:?}",
                shorten(&text)
            )],
        },
    }
}

fn rows_problems(want: &[Value], mode: Match, got: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    if want.len() != got.len() {
        out.push(format!(
            "expected {} row{}, got {}",
            want.len(),
            if want.len() == 1 { "" } else { "s" },
            got.len()
        ));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        out.extend(
            json_problems(w, mode, g)
                .into_iter()
                .map(|p| format!("row {i}: {p}")),
        );
    }
    if got.len() > want.len() {
        for (i, extra) in got.iter().enumerate().skip(want.len()) {
            out.push(format!(
                "row {i} not expected: {}",
                shorten(&extra.to_string())
            ));
        }
    }
    out
}

/// JSON differences path by path, in the words of this report: "expected" is the fixture.
fn json_problems(want: &Value, mode: Match, got: &Value) -> Vec<String> {
    let mode = match mode {
        Match::Exact => CompareMode::Strict,
        Match::Subset => CompareMode::Inclusive,
    };
    match assert_json_matches_no_panic(got, want, Config::new(mode)) {
        Ok(()) => Vec::new(),
        Err(text) => text
            .split("\n\n")
            .map(|d| {
                d.trim()
                    .replace("is missing from lhs", "is missing from the actual value")
                    .replace("is missing from rhs", "is not expected")
                    .replace("lhs:", "got:")
                    .replace("rhs:", "expected:")
            })
            .filter(|d| !d.is_empty())
            .collect(),
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 300;
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let cut: String = s.chars().take(MAX).collect();
    format!("{cut}...")
}

/// The expectation `--update` writes: every part that already holds is kept as written (a
/// regex, a subset); every other part, and every part missing, is what the case produced. Rows
/// are written for every sink, and a reason as a literal pattern. `pipelines` is stripped from
/// script paths in reasons, so the fixture passes whichever way the directory is named.
pub fn updated(old: &Expect, actual: &Actual, pipelines: &str) -> Expect {
    let body = match &old.body {
        Some(b) if body_problems(b, &actual.body).is_empty() => Some(b.clone()),
        _ if actual.body.is_empty() => None,
        _ => Some(match serde_json::from_slice::<Value>(&actual.body) {
            Ok(json) => BodyMatch::Json {
                json,
                mode: Match::Exact,
            },
            Err(_) => BodyMatch::Text {
                text: String::from_utf8_lossy(&actual.body).into_owned(),
            },
        }),
    };
    let headers = old
        .headers
        .iter()
        .filter_map(|(k, m)| {
            let got = actual.header(k)?;
            Some(match text_problem(m, Some(&got)) {
                None => (k.clone(), m.clone()),
                Some(_) => (k.clone(), TextMatch::Exact(got)),
            })
        })
        .collect();
    let old_sinks = old.sinks.clone().unwrap_or_default();
    let sinks: BTreeMap<String, RowsMatch> = actual
        .sinks
        .iter()
        .map(|(k, rows)| match old_sinks.get(k) {
            Some(m)
                if {
                    let (want, mode) = m.rows();
                    rows_problems(want, mode, rows).is_empty()
                } =>
            {
                (k.clone(), m.clone())
            }
            _ => (k.clone(), RowsMatch::Exact(rows.clone())),
        })
        .collect();
    let reason = match (&old.reason, &actual.reason) {
        (Some(p), Some(r)) if regex::Regex::new(p).is_ok_and(|re| re.is_match(r)) => {
            Some(p.clone())
        }
        (_, Some(r)) => {
            let prefix = format!("{}/", pipelines.trim_end_matches('/'));
            Some(match r.strip_prefix(&prefix) {
                Some(rest) => format!("{}$", literal(rest)),
                None => format!("^{}$", literal(r)),
            })
        }
        (_, None) => None,
    };
    Expect {
        status: Some(actual.status),
        headers,
        body,
        outcome: Some(actual.outcome),
        reason,
        sinks: Some(sinks),
        calls: (!actual.calls.is_empty() || old.calls.is_some()).then(|| actual.calls.clone()),
        alerts: match &old.alerts {
            Some(a)
                if a.len() == actual.alerts.len()
                    && a.iter()
                        .zip(&actual.alerts)
                        .all(|(w, g)| g.contains(w.as_str())) =>
            {
                Some(a.clone())
            }
            _ if actual.alerts.is_empty() && old.alerts.is_none() => None,
            _ => Some(actual.alerts.clone()),
        },
    }
}

/// `text` as a regular expression matching itself, escaping only what is special outside a
/// character class (so `end-of-call` stays readable).
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::FixtureOutcome;
    use serde_json::json;

    fn actual() -> Actual {
        Actual {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: bytes::Bytes::from_static(br#"{"received":true,"n":1}"#),
            outcome: FixtureOutcome::Written,
            reason: None,
            sinks: BTreeMap::from([("calls".into(), vec![json!({"id": "a", "cost": 1.5})])]),
            calls: vec!["POST https://api.example/v1/things".into()],
            alerts: vec!["`google-calendar` of tenant org-1 is disconnected".into()],
        }
    }

    #[test]
    fn a_matching_expectation_has_no_problems() {
        let e = Expect {
            status: Some(200),
            headers: BTreeMap::from([(
                "Content-Type".into(),
                TextMatch::Regex {
                    regex: "^application/json".into(),
                },
            )]),
            body: Some(BodyMatch::Json {
                json: json!({"received": true}),
                mode: Match::Subset,
            }),
            outcome: Some(FixtureOutcome::Written),
            reason: None,
            sinks: Some(BTreeMap::from([(
                "calls".into(),
                RowsMatch::With {
                    rows: vec![json!({"id": "a"})],
                    mode: Match::Subset,
                },
            )])),
            calls: Some(vec!["POST https://api.example/v1/things".into()]),
            alerts: Some(vec!["org-1 is disconnected".into()]),
        };
        assert_eq!(compare(&e, &actual()), Vec::<String>::new());
        let kept = updated(&e, &actual(), "pipelines");
        assert_eq!(
            kept,
            Expect {
                status: Some(200),
                outcome: Some(FixtureOutcome::Written),
                ..e.clone()
            }
        );
    }

    #[test]
    fn every_difference_is_reported_with_where_it_is() {
        let e = Expect {
            status: Some(201),
            headers: BTreeMap::from([("x-missing".into(), TextMatch::Exact("1".into()))]),
            body: Some(BodyMatch::Json {
                json: json!({"received": false}),
                mode: Match::Subset,
            }),
            outcome: Some(FixtureOutcome::Dropped),
            reason: Some("no step".into()),
            sinks: Some(BTreeMap::from([(
                "calls".into(),
                RowsMatch::Exact(vec![json!({"id": "a", "cost": 2})]),
            )])),
            calls: Some(vec![]),
            alerts: Some(vec!["org-2".into()]),
        };
        let problems = compare(&e, &actual());
        let text = problems.join("\n");
        assert!(text.contains("status: expected 201, got 200"), "{text}");
        assert!(
            text.contains("outcome: expected dropped, got written"),
            "{text}"
        );
        assert!(
            text.contains("reason: expected to match /no step/"),
            "{text}"
        );
        assert!(
            text.contains("header x-missing: expected \"1\", but it is absent"),
            "{text}"
        );
        assert!(
            text.contains("body:") && text.contains(".received"),
            "{text}"
        );
        assert!(
            text.contains("sink calls: row 0:") && text.contains(".cost"),
            "{text}"
        );
        assert!(
            text.contains("calls: expected [], got [\"POST https://api.example/v1/things\"]"),
            "{text}"
        );
        assert!(text.contains("alerts: expected [\"org-2\"]"), "{text}");
        assert!(!text.contains("lhs") && !text.contains("rhs"), "{text}");
    }

    #[test]
    fn an_unlisted_sink_must_receive_nothing() {
        let e = Expect {
            sinks: Some(BTreeMap::new()),
            ..Expect::default()
        };
        let problems = compare(&e, &actual());
        assert_eq!(problems[0], "sink calls: expected 0 rows, got 1");
        assert!(problems[1].starts_with("sink calls: row 0 not expected"));
    }

    #[test]
    fn update_anchors_the_reason_literally() {
        let mut a = actual();
        a.outcome = FixtureOutcome::DeadLettered;
        a.reason = Some("step `end-of-call`: boom (1+1)".into());
        let e = updated(&Expect::default(), &a, "pipelines");
        assert_eq!(
            e.reason.as_deref(),
            Some(r"^step `end-of-call`: boom \(1\+1\)$")
        );
        assert!(compare(&e, &a).is_empty());
        a.reason = Some("./pipelines/scripts/x.rhai:10:5: no call id".into());
        let e = updated(&Expect::default(), &a, "./pipelines/");
        assert_eq!(
            e.reason.as_deref(),
            Some(r"scripts/x\.rhai:10:5: no call id$")
        );
        assert!(compare(&e, &a).is_empty());
    }
}
