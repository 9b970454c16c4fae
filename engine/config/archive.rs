//! The `archive` section: how long a pipeline's events are kept after they are processed, and
//! which of their fields they can be found by.
//!
//! ```yaml
//! archive:
//!   keep: 7d
//!   index:
//!     call_id: {json: /message/call/id}
//!     org_id: {json: /message/call/orgId}
//! ```
//!
//! `archive: off` keeps nothing. Absent, a pipeline archives for 7 days with no index (its events
//! are still listed by time and outcome, and found by id).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::Span;
use super::verify::KeySource;

/// Whether and how a pipeline's events are archived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Archive {
    /// `off`: this pipeline's events are not archived (they cannot be listed or replayed).
    Off(Off),
    /// Keep every event with its story for `keep`, findable by the `index` fields.
    Keep(Keep),
}

/// The word `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Off {
    Off,
}

/// An archive kept for a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    /// How long events are kept after they arrived (default `7d`); older days are dropped by
    /// themselves.
    #[serde(default = "seven_days")]
    pub keep: Span,
    /// Request fields stored beside each event so it can be found by them
    /// (`engine events list --where call_id=...`), by a name of your choosing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z][a-z0-9_]{0,62}$"}))]
    pub index: BTreeMap<String, KeySource>,
}

fn seven_days() -> Span {
    Span(std::time::Duration::from_secs(7 * 86_400))
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            keep: seven_days(),
            index: BTreeMap::new(),
        }
    }
}

impl Default for Archive {
    fn default() -> Self {
        Archive::Keep(Keep::default())
    }
}

impl Archive {
    /// The kept archive's settings, `None` when `off`.
    pub fn kept(&self) -> Option<&Keep> {
        match self {
            Archive::Off(_) => None,
            Archive::Keep(k) => Some(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_map_or_nothing() {
        let off: Archive = serde_json::from_value(serde_json::json!("off")).unwrap();
        assert_eq!(off.kept(), None);
        let on: Archive = serde_json::from_value(
            serde_json::json!({"keep": "30d", "index": {"call_id": {"json": "/call/id"}}}),
        )
        .unwrap();
        let k = on.kept().unwrap();
        assert_eq!(k.keep.0.as_secs(), 30 * 86_400);
        assert_eq!(k.index["call_id"], KeySource::Json("/call/id".into()));
        assert_eq!(
            Archive::default().kept().unwrap().keep.0.as_secs(),
            7 * 86_400
        );
        assert!(serde_json::from_value::<Archive>(serde_json::json!("on")).is_err());
        assert!(serde_json::from_value::<Archive>(serde_json::json!({"kept": "1d"})).is_err());
    }
}
