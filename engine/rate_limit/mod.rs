//! Rate limiting: GCRA (the algorithm behind redis-cell and governor), one key per client.
//!
//! GCRA keeps one number per key, the theoretical arrival time (TAT): a request is allowed when
//! `now >= TAT - burst × interval`, and moves the TAT one interval on. It is smooth (no window
//! edges to game) and exact. Each [`Rule`] comes from a `rate_limit` section; the key of a
//! request is built from the rule's key parts (client IP, header, path/query/form/JSON field).
//!
//! Backends: in memory ([`memory`], the `governor` crate) when no Redis is configured, else
//! Redis ([`redis`]: one Lua script per check, one round trip, Redis's own clock so instances with
//! skewed clocks agree, keys that expire on their own; the same script also runs inside the
//! queue's enqueue, so a verified request costs one round trip). When Redis cannot be reached
//! the rule's `fail` mode decides: `open` allows (warning + metric), `closed` answers 503.

pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::time::Duration;

use crate::config::rate_limit::{FailMode, KeyPart, NamedKey, RateLimit};
use crate::verify::Inbound;

/// A rate limit ready to check: where its counters live, its GCRA parameters and key.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Counter namespace: the pipeline name, or `health`.
    pub bucket: String,
    /// The configured count (for `RateLimit-Limit`).
    pub limit: u32,
    pub burst: u32,
    /// Emission interval: period / count.
    pub interval: Duration,
    pub period: Duration,
    pub key: Vec<KeyPart>,
    pub fail: FailMode,
    /// `counts: verified`: checked after verification, for verified requests only.
    pub verified_only: bool,
}

impl Rule {
    pub fn new(bucket: &str, cfg: &RateLimit) -> Rule {
        Rule {
            bucket: bucket.to_string(),
            limit: cfg.limit.count,
            burst: cfg.burst_size(),
            // Both backends count in whole microseconds; a faster rate would round to zero.
            interval: cfg.limit.interval().max(Duration::from_micros(1)),
            period: cfg.limit.period,
            key: cfg.key.clone(),
            fail: cfg.fail,
            verified_only: cfg.counts_verified(),
        }
    }

    /// The key of a request: its parts joined with `|`; a missing field counts as `-`.
    pub fn key_of(
        &self,
        client_ip: IpAddr,
        req: &Inbound<'_>,
        params: &[(String, String)],
    ) -> String {
        self.key_from(
            client_ip,
            &crate::request_field::RequestFields::new(req, params),
        )
    }

    /// [`Rule::key_of`] from fields already being read (some read ahead).
    pub fn key_from(
        &self,
        client_ip: IpAddr,
        fields: &crate::request_field::RequestFields<'_>,
    ) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .map(|p| match p {
                KeyPart::Named(NamedKey::Ip) => ip_key(client_ip),
                KeyPart::Field(f) => fields.get(f).unwrap_or_else(|| "-".into()),
            })
            .collect();
        parts.join("|")
    }
}

/// The key part of a client address: an IPv4 address as it is, an IPv6 address by its /64
/// (`crate::client_ip::client_prefix`), written `2001:db8:1:2::/64`.
pub fn ip_key(ip: IpAddr) -> String {
    match crate::client_ip::client_prefix(ip) {
        IpAddr::V6(prefix) => format!("{prefix}/64"),
        v4 => v4.to_string(),
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `RateLimit-Limit`.
    pub limit: u32,
    /// `RateLimit-Remaining`: requests that may still arrive at once.
    pub remaining: u32,
    /// `RateLimit-Reset`: until the bucket is full again.
    pub reset: Duration,
    /// `Retry-After` when refused: until the next request is allowed.
    pub retry_after: Duration,
}

/// The shared backend failed; the rule's `fail` mode decides.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate-limit backend unavailable: {0}")]
pub struct Unavailable(pub String);

/// The limiter of a running engine.
pub enum RateLimiter {
    Memory(memory::Memory),
    Redis(redis::RedisGcra),
}

impl RateLimiter {
    /// Check one request against `rule`.
    pub async fn check(&self, rule: &Rule, key: &str) -> Result<Decision, Unavailable> {
        match self {
            RateLimiter::Memory(m) => Ok(m.check(rule, key)),
            RateLimiter::Redis(r) => r.check(rule, key, None).await,
        }
    }

    /// Drop idle in-memory keys (called periodically; Redis keys expire by themselves).
    pub fn housekeeping(&self) {
        if let RateLimiter::Memory(m) = self {
            m.retain_recent();
        }
    }
}

/// Whole seconds, rounded up (a client told "0" would retry at once).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), "2001:db8:1:2::/64");
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        // IPv4, and IPv4 mapped into IPv6, stay whole addresses
        assert_eq!(ip_key("203.0.113.9".parse().unwrap()), "203.0.113.9");
        assert_eq!(ip_key("::ffff:203.0.113.9".parse().unwrap()), "203.0.113.9");
    }

    #[test]
    fn huge_rates_keep_a_nonzero_interval() {
        let r = Rule::new(
            "x",
            &RateLimit::per_ip(1_000_000_000, Duration::from_secs(1)),
        );
        assert_eq!(r.interval, Duration::from_micros(1));
    }
}
