//! `engine serve --record DIR`: accepted requests written as replay fixtures, so real traffic
//! becomes test cases safely.
//!
//! ```text
//! dispatch: request answered 2xx and queued
//!   -> FixtureRecorder::record: drop credential and transport headers, redact the pipeline's
//!      `redact` fields, body as JSON / form fields / text, `sign: true` when the pipeline
//!      verifies, the request time as `clock`
//!   -> DIR/<pipeline>/<time>-<event id>.yaml, written on a blocking thread after the answer
//! ```
//!
//! A recorded fixture carries no secret and no signature: replay re-signs it with the test
//! secret its `env` gives. Its `expect` holds the status; `engine replay --update` fills in the
//! rest from a run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use salvo::http::HeaderMap;
use serde_json::Value;

use crate::config::pipeline::Redact;
use crate::fixture::{Body, Expect, Fixture, OneOrMany, SentRequest, Sign};

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Headers that describe the connection or the proxy path, not the provider's request: the
/// replay harness sets its own.
const TRANSPORT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "expect",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
];

/// Writes fixtures under one directory.
#[derive(Debug, Clone)]
pub struct FixtureRecorder {
    pub dir: PathBuf,
}

/// One accepted request, as dispatch saw it.
pub struct Recorded<'a> {
    pub pipeline: &'a str,
    pub method: crate::config::units::HttpMethod,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub now_ms: i64,
    pub event_id: &'a str,
    pub status: u16,
    /// Whether the pipeline verifies requests (then the fixture is signed on replay).
    pub signed: bool,
    /// Header names the pipeline's verifier treats as credentials, beyond the common ones.
    pub credential: &'a dyn Fn(&str) -> bool,
    pub redact: &'a [Redact],
}

impl FixtureRecorder {
    /// Build the fixture now (cheap) and write it on a blocking thread, so the answer is not
    /// delayed by the disk. A failure to write is logged, never answered.
    pub fn record(&self, r: &Recorded<'_>) {
        let fixture = fixture(r);
        let when = chrono::DateTime::from_timestamp_millis(r.now_ms).unwrap_or_default();
        let name = format!(
            "{}-{}.yaml",
            when.format("%Y%m%dT%H%M%S%.3fZ"),
            sanitize(r.event_id)
        );
        let path = self.dir.join(sanitize(r.pipeline)).join(name);
        let header = format!(
            "# Recorded by `engine serve --record` from a {} request to {} at {}.\n\
             # Credential headers were removed{}. Set the test secrets the pipeline's verifier\n\
             # reads under `env` (`sign: true` signs with them), then run `engine replay --update`\n\
             # to fill in `expect` from a run and review it.\n",
            r.method,
            r.path,
            when.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            if r.redact.is_empty() {
                String::new()
            } else {
                format!(" and {} field(s) redacted", r.redact.len())
            }
        );
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write(&path, &header, &fixture) {
                tracing::warn!(file = %path.display(), error = %e, "could not write the recorded fixture");
            }
        });
    }
}

fn write(path: &Path, header: &str, fixture: &Fixture) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    let value = serde_json::to_value(fixture).map_err(|e| e.to_string())?;
    let yaml = crate::yaml::ordered(
        &value,
        &["description", "env", "clock", "request", "repeat", "expect"],
        &[(
            "request",
            &[
                "method",
                "path",
                "query",
                "headers",
                "body",
                "sign",
                "client_ip",
            ],
        )],
    );
    let text = format!("{header}{}", crate::yaml::emit(&yaml));
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

