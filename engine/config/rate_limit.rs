//! The `rate_limit` section, in the settings (the default for every route) and per pipeline.
//!
//! ```yaml
//! rate_limit:
//!   limit: 100/1m        # requests per period
//!   burst: 100           # how many may arrive at once (default: the limit's count)
//!   key: [ip]            # who is counted: ip, {header: ..}, {path: ..}, {form: ..}, {json: ..}, {query: ..}
//!   fail: open           # Redis unreachable: open (allow) or closed (503)
//!   counts: all          # pipelines only: `verified` counts only requests that pass verification
//! ```
//!
//! A provider's webhooks come from a handful of addresses shared by all its customers, so a
//! provider pipeline keys its limit by who the sender is on that provider (Vapi's org, Twilio's
//! AccountSid) and counts only verified requests: a forged request cannot spend a real sender's
//! budget, and it is counted against the settings' default (per client IP) instead.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units::Span;
use super::verify::KeySource;

/// A rate limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// `false` turns rate limiting off for this pipeline.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Requests per period: `100/1m`, `10/1s`, `5000/1h`, `300/5m`.
    pub limit: Rate,
    /// Requests that may arrive at once before the steady rate applies (default: the limit's
    /// count, so `100/1m` lets 100 through at once, then one every 600 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// Who is counted: `ip` (the client IP, see `trusted_proxies`), or request fields
    /// `{header: NAME}`, `{path: PARAM}`, `{form: FIELD}`, `{json: /pointer}`, `{query: NAME}`.
    /// Several parts make one combined key.
    #[serde(default = "ip_key")]
    #[schemars(length(min = 1))]
    pub key: Vec<KeyPart>,
    /// When the Redis backend cannot be reached: `open` lets requests through (with a warning),
    /// `closed` answers 503.
    #[serde(default)]
    pub fail: FailMode,
    /// Pipelines only. Which requests count: `all` (default) checks every request before
    /// verification; `verified` checks only requests that pass verification, after it, and counts
    /// a request that fails verification against the settings' default limit (per client IP).
    /// Use `verified` with a key read from the payload (`{json: /message/call/orgId}`,
    /// `{form: AccountSid}`), so forged requests cannot exhaust a real sender's budget.
    #[serde(default, skip_serializing_if = "Counts::is_all")]
    pub counts: Counts,
    /// Settings only: paths the default does not apply to, e.g. `[/health]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<String>,
}

fn yes() -> bool {
    true
}

fn ip_key() -> Vec<KeyPart> {
    vec![KeyPart::Named(NamedKey::Ip)]
}

/// One part of a rate-limit key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum KeyPart {
    Named(NamedKey),
    Field(KeySource),
}

/// Key parts with a name of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamedKey {
    /// The client IP.
    Ip,
}

/// Which requests a limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Counts {
    /// Every request, before verification.
    #[default]
    All,
    /// Requests that pass verification, after it.
    Verified,
}

impl Counts {
    fn is_all(&self) -> bool {
        *self == Counts::All
    }
}

/// Behaviour when the shared backend is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    Open,
    Closed,
}

impl RateLimit {
    /// The seed's limit: 100 requests per minute per client IP.
    pub fn per_ip(count: u32, period: Duration) -> RateLimit {
        RateLimit {
            enabled: true,
            limit: Rate { count, period },
            burst: None,
            key: ip_key(),
            fail: FailMode::Open,
            counts: Counts::All,
            exempt: Vec::new(),
        }
    }

    /// `counts: verified`: checked after verification, for verified requests only.
    pub fn counts_verified(&self) -> bool {
        self.counts == Counts::Verified
    }

    /// Whether the key counts the client IP.
    pub fn counts_ip(&self) -> bool {
        self.key.contains(&KeyPart::Named(NamedKey::Ip))
    }

    /// An enabled limit whose key a sender chooses: no `ip` part and not `counts: verified`, so
    /// rotating a header or field would give a fresh budget each request. The settings' per-IP
    /// default ([`super::Settings::ip_floor`]) is kept under such a limit; validate warns.
    pub fn keyed_by_sender(&self) -> bool {
        self.enabled && !self.counts_verified() && !self.counts_ip()
    }

    /// Burst size in effect.
    pub fn burst_size(&self) -> u32 {
        self.burst.unwrap_or(self.limit.count).max(1)
    }
}

/// `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    /// `<count>/<n?><unit>` with unit `ms`, `s`, `m`, `h` or `d` (`10/s` means `10/1s`).
    pub fn parse(text: &str) -> Option<Rate> {
        let (count, period) = text.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok().filter(|c| *c > 0)?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            Span::parse(period)?
        } else {
            Span::parse(&format!("1{period}"))?
        };
        Some(Rate {
            count,
            period: period.0,
        })
    }

    /// Time between two requests at the steady rate (GCRA's emission interval).
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, Span(self.period))
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).ok_or_else(|| serde::de::Error::custom("expected a rate such as 100/1m"))
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Requests per period: `<count>/<n><unit>`, unit `ms`, `s`, `m`, `h` or `d`, e.g. `100/1m`.",
            "type": "string",
            "pattern": "^\\s*[1-9][0-9]*\\s*/\\s*[0-9]*(ms|s|m|h|d)\\s*$",
            "x-message": "must be a rate such as `100/1m`, `10/1s` or `5000/1h`"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = Rate::parse("100/1m").unwrap();
        assert_eq!((r.count, r.period), (100, Duration::from_secs(60)));
        assert_eq!(r.interval(), Duration::from_millis(600));
        assert_eq!(Rate::parse("10/s").unwrap().period, Duration::from_secs(1));
        assert_eq!(Rate::parse("300/5m").unwrap().to_string(), "300/5m");
        assert_eq!(Rate::parse("5/1500ms").unwrap().to_string(), "5/1500ms");
        for bad in ["0/1m", "100", "100/0m", "100/1w", "x/1m", "100/m1"] {
            assert!(Rate::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn key_parts_deserialize() {
        let parts: Vec<KeyPart> =
            serde_json::from_value(serde_json::json!(["ip", {"form": "AccountSid"}])).unwrap();
        assert_eq!(parts[0], KeyPart::Named(NamedKey::Ip));
        assert_eq!(
            parts[1],
            KeyPart::Field(KeySource::Form("AccountSid".into()))
        );
    }
}
