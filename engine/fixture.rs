//! The fixture format: one YAML file per case, `fixtures/<pipeline>/<case>.yaml`.
//!
//! A fixture is a request (method, path, query, headers, a body given as JSON, text, form fields,
//! a file next to the fixture, or a size), how to sign it, the clock and environment it runs
//! under, and what must come out: the HTTP answer, the rows each sink receives and the event's
//! fate (written, dropped, dead-lettered, duplicate, rejected, ...). `engine schema` writes this
//! type's schema to `schemas/fixture.schema.json`; fixtures are checked against it with
//! `file:line:col` errors like pipelines are.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use jsonschema::Validator;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::units::HttpMethod;
use crate::diagnostics::Diagnostic;
use crate::yaml::Document;

/// The clock of a fixture that does not set one.
pub const DEFAULT_CLOCK: &str = "2025-01-01T00:00:00Z";

/// The fixture schema and its validator, compiled once.
pub static SCHEMA: LazyLock<(Value, Validator)> = LazyLock::new(crate::config::generate::<Fixture>);

/// One replay case.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Replay fixture")]
pub struct Fixture {
    /// What the case shows; printed with a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Environment variables for this case, over the env schema's defaults. Nothing is read from
    /// the process environment. Secrets here are test secrets: `sign: true` signs with them, so
    /// real secrets and real signatures never live in the repository.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The server's time during the case, RFC 3339 (default 2025-01-01T00:00:00Z). Signature
    /// timestamps are checked against it; scripts see it as `event.received_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub clock: Option<String>,
    pub request: SentRequest,
    /// Send the request this many times (a provider's retry, a burst against a rate limit).
    /// `status`, `headers`, `body` and `outcome` are about the last answer; `sinks` about all.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    #[schemars(range(min = 1, max = 1000))]
    pub repeat: u32,
    /// Stand-ins for the pipeline's `connections`: the services' answers, the tenants' stored
    /// OAuth tokens and the tenant directory. Replay reaches no network and no database.
    #[serde(default, skip_serializing_if = "Standins::is_empty")]
    pub connections: Standins,
    #[serde(default)]
    pub expect: Expect,
}

/// What a case's connection calls meet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Standins {
    /// Answers, used in order: a call takes the first unused one with its method and URL (the
    /// query string is not compared). A call no answer matches fails to connect. The token
    /// endpoint of an `oauth` connection is answered from here too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<ServiceAnswer>,
    /// Tenants' stored OAuth connections, as their `oauth` pipeline stored them (plaintext
    /// here: test tokens).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<StoredToken>,
    /// What `tenant_of(source, id)` finds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<TenantAlias>,
}

impl Standins {
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.tokens.is_empty() && self.tenants.is_empty()
    }
}

/// A service's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Answer")]
pub struct ServiceAnswer {
    #[serde(default = "post")]
    pub method: HttpMethod,
    /// The full URL called, without its query string, e.g.
    /// `https://www.googleapis.com/calendar/v3/freeBusy`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    #[serde(default = "ok_status")]
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    /// A JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// A text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// How long the service takes (`10s`): at or over a call's timeout (what is left of the
    /// respond budget, at most the connection's `timeout`) the call times out, at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<crate::config::units::Span>,
    /// How many requests this answer serves (a retried call asks again).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    #[schemars(range(min = 1, max = 1000))]
    pub times: u32,
}

fn ok_status() -> u16 {
    200
}

/// A tenant's stored OAuth connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoredToken {
    /// The `oauth` pipeline that stored it (`google-calendar`).
    pub provider: String,
    pub tenant: String,
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// RFC 3339; before the case's clock, the token is refreshed first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,
    /// Marked disconnected (the grant was revoked) before the case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disconnected: bool,
}

/// An id of a provider's payload and the tenant it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantAlias {
    /// e.g. `vapi_assistant`, `vapi_phone_number`.
    pub source: String,
    pub id: String,
    pub tenant: String,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// The request, as the provider sends it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Request")]
pub struct SentRequest {
    #[serde(default = "post")]
    pub method: HttpMethod,
    /// The path the provider calls, e.g. `/api/webhooks/vapi`.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// Query-string parameters (a list repeats a parameter).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, OneOrMany>,
    /// Headers (a list repeats a header). `content-type` defaults from the body kind.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// `true`: sign the request with the pipeline's verifier and the secret the case's `env`
    /// gives it, at the case's clock. `{at: <RFC 3339>}`: sign as of another time (a stale
    /// timestamp). `false` (default): send the headers as written.
    #[serde(default, skip_serializing_if = "Sign::is_off")]
    pub sign: Sign,
    /// The client's address (default 127.0.0.1): what IP allow-lists and rate-limit keys see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<std::net::IpAddr>,
}