/// The fixture for a request: what a provider sent, minus credentials, with redactions.
pub fn fixture(r: &Recorded<'_>) -> Fixture {
    let mut headers: BTreeMap<String, OneOrMany> = BTreeMap::new();
    for name in r.headers.keys() {
        let n = name.as_str();
        let credential = crate::verify::is_credential_name(n) || (r.credential)(n);
        if credential || TRANSPORT_HEADERS.contains(&n) {
            continue;
        }
        let values: Vec<String> = if redacts(r.redact, &Redact::Header(n.to_string())) {
            vec![REDACTED.to_string()]
        } else {
            r.headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect()
        };
        headers.insert(n.to_string(), OneOrMany::from_values(values));
    }
    let query = pairs(r.query.as_bytes(), &|k| {
        redacts(r.redact, &Redact::Query(k.to_string()))
    });
    let content_type = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = if r.body.is_empty() {
        None
    } else {
        Some(body_of(content_type, r.body, r.redact))
    };
    Fixture {
        description: Some(format!("recorded {} request", r.pipeline)),
        env: BTreeMap::new(),
        clock: Some(
            chrono::DateTime::from_timestamp_millis(r.now_ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
        request: SentRequest {
            method: r.method,
            path: r.path.to_string(),
            query,
            headers,
            body,
            sign: Sign::Flag(r.signed),
            client_ip: None,
        },
        repeat: 1,
        // a recorded tool call's answers are not recorded: add stand-ins to replay it
        connections: Default::default(),
        expect: Expect {
            status: Some(r.status),
            ..Expect::default()
        },
    }
}

/// A body as a fixture holds it: JSON, form fields or text, with `redact` applied.
fn body_of(content_type: &str, body: &[u8], redact: &[Redact]) -> Body {
    let content_type = content_type.to_ascii_lowercase();
    if content_type.contains("json")
        && let Ok(mut v) = serde_json::from_slice::<Value>(body)
    {
        let pointers = redact.iter().filter_map(|r| match r {
            Redact::Json(p) => Some(p),
            _ => None,
        });
        for pointer in pointers {
            if let Some(slot) = v.pointer_mut(pointer) {
                *slot = Value::String(REDACTED.into());
            }
        }
        return Body::Json(v);
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let named = |k: &str| redacts(redact, &Redact::Form(k.to_string()));
        return Body::Form(pairs(body, &named));
    }
    Body::Text(String::from_utf8_lossy(body).into_owned())
}

/// A body for a log line: JSON, form fields (as JSON) or text, with `redact` applied.
pub fn redacted_body(content_type: &str, body: &[u8], redact: &[Redact]) -> String {
    body_text(content_type, body, redact, false)
}

/// [`redacted_body`] with JSON indented, for reading (the console).
pub fn redacted_body_pretty(content_type: &str, body: &[u8], redact: &[Redact]) -> String {
    body_text(content_type, body, redact, true)
}

fn body_text(content_type: &str, body: &[u8], redact: &[Redact], pretty: bool) -> String {
    fn json<T: serde::Serialize>(v: &T, pretty: bool) -> String {
        let text = match pretty {
            true => serde_json::to_string_pretty(v),
            false => serde_json::to_string(v),
        };
        text.unwrap_or_default()
    }
    match body_of(content_type, body, redact) {
        Body::Json(v) => json(&v, pretty),
        Body::Form(f) => json(&f, pretty),
        Body::Text(t) => t,
        Body::File(_) | Body::Size(_) => String::new(),
    }
}

/// URL-encoded pairs grouped by name (repeats become lists), redacted where asked.
fn pairs(encoded: &[u8], redact: &dyn Fn(&str) -> bool) -> BTreeMap<String, OneOrMany> {
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(encoded) {
        let value = if redact(&k) {
            REDACTED.to_string()
        } else {
            v.into_owned()
        };
        grouped.entry(k.into_owned()).or_default().push(value);
    }
    grouped
        .into_iter()
        .map(|(k, vs)| (k, OneOrMany::from_values(vs)))
        .collect()
}

/// Whether `list` names `field` (a header, form field or query parameter; names compared
/// without case, as HTTP and Twilio's forms treat them).
pub fn redacts(list: &[Redact], field: &Redact) -> bool {
    list.iter().any(|r| match (r, field) {
        (Redact::Header(a), Redact::Header(b))
        | (Redact::Form(a), Redact::Form(b))
        | (Redact::Query(a), Redact::Query(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    })
}

/// A name safe as one path segment.
fn sanitize(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if out.is_empty() { "event".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::HttpMethod;

    #[test]
    fn credentials_and_transport_headers_are_dropped_and_fields_redacted() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer real-secret".parse().unwrap());
        h.insert("x-twilio-signature", "c2lnbmF0dXJl".parse().unwrap());
        h.insert("x-custom-sig", "abc".parse().unwrap());
        h.insert("host", "api.voxanne.ai".parse().unwrap());
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        h.insert("user-agent", "TwilioProxy/1.1".parse().unwrap());
        h.insert("x-caller-email", "jane@example.com".parse().unwrap());
        let redact = [
            Redact::Form("From".into()),
            Redact::Header("X-Caller-Email".into()),
            Redact::Query("token".into()),
        ];
        let body = b"From=%2B14155550123&To=%2B14155550100&MediaUrl=a&MediaUrl=b";
        let f = fixture(&Recorded {
            pipeline: "twilio-sms",
            method: HttpMethod::Post,
            path: "/api/twilio/sms",
            query: "token=t0k3n&x=1",
            headers: &h,
            body,
            now_ms: 1_732_550_400_000,
            event_id: "SM1",
            status: 200,
            signed: true,
            credential: &|n: &str| n == "x-custom-sig",
            redact: &redact,
        });
        let names: Vec<&str> = f.request.headers.keys().map(String::as_str).collect();
        assert_eq!(names, ["content-type", "user-agent", "x-caller-email"]);
        assert_eq!(
            f.request.headers["x-caller-email"],
            OneOrMany::One(REDACTED.into())
        );
        assert_eq!(f.request.query["token"], OneOrMany::One(REDACTED.into()));
        assert_eq!(f.request.query["x"], OneOrMany::One("1".into()));
        let Some(Body::Form(form)) = &f.request.body else {
            panic!("form body")
        };
        assert_eq!(form["From"], OneOrMany::One(REDACTED.into()));
        assert_eq!(form["To"], OneOrMany::One("+14155550100".into()));
        assert_eq!(
            form["MediaUrl"],
            OneOrMany::Many(vec!["a".into(), "b".into()])
        );
        assert_eq!(f.request.sign, Sign::Flag(true));
        assert_eq!(f.clock.as_deref(), Some("2024-11-25T16:00:00.000Z"));
        assert_eq!(f.expect.status, Some(200));
        let text = serde_json::to_string(&f).unwrap();
        for secret in [
            "real-secret",
            "c2lnbmF0dXJl",
            "14155550123",
            "jane@example.com",
            "t0k3n",
        ] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
    }

    #[test]
    fn json_pointers_are_redacted_whatever_the_value() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        let body = br#"{"message":{"customer":{"number":"+14155550123","name":{"first":"Jane"}},"type":"status-update"}}"#;
        let redact = [
            Redact::Json("/message/customer/number".into()),
            Redact::Json("/message/customer/name".into()),
            Redact::Json("/message/absent".into()),
        ];
        let f = fixture(&Recorded {
            pipeline: "vapi",
            method: HttpMethod::Post,
            path: "/api/webhooks/vapi",
            query: "",
            headers: &h,
            body,
            now_ms: 0,
            event_id: "e",
            status: 200,
            signed: false,
            credential: &|_: &str| false,
            redact: &redact,
        });
        let Some(Body::Json(v)) = &f.request.body else {
            panic!("json body")
        };
        assert_eq!(
            v,
            &serde_json::json!({"message":{"customer":{"number":REDACTED,"name":REDACTED},"type":"status-update"}})
        );
        assert_eq!(f.request.sign, Sign::Flag(false));
    }

    #[test]
    fn logged_bodies_are_redacted_too() {
        let redact = [Redact::Form("From".into()), Redact::Json("/a/b".into())];
        let form = redacted_body(
            "application/x-www-form-urlencoded",
            b"From=%2B14155550123&To=x",
            &redact,
        );
        assert_eq!(form, r#"{"From":"[redacted]","To":"x"}"#);
        let json = redacted_body(
            "application/json",
            br#"{"a":{"b":"jane@example.com"},"c":1}"#,
            &redact,
        );
        assert_eq!(json, r#"{"a":{"b":"[redacted]"},"c":1}"#);
        assert_eq!(redacted_body("text/plain", b"hello", &redact), "hello");
    }

    #[test]
    fn file_names_are_one_safe_segment() {
        assert_eq!(sanitize("CA5f0c:ringing"), "CA5f0c_ringing");
        assert_eq!(sanitize("../../etc/passwd"), "______etc_passwd");
        assert_eq!(sanitize(""), "event");
    }
}
