//! The `transform` section: Rhai scripts (or `map`s of fields) that turn a webhook into rows for
//! sinks.
//!
//! ```yaml
//! transform:
//!   - when: event.body?.message?.type == "status-update"
//!     script: scripts/vapi-status-update.rhai
//!     sink: call_status
//!   - when: event.body?.message?.type == "transcript"
//!     inline: |
//!       #{ call_id: event.body.message["call"].id, text: event.body.message.transcript }
//!     sink: transcripts
//! ```
//!
//! A step that only copies body fields into a row can say so with `map` instead of a script: the
//! worker reads the named JSON pointers in one pass over the body, without building the body as
//! script values (docs/transform.md#map-steps-rows-without-a-script):
//!
//! ```yaml
//!   - when: {field: {json: /message/type}, in: [end-of-call-report]}
//!     map:
//!       call_id: {json: /message/call/id, required: true}
//!       started_at: {json: [/message/startedAt, /message/call/startedAt], as: time}
//!       event_id: {event: id}
//!     sink: call_logs
//! ```
//!
//! Steps run in order. A step whose `when` is false is skipped. A step with a `sink` produces the
//! rows for that sink and ends the event's route; a step without one reshapes the event: its result
//! becomes `event.body` for the steps after it. An event no routed step takes is dropped.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One transform step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Step")]
pub struct StepConfig {
    /// A name for logs and dead-letter reasons (default: `step N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the step runs: a Rhai expression over `event` that is true, or a request field whose
    /// value is one of a list (`{field: {json: /message/type}, in: [end-of-call-report]}`, read
    /// without running a script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// A Rhai script file, relative to the pipeline file (inside the pipelines directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// A short Rhai script written here instead of `script`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Row fields read from the event without a script, instead of `script` or `inline`: each
    /// row field (a key) and where its value comes from. Needs a `sink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<BTreeMap<String, MapField>>,
    /// The sink that receives this step's rows. Without one, the result replaces `event.body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
}

/// A step's condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum When {
    /// A Rhai expression over `event`, e.g. `event.body?.message?.type == "status-update"`.
    Script(String),
    /// A request field and the values for which the step runs.
    Field(crate::config::pipeline::RespondWhen),
}

/// Where one row field of a `map` step comes from. Sources are tried in this order, and the
/// first that gives a value (not missing, not null) wins: `json`, `seconds_between`, `event`,
/// `default`; with none, the field is null (or the event fails, with `required`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MapField {
    /// A JSON pointer into the body (`/message/call/id`), or several tried in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<PointersConfig>,
    /// Seconds from the first time to the second (each a pointer or several tried in order;
    /// RFC 3339 text, or epoch seconds or milliseconds), when both are present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_between: Option<[PointersConfig; 2]>,
    /// A field of the event itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventField>,
    /// The value when no source gives one (any JSON value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// Convert the value to what the column takes: `boolean`, `integer`, `number`, `text`,
    /// `json` or `time` (RFC 3339 UTC with milliseconds). A value that does not convert is
    /// written as null, unless `on_invalid` says otherwise.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub convert: Option<Convert>,
    /// What a value that does not convert (`as`) becomes: `null` (the default), `default` (the
    /// field's `default`) or `fail` (the event fails permanently: a dead letter whose reason
    /// names the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_invalid: Option<OnInvalid>,
    /// Fail the event permanently (dead letter) when no source gives a value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// One JSON pointer, or several tried in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "Pointers")]
pub enum PointersConfig {
    One(String),
    Many(Vec<String>),
}

impl PointersConfig {
    pub fn list(&self) -> &[String] {
        match self {
            PointersConfig::One(p) => std::slice::from_ref(p),
            PointersConfig::Many(ps) => ps,
        }
    }
}

/// The event's own fields a `map` step can copy (as `event.<name>` in a script).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventField {
    Id,
    Pipeline,
    ReceivedAt,
    ReceivedAtMs,
    Method,
    Path,
    Tenant,
}

/// A `map` field's conversion (`as:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Convert {
    /// `true`/`false`; also the text `true`, `t`, `yes`, `y`, `on`, `1` (and their opposites,
    /// any case) and the numbers 1 and 0.
    Boolean,
    /// A whole number (64-bit); also a number with no fraction and text that spells one.
    Integer,
    /// Any finite number; also text that spells one.
    Number,
    /// Text as it is; a number or boolean as written, an object or array as its JSON text.
    Text,
    /// The JSON value as it is (for a `jsonb` column): nothing fails to convert.
    Json,
    /// A time, written as RFC 3339 UTC with milliseconds: from RFC 3339 text, or epoch seconds
    /// or milliseconds.
    Time,
}

impl Convert {
    /// The word the YAML uses.
    pub fn word(self) -> &'static str {
        match self {
            Convert::Boolean => "boolean",
            Convert::Integer => "integer",
            Convert::Number => "number",
            Convert::Text => "text",
            Convert::Json => "json",
            Convert::Time => "time",
        }
    }

    /// The column type a migration for this field would give it.
    pub fn column_type(self) -> &'static str {
        match self {
            Convert::Boolean => "boolean",
            Convert::Integer => "bigint",
            Convert::Number => "numeric",
            Convert::Text => "text",
            Convert::Json => "jsonb",
            Convert::Time => "timestamptz",
        }
    }
}

/// What a `map` field's value that does not convert becomes (`on_invalid:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// Null: the row is written without it.
    #[default]
    Null,
    /// The field's `default`.
    Default,
    /// The event fails permanently (a dead letter whose reason names the field, not the value).
    Fail,
}

/// Sandbox limits for a pipeline's scripts. Exceeding one fails the event permanently (transform)
/// or answers the fallback response (respond).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptLimits {
    /// Most Rhai operations one run may take.
    #[schemars(range(min = 1000))]
    pub max_operations: u64,
    /// Deepest function-call nesting.
    #[schemars(range(min = 1, max = 256))]
    pub max_call_depth: usize,
    /// Longest string, in bytes.
    #[schemars(range(min = 1024))]
    pub max_string_size: usize,
    /// Most items in an array.
    #[schemars(range(min = 16))]
    pub max_array_size: usize,
    /// Most keys in a map.
    #[schemars(range(min = 16))]
    pub max_map_size: usize,
    /// Wall-clock budget of a transform run, milliseconds.
    #[schemars(range(min = 1, max = 60000))]
    pub timeout_ms: u64,
    /// Wall-clock budget of a `respond` script, milliseconds (the caller is waiting).
    #[schemars(range(min = 1, max = 10000))]
    pub respond_timeout_ms: u64,
    /// Most memory one run may hold at once, its event's script values included (`32MiB`); a
    /// run over it stops at once, as for the other limits. Enforced by the engine binary.
    pub max_memory: crate::config::units::ByteSize,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 1_000_000,
            max_call_depth: 64,
            max_string_size: 4 * 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 10_000,
            timeout_ms: 1_000,
            respond_timeout_ms: 250,
            max_memory: crate::config::units::ByteSize(32 * crate::config::units::ByteSize::MIB),
        }
    }
}
