//! The `transform` section: Rhai scripts that turn a webhook into rows for sinks.
//!
//! ```yaml
//! transform:
//!   - when: event.body.message.type == "end-of-call-report"
//!     script: scripts/vapi-end-of-call.rhai
//!     sink: call_logs
//!   - when: event.body.message.type == "status-update"
//!     inline: |
//!       #{ call_id: event.body.message.call.id, status: event.body.message.status }
//!     sink: call_status
//! ```
//!
//! Steps run in order. A step whose `when` is false is skipped. A step with a `sink` produces the
//! rows for that sink and ends the event's route; a step without one reshapes the event: its result
//! becomes `event.body` for the steps after it. An event no routed step takes is dropped.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One transform step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// A name for logs and dead-letter reasons (default: `step N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A Rhai expression over `event`; the step runs only when it is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// A Rhai script file, relative to the pipeline file (inside the pipelines directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// A short Rhai script written here instead of `script`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// The sink that receives this step's rows. Without one, the result replaces `event.body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
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
        }
    }
}