fn post() -> HttpMethod {
    HttpMethod::Post
}

/// One value, or several for a repeated parameter or header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v.as_str()],
            OneOrMany::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }

    /// One value stays one; several become a list.
    pub fn from_values(mut vs: Vec<String>) -> OneOrMany {
        if vs.len() == 1 {
            OneOrMany::One(vs.remove(0))
        } else {
            OneOrMany::Many(vs)
        }
    }
}

/// The request body: exactly one kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Body {
    /// A JSON document, sent compactly (content-type `application/json`).
    Json(Value),
    /// Text sent as is (content-type `text/plain` unless a header says otherwise).
    Text(String),
    /// Form fields, URL-encoded (content-type `application/x-www-form-urlencoded`); a list
    /// repeats a field, as Twilio does for media.
    Form(BTreeMap<String, OneOrMany>),
    /// A file, relative to the fixture, sent byte for byte (content-type from its extension:
    /// `.json`, `.form`, `.xml`, else `application/octet-stream`).
    File(String),
    /// That many bytes of filler (for size-limit cases), at most 64 MiB.
    Size(#[schemars(range(max = 67108864))] u64),
}

/// How the harness signs the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Sign {
    Flag(bool),
    At {
        /// Sign as of this time, RFC 3339.
        #[schemars(extend("format" = "date-time"))]
        at: String,
    },
}

impl Default for Sign {
    fn default() -> Self {
        Sign::Flag(false)
    }
}

impl Sign {
    fn is_off(&self) -> bool {
        *self == Sign::Flag(false)
    }

    /// When to sign: `None` for not at all, else the time (`None` inside for the case's clock).
    pub fn when(&self) -> Option<Option<&str>> {
        match self {
            Sign::Flag(true) => Some(None),
            Sign::At { at } => Some(Some(at.as_str())),
            Sign::Flag(false) => None,
        }
    }
}

/// What must come out. Only what is written here is compared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The HTTP status of the (last) answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub status: Option<u16>,
    /// Response headers (names case-insensitive): an exact value or `{regex: ...}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, TextMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyMatch>,
    /// What became of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<FixtureOutcome>,
    /// A regular expression the reason must match: the dead-letter reason, or the script's
    /// drop reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "regex"))]
    pub reason: Option<String>,
    /// Rows per sink, in the order written. A list compares exactly; `{rows, match: subset}`
    /// compares only the fields written. With `sinks` present, a sink not listed must receive
    /// nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<BTreeMap<String, RowsMatch>>,
    /// The connection requests made, in order, as `METHOD url` without the query string (token
    /// refreshes included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
    /// Alerts raised (e.g. a revoked connection), in order: each must contain its text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<String>>,
}

/// A text compared exactly, or by a regular expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TextMatch {
    Exact(String),
    Regex {
        #[schemars(extend("format" = "regex"))]
        regex: String,
    },
}

/// The expected response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum BodyMatch {
    /// A JSON body, equal (`match: exact`, the default) or containing these fields (`subset`).
    Json {
        json: Value,
        #[serde(default, rename = "match", skip_serializing_if = "Match::is_exact")]
        mode: Match,
    },
    /// The exact text.
    Text { text: String },
    /// Text matching a regular expression.
    Regex {
        #[schemars(extend("format" = "regex"))]
        regex: String,
    },
}

/// How JSON values are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// Equal.
    #[default]
    Exact,
    /// Every field written is in the actual value with this value; others are ignored.
    Subset,
}

impl Match {
    fn is_exact(&self) -> bool {
        *self == Match::Exact
    }
}

/// The expected rows of one sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RowsMatch {
    /// Exactly these rows, in order.
    Exact(Vec<Value>),
    /// As many rows as written, each compared by `match`.
    With {
        rows: Vec<Value>,
        #[serde(rename = "match")]
        mode: Match,
    },
}

impl RowsMatch {
    pub fn rows(&self) -> (&[Value], Match) {
        match self {
            RowsMatch::Exact(rows) => (rows, Match::Exact),
            RowsMatch::With { rows, mode } => (rows, *mode),
        }
    }
}

