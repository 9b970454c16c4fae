//! The in-memory backend: one `governor` keyed limiter per rule. For a single instance without
//! Redis (development, or deployments that accept per-instance limits). Idle keys are dropped by
//! [`Memory::retain_recent`], which the server calls every minute, so a stream of distinct clients
//! cannot grow memory without bound; and a bucket holding [`MAX_KEYS`] keys is swept at once, and
//! started afresh if they are all recent (a flood of distinct keys within a minute), so one
//! bucket never holds more than that many (~100 bytes each).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Decision, Rule};

type Limiter<C> = RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// Keys one bucket holds at most.
pub const MAX_KEYS: usize = 100_000;

/// Keyed GCRA limiters, one per rule bucket, on clock `C` (tests inject a fake one).
pub struct Memory<C: Clock = DefaultClock> {
    clock: C,
    limiters: Mutex<HashMap<String, std::sync::Arc<Limiter<C>>>>,
}

impl Memory<DefaultClock> {
    pub fn new() -> Self {
        Memory::with_clock(DefaultClock::default())
    }
}

impl Default for Memory<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> Memory<C> {
    pub fn with_clock(clock: C) -> Self {
        Memory {
            clock,
            limiters: Mutex::new(HashMap::new()),
        }
    }

    fn limiter(&self, rule: &Rule) -> std::sync::Arc<Limiter<C>> {
        let fresh = || {
            let quota = Quota::with_period(rule.interval)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(rule.burst).unwrap_or(NonZeroU32::MIN));
            std::sync::Arc::new(
                RateLimiter::dashmap_with_clock(quota, self.clock.clone())
                    .with_middleware::<StateInformationMiddleware>(),
            )
        };
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        let limiter = map.entry(rule.bucket.clone()).or_insert_with(fresh);
        if limiter.len() >= MAX_KEYS {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            if limiter.len() >= MAX_KEYS {
                // all recent: a flood of distinct keys. Start the bucket afresh rather than grow
                // (its clients get a full burst again; this backend is for single instances).
                tracing::warn!(bucket = %rule.bucket, keys = MAX_KEYS, "in-memory rate-limit bucket full of recent keys: started afresh");
                *limiter = fresh();
            }
        }
        limiter.clone()
    }

    /// Check and count one request.
    pub fn check(&self, rule: &Rule, key: &str) -> Decision {
        let limiter = self.limiter(rule);
        match limiter.check_key(&key.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit: rule.limit,
                    remaining,
                    // GCRA: the bucket is full again after one interval per used slot.
                    reset: rule.interval * (rule.burst - remaining),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Decision {
                    allowed: false,
                    limit: rule.limit,
                    remaining: 0,
                    reset: wait + rule.interval * (rule.burst - 1),
                    retry_after: wait,
                }
            }
        }
    }

    /// Drop keys whose state has returned to "full" (they carry no information).
    pub fn retain_recent(&self) {
        let map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        for l in map.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys held across all rules.
    pub fn len(&self) -> usize {
        let map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(|l| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rate_limit::RateLimit;
    use governor::clock::FakeRelativeClock;

    fn rule(count: u32, period: Duration) -> Rule {
        Rule::new("test", &RateLimit::per_ip(count, period))
    }

    #[test]
    fn exact_count_then_retry_after() {
        let clock = FakeRelativeClock::default();
        let m = Memory::with_clock(clock.clone());
        let r = rule(100, Duration::from_secs(60));
        for i in 0..100 {
            let d = m.check(&r, "1.2.3.4");
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
        }
        let d = m.check(&r, "1.2.3.4");
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(600));
        assert_eq!(d.reset, Duration::from_secs(60));
        // another client has its own budget
        assert!(m.check(&r, "5.6.7.8").allowed);
        // one interval later, exactly one more
        clock.advance(Duration::from_millis(600));
        assert!(m.check(&r, "1.2.3.4").allowed);
        assert!(!m.check(&r, "1.2.3.4").allowed);
        // a full period later, the whole burst again
        clock.advance(Duration::from_secs(60));
        let allowed = (0..150).filter(|_| m.check(&r, "1.2.3.4").allowed).count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn steady_rate_over_a_period() {
        let clock = FakeRelativeClock::default();
        let m = Memory::with_clock(clock.clone());
        let mut cfg = RateLimit::per_ip(10, Duration::from_secs(1));
        cfg.burst = Some(1);
        let r = Rule::new("steady", &cfg);
        // one request every 50 ms for 2 s: 10/s with no burst lets every second one through
        let mut allowed = 0;
        for _ in 0..40 {
            if m.check(&r, "k").allowed {
                allowed += 1;
            }
            clock.advance(Duration::from_millis(50));
        }
        assert_eq!(allowed, 20);
    }

    #[test]
    fn a_bucket_never_holds_more_than_max_keys() {
        let clock = FakeRelativeClock::default();
        let m = Memory::with_clock(clock.clone());
        let r = rule(10, Duration::from_secs(1));
        for i in 0..MAX_KEYS + 10 {
            m.check(&r, &format!("client-{i}"));
        }
        assert!(m.len() <= MAX_KEYS, "{}", m.len());
        // idle keys are what goes first
        clock.advance(Duration::from_secs(2));
        for i in 0..MAX_KEYS {
            m.check(&r, &format!("other-{i}"));
        }
        assert!(m.len() <= MAX_KEYS, "{}", m.len());
    }

    #[test]
    fn idle_keys_are_dropped() {
        let clock = FakeRelativeClock::default();
        let m = Memory::with_clock(clock.clone());
        let r = rule(10, Duration::from_secs(1));
        for i in 0..1000 {
            m.check(&r, &format!("client-{i}"));
        }
        assert_eq!(m.len(), 1000);
        clock.advance(Duration::from_secs(2));
        m.retain_recent();
        assert_eq!(m.len(), 0);
    }
}
