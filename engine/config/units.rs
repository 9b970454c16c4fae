//! Small value types used across the configuration files: sizes and HTTP methods.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written as an integer or with a unit: `512KiB`, `1MiB`, `2MB`, `100B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parse `"<digits>[ ]<unit>"`; units are B, KB, KiB, MB, MiB (case-insensitive).
    pub fn parse(text: &str) -> Option<ByteSize> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" => Self::KIB,
            "mb" => 1000 * 1000,
            "mib" => Self::MIB,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= Self::MIB && b.is_multiple_of(Self::MIB) {
            write!(f, "{}MiB", b / Self::MIB)
        } else if b >= Self::KIB && b.is_multiple_of(Self::KIB) {
            write!(f, "{}KiB", b / Self::KIB)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t)
                .ok_or_else(|| serde::de::Error::custom("expected a size such as 512KiB or 1MiB")),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size in bytes: an integer, or a number with a unit (B, KB, KiB, MB, MiB), e.g. `512KiB` or `1MiB`.",
            "oneOf": [
                {"type": "integer", "minimum": 1},
                {
                    "type": "string",
                    "pattern": "^\\s*[0-9]+\\s*([bB]|[kK][bB]|[kK][iI][bB]|[mM][bB]|[mM][iI][bB])?\\s*$",
                    "x-message": "must be a size such as `512KiB`, `1MiB` or a number of bytes"
                }
            ]
        })
    }
}

// The method type belongs to the route table; pipelines name it here too.
pub use crate::route::HttpMethod;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("1MiB"), Some(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse(" 512 kib "), Some(ByteSize(512 * 1024)));
        assert_eq!(ByteSize::parse("2MB"), Some(ByteSize(2_000_000)));
        assert_eq!(ByteSize::parse("100"), Some(ByteSize(100)));
        assert_eq!(ByteSize::parse("1GB"), None);
        assert_eq!(ByteSize::parse("99999999999999999999MiB"), None);
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }

    #[test]
    fn size_serde_roundtrip() {
        let s: ByteSize = serde_json::from_value(serde_json::json!("64KiB")).unwrap();
        assert_eq!(s, ByteSize(65536));
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!("64KiB"));
        let n: ByteSize = serde_json::from_value(serde_json::json!(10)).unwrap();
        assert_eq!(n, ByteSize(10));
    }
}

/// A span of time: `500ms`, `30s`, `10m`, `24h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub std::time::Duration);

impl Span {
    pub fn parse(text: &str) -> Option<Span> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let n: u64 = n.parse().ok()?;
        let ms = n.checked_mul(match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        })?;
        (ms > 0).then(|| Span(std::time::Duration::from_millis(ms)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        let (n, unit) = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
        ]
        .into_iter()
        .find(|(u, _)| ms.is_multiple_of(*u))
        .map_or((ms, "ms"), |(u, name)| (ms / u, name));
        write!(f, "{n}{unit}")
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s)
            .ok_or_else(|| serde::de::Error::custom("expected a span such as 30s or 10m"))
    }
}

impl JsonSchema for Span {
    fn schema_name() -> Cow<'static, str> {
        "Span".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A span of time: a number and a unit, `ms`, `s`, `m`, `h` or `d`, e.g. `30s`, `10m`, `24h`.",
            "type": "string",
            "pattern": "^\\s*[1-9][0-9]*\\s*(ms|s|m|h|d)\\s*$",
            "x-message": "must be a span such as `500ms`, `30s`, `10m` or `24h`"
        })
    }
}