/// What became of the request and its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "Outcome")]
pub enum FixtureOutcome {
    /// Answered; the pipeline has no transform steps, so nothing was queued.
    Responded,
    /// Queued, transformed, and its rows written.
    Written,
    /// Queued and transformed; the steps dropped it (no step matched, or a script said so).
    Dropped,
    /// Queued; ended in the dead-letter queue (a script error, a permanent sink error).
    DeadLettered,
    /// A repeat within the dedupe window: answered like the first, not stored again.
    Duplicate,
    /// 401: verification failed.
    Rejected,
    /// 429: over the rate limit.
    RateLimited,
    /// 413: the body is over the route's limit.
    TooLarge,
    /// 404: no route for the path.
    NotFound,
    /// 405: the path exists for other methods.
    MethodNotAllowed,
    /// 503 in maintenance mode.
    Maintenance,
    /// 503 otherwise (queue or verification backend unavailable, `ack: processed` retry).
    Unavailable,
    /// Any other error answer of the engine (400 for an unreadable body).
    BadRequest,
}

impl FixtureOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FixtureOutcome::Responded => "responded",
            FixtureOutcome::Written => "written",
            FixtureOutcome::Dropped => "dropped",
            FixtureOutcome::DeadLettered => "dead_lettered",
            FixtureOutcome::Duplicate => "duplicate",
            FixtureOutcome::Rejected => "rejected",
            FixtureOutcome::RateLimited => "rate_limited",
            FixtureOutcome::TooLarge => "too_large",
            FixtureOutcome::NotFound => "not_found",
            FixtureOutcome::MethodNotAllowed => "method_not_allowed",
            FixtureOutcome::Maintenance => "maintenance",
            FixtureOutcome::Unavailable => "unavailable",
            FixtureOutcome::BadRequest => "bad_request",
        }
    }
}

/// A fixture file, parsed and checked, with the positions of its values.
pub struct Loaded {
    pub doc: Document,
    pub fixture: Fixture,
}

/// Read a fixture file: every problem at once, each with `file:line:col`.
pub fn load(file: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let (doc, fixture): (Document, Fixture) = crate::config::read_typed(file, &SCHEMA)?;
    let mut diags = Vec::new();
    let times = [
        ("/clock", fixture.clock.as_deref()),
        ("/request/sign/at", fixture.request.sign.when().flatten()),
    ];
    for (pointer, t) in times {
        if let Some(t) = t
            && chrono::DateTime::parse_from_rfc3339(t).is_err()
        {
            diags.push(Diagnostic::new(
                file,
                doc.value_pos(pointer),
                pointer,
                "not an RFC 3339 time: write e.g. 2025-06-01T12:00:00Z",
            ));
        }
    }
    let mut regexes: Vec<(String, &str)> = Vec::new();
    if let Some(r) = &fixture.expect.reason {
        regexes.push(("/expect/reason".into(), r));
    }
    if let Some(BodyMatch::Regex { regex }) = &fixture.expect.body {
        regexes.push(("/expect/body/regex".into(), regex));
    }
    for (name, m) in &fixture.expect.headers {
        if let TextMatch::Regex { regex } = m {
            regexes.push((
                format!("/expect/headers/{}/regex", crate::yaml::escape_token(name)),
                regex,
            ));
        }
    }
    for (pointer, r) in regexes {
        if let Err(e) = regex::Regex::new(r) {
            let why = match e {
                regex::Error::CompiledTooBig(_) => "the regular expression is too large".into(),
                other => format!(
                    "not a valid regular expression: {}",
                    first_line(&other.to_string())
                ),
            };
            diags.push(Diagnostic::new(
                file,
                doc.value_pos(&pointer),
                &pointer,
                why,
            ));
        }
    }
    if let Some(Body::File(rel)) = &fixture.request.body {
        let path = file.parent().unwrap_or(Path::new(".")).join(rel);
        if !path.is_file() {
            diags.push(Diagnostic::new(
                file,
                doc.value_pos("/request/body/file"),
                "/request/body/file",
                format!("no file `{rel}` next to this fixture"),
            ));
        }
    }
    if diags.is_empty() {
        Ok(Loaded { doc, fixture })
    } else {
        Err(diags)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().last().unwrap_or(s).trim()
}

/// The time of an RFC 3339 string, in Unix milliseconds (checked by [`load`]).
pub fn millis(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp_millis())
}
