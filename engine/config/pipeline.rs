//! The pipeline file format: one YAML file per webhook route.
//!
//! A file reads top to bottom in the order a request travels: its `name`, the `route` it answers,
//! the `body_limit`, `rate_limit`, `verify` (is it genuine?), the `respond` section (what the
//! caller gets back), and the `transform` steps the queue worker runs later, and what may be written out of its requests
//! (`redact`, `record`, `log_body`). These types
//! are the single source of truth: `engine schema` derives `schemas/pipeline.schema.json` from
//! them, and unknown keys are errors.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{ByteSize, HttpMethod};
use super::verify::KeySource;

/// A webhook pipeline: one file in the pipelines directory.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Pipeline")]
pub struct Pipeline {
    /// Unique name of the pipeline, used in logs and metrics: lower-case letters, digits, `-`, `_`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"), extend("x-message" = "must start with a lower-case letter and use only a-z, 0-9, `-` and `_` (at most 63 characters)"))]
    pub name: String,

    /// What this pipeline is for, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,

    /// The HTTP method and path this pipeline answers.
    pub route: RouteConfig,

    /// Largest request body accepted, overriding the settings' `body_limit`; larger bodies get 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<ByteSize>,

    /// Requests allowed per client (or per tenant, header, ...), overriding the settings' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<super::rate_limit::RateLimit>,

    /// How the engine decides a request is genuine (before anything parses or stores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<super::verify::Verify>,

    /// An OAuth 2.0 authorization-code flow (with PKCE) connecting a tenant's account: `route`
    /// is its callback. Such a pipeline has no `verify`, `respond`, `queue` or `transform`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<super::oauth::OAuth>,

    /// The HTTP answer the caller gets. Defaults to 200 with `{"received":true}`.
    #[serde(default)]
    pub respond: Respond,

    /// Outbound services the respond script may call while the caller waits
    /// (`request("<name>", #{...})`), by name: a base URL, a credential, a timeout and retries.
    /// Scripts reach no other host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z][a-z0-9_]{0,62}$"}))]
    pub connections: BTreeMap<String, super::connection::Connection>,

    /// Values scripts read as `event.vars` (strings may use `${VAR}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,

    /// Rhai steps that turn the event into rows for sinks (run by the queue worker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<super::transform::StepConfig>,

    /// How events are stored and retried (pipelines with `transform` steps are queued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<super::queue::QueueConfig>,

    /// How long events are kept after processing and the fields they are found by
    /// (`engine events list|show|replay`); `off` keeps nothing. Default: 7 days, no index.
    #[serde(default, skip_serializing_if = "is_default_archive")]
    pub archive: super::archive::Archive,

    /// Where rows go, by the names `transform` steps use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sinks: BTreeMap<String, super::sink::SinkConfig>,

    /// Sandbox limits for this pipeline's scripts.
    #[serde(default)]
    pub script_limits: super::transform::ScriptLimits,

    /// Request fields replaced by `[redacted]` wherever this pipeline's requests are written out:
    /// recorded fixtures (`engine serve --record`) and logged bodies (`log_body`). Phone numbers,
    /// e-mail addresses, names, tokens. Credential headers are always removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<Redact>,

    /// Whether `engine serve --record DIR` writes this pipeline's accepted requests as fixtures.
    #[serde(default = "yes")]
    pub record: bool,

    /// Log each accepted request's body (with `redact` applied) at info level. Off by default:
    /// bodies carry personal data.
    #[serde(default)]
    pub log_body: bool,
}

fn is_default_archive(a: &super::archive::Archive) -> bool {
    *a == super::archive::Archive::default()
}

fn yes() -> bool {
    true
}

/// A request field to redact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Redact {
    /// A JSON pointer into a JSON body, e.g. `/message/customer/number`.
    Json(#[schemars(regex(pattern = r"^/"))] String),
    /// A form field (every value of it), e.g. Twilio's `From`.
    Form(String),
    /// A request header.
    Header(String),
    /// A query-string parameter.
    Query(String),
}

// (`server::route::Route` is what serves it)
/// Where the pipeline listens.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Route")]
pub struct RouteConfig {
    /// HTTP method.
    pub method: HttpMethod,
    /// URL path, starting with `/`. `{name}` captures one segment (e.g. `/hooks/{tenant}`),
    /// `{*rest}` the remainder of the path.
    #[schemars(regex(pattern = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/{}-]*$"), extend("x-message" = "must be a URL path starting with `/`, e.g. `/api/webhooks/vapi`"))]
    pub path: String,
    /// `match` (default, as Express's default routing): the path also answers with a trailing
    /// slash added or removed (`/api/webhooks/vapi/` as `/api/webhooks/vapi`); `strict`: only
    /// as written.
    #[serde(default, skip_serializing_if = "TrailingSlash::is_match")]
    pub trailing_slash: TrailingSlash,
    /// `false` (default, as Express's default routing): the path answers in any letter case
    /// (`/API/Webhooks/vapi` as `/api/webhooks/vapi`; captured `{name}` values keep the case they
    /// were sent in); `true`: only in the case written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub case_sensitive: bool,
}

/// Whether a route also answers its path with a trailing slash added or removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrailingSlash {
    /// `/x/` answers as `/x` (and `/x` as `/x/`).
    #[default]
    Match,
    /// Only the path as written.
    Strict,
}

impl TrailingSlash {
    pub fn is_match(&self) -> bool {
        *self == TrailingSlash::Match
    }
}

/// The response: static (`body`), templated (`template`), or computed by a Rhai script
/// (`script` / `inline`) with a `fallback` when the script fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// HTTP status code.
    #[serde(default = "default_status")]
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    /// `Content-Type` of the body.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Response body. When omitted: `{"received":true}` for a JSON content type, else empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Extra response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A body with `{{ expression }}` holes, each a Rhai expression over `event`, e.g.
    /// `<Say>Hello {{ event.body.From }}</Say>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A Rhai script file (relative to the pipeline file) computing the response: it returns a
    /// string (the body), a map (sent as JSON), or `#{status, content_type, headers, body}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The same, written here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Answer when the template or script fails or runs out of time (default: 500 with a generic
    /// JSON error, no internals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Run the template or script only for requests whose field is one of the listed values;
    /// every other request gets the static answer (`status`, `content_type`, `headers`, `body`)
    /// at once, its body never parsed for a script. E.g. Vapi waits for an answer only to
    /// `assistant-request` and `tool-calls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<RespondWhen>,
}

/// Which requests a computed answer is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondWhen {
    /// The request field read: `{json: /message/type}`, `{form: CallStatus}`, `{header: X-Kind}`,
    /// `{query: kind}` or `{path: kind}`.
    pub field: KeySource,
    /// The values for which the template or script runs.
    #[serde(rename = "in")]
    #[schemars(length(min = 1))]
    pub values: Vec<String>,
}

/// A static answer used when a computed response fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    #[serde(default = "default_status")]
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub body: String,
}

impl Default for Respond {
    fn default() -> Self {
        Respond {
            status: default_status(),
            content_type: default_content_type(),
            body: None,
            headers: BTreeMap::new(),
            template: None,
            script: None,
            inline: None,
            fallback: None,
            when: None,
        }
    }
}

impl Respond {
    /// The body to send, with the documented default.
    pub fn body_text(&self) -> &str {
        match &self.body {
            Some(b) => b,
            None if self.content_type.contains("json") => r#"{"received":true}"#,
            None => "",
        }
    }
}

fn default_status() -> u16 {
    200
}

fn default_content_type() -> String {
    "application/json".to_string()
}
