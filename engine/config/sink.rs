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
#[schemars(rename = "Sink")]
pub enum SinkConfig {
    /// A Postgres (Supabase) table, through DATABASE_URL.
    Postgres(PostgresConfig),
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
#[schemars(rename = "Postgres")]
pub struct PostgresConfig {
    /// Table name, optionally schema-qualified: `call_logs`, `public.call_logs`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"), extend("x-message" = "must be a table name such as `call_logs` or `public.call_logs`"))]
    pub table: String,
    /// Row field → column where they differ (`{recording: recording_url}`), or the list of the
    /// fields the rows carry, each written to the column of its name (`[call_id, status]`): the
    /// table check then knows every column the sink writes even where the script builds its rows
    /// at run time, and a row carrying a field not listed is refused.
    #[serde(default, skip_serializing_if = "Columns::is_empty")]
    pub columns: Columns,
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

/// A postgres sink's `columns:`: renamed fields, or the fields its rows carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Columns {
    /// Row field → column, where they differ.
    Renamed(BTreeMap<String, String>),
    /// Every field the rows carry, each into the column of the same name.
    Listed(Vec<String>),
}

impl Default for Columns {
    fn default() -> Self {
        Columns::Renamed(BTreeMap::new())
    }
}

impl Columns {
    pub fn is_empty(&self) -> bool {
        match self {
            Columns::Renamed(m) => m.is_empty(),
            Columns::Listed(l) => l.is_empty(),
        }
    }

    /// Whether the fields are listed (all of them known).
    pub fn is_list(&self) -> bool {
        matches!(self, Columns::Listed(l) if !l.is_empty())
    }

    /// The column a row field is written to.
    pub fn column<'a>(&'a self, field: &'a str) -> &'a str {
        match self {
            Columns::Renamed(m) => m.get(field).map_or(field, String::as_str),
            Columns::Listed(_) => field,
        }
    }

    /// Whether a row may carry `field` (a list names every field a row may carry).
    pub fn allows(&self, field: &str) -> bool {
        match self {
            Columns::Renamed(_) => true,
            Columns::Listed(l) => l.is_empty() || l.iter().any(|f| f == field),
        }
    }

    /// Every column named here.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        let (renamed, listed) = match self {
            Columns::Renamed(m) => (Some(m.values()), None),
            Columns::Listed(l) => (None, Some(l.iter())),
        };
        renamed
            .into_iter()
            .flatten()
            .chain(listed.into_iter().flatten())
            .map(String::as_str)
    }

    /// The field renamed to `column`, if one is.
    pub fn renamed_from(&self, column: &str) -> Option<&str> {
        match self {
            Columns::Renamed(m) => m
                .iter()
                .find(|(_, c)| *c == column)
                .map(|(f, _)| f.as_str()),
            Columns::Listed(_) => None,
        }
    }
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
