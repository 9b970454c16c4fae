//! The `sinks` section: where a pipeline's rows go, by the names its transform steps use.
//!
//! ```yaml
//! sinks:
//!   call_logs:
//!     postgres:
//!       table: call_logs
//!       encrypt: [transcript]
//!   audit:
//!     file: {path: data/audit.jsonl}
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One sink. Name exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Sink {
    /// A Postgres (Supabase) table, through DATABASE_URL.
    Postgres(Postgres),
    /// JSON posted to a URL (e.g. another service, or Slack through a relay).
    Http(Http),
    /// JSON lines appended to a file (relative paths are relative to the working directory).
    File(File),
    /// JSON lines on standard output.
    Stdout(Stdout),
}

/// Rows into a table. Each row also carries `event_id` and `row_index`, so writing an event twice
/// (the queue delivers at least once) changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// Table name, optionally schema-qualified: `call_logs`, `public.call_logs`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"), extend("x-message" = "must be a table name such as `call_logs` or `public.call_logs`"))]
    pub table: String,
    /// Row field → column, where they differ (default: same names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Columns identifying a row for `on_conflict` (default: `event_id`, `row_index`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// What a row whose key exists already does: `nothing` (default) or `update`.
    #[serde(default)]
    pub on_conflict: OnConflict,
    /// Columns overwritten when `on_conflict: update` (default: every column not in the key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update: Vec<String>,
    /// Row fields stored encrypted (AES-256-GCM under ENCRYPTION_KEY, `v1:` format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypt: Vec<String>,
}

/// Conflict policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    #[default]
    Nothing,
    Update,
}

/// An HTTP endpoint. The body is `{"event_id", "pipeline", "sink", "rows": [...]}` and the
/// `Idempotency-Key` header is the event id, so the receiver can drop a redelivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Where to send (may use `${VAR}`).
    pub url: String,
    /// `POST` (default) or `PUT`.
    #[serde(default)]
    pub method: HttpSinkMethod,
    /// Extra headers, e.g. `authorization: "Bearer ${PARTNER_TOKEN}"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Milliseconds before the request is given up (and retried later).
    #[serde(default = "default_http_timeout")]
    #[schemars(range(min = 100, max = 120000))]
    pub timeout_ms: u64,
}

/// HTTP sink methods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpSinkMethod {
    #[default]
    Post,
    Put,
}

fn default_http_timeout() -> u64 {
    10_000
}

/// A JSON-lines file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
}

/// Standard output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stdout {}
