//! Where the request path gets the time and fresh event ids.
//!
//! A server reads the system clock and mints random (v4) UUIDs. `engine replay` freezes both, so
//! a fixture's signature timestamps, `event.received_at` and minted event ids are the same on
//! every run and recorded expectations stay exact.

use std::sync::atomic::{AtomicU64, Ordering};

/// The time and the event ids a request sees.
#[derive(Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// Always `at_ms` (Unix milliseconds); ids count up from 1 in UUID form.
    Frozen { at_ms: i64, minted: AtomicU64 },
}

impl Clock {
    /// A clock stopped at `at_ms`.
    pub fn frozen(at_ms: i64) -> Clock {
        Clock::Frozen {
            at_ms,
            minted: AtomicU64::new(0),
        }
    }

    /// Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_millis(),
            Clock::Frozen { at_ms, .. } => *at_ms,
        }
    }

    /// Unix seconds (what signature timestamps are compared with).
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// A fresh event id: random, or the next of `00000000-0000-4000-8000-000000000001`, `...02`.
    pub fn mint_id(&self) -> String {
        match self {
            Clock::System => random_uuid().to_string(),
            Clock::Frozen { minted, .. } => {
                let n = minted.fetch_add(1, Ordering::Relaxed) + 1;
                format!("00000000-0000-4000-8000-{n:012x}")
            }
        }
    }
}

/// A random (version 4) UUID from the thread's ChaCha generator (`rand`'s `ThreadRng`, seeded and
/// reseeded from the OS). `Uuid::new_v4` asks the OS for every id, a system call per request
/// and per event; ids need 122 random bits to stay unique (an event id is its rows' conflict
/// key), not a system call each.
pub fn random_uuid() -> uuid::Uuid {
    use rand::RngExt;
    uuid::Builder::from_random_bytes(rand::rng().random()).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_repeats_time_and_counts_ids() {
        let c = Clock::frozen(1_700_000_000_123);
        assert_eq!(c.now_ms(), 1_700_000_000_123);
        assert_eq!(c.now_secs(), 1_700_000_000);
        assert_eq!(c.mint_id(), "00000000-0000-4000-8000-000000000001");
        assert_eq!(c.mint_id(), "00000000-0000-4000-8000-000000000002");
        assert!(uuid::Uuid::parse_str(&c.mint_id()).is_ok());
    }

    #[test]
    fn system_clock_mints_distinct_v4_ids() {
        let c = Clock::System;
        let (a, b) = (c.mint_id(), c.mint_id());
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
        assert!((c.now_ms() - chrono::Utc::now().timestamp_millis()).abs() < 5_000);
    }

    #[test]
    fn random_uuids_are_distinct_v4_across_threads() {
        let ids: Vec<uuid::Uuid> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5_000).map(|_| random_uuid()).collect::<Vec<_>>()))
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 20_000);
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::Random));
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
    }
}
