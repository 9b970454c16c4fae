//! Live traffic per pipeline for the console: the last few minutes of this instance's answers,
//! one bucket per second.
//!
//! ```text
//! dispatch (every answered pipeline request, while the console is on)
//!   -> Traffic::record(pipeline, status, verification failed?, duration)
//!        -> the pipeline's current second: 2xx / 4xx / 5xx / verification failures / 429s,
//!           and the duration into a fixed log-scale histogram
//! /console/traffic, /console/api/traffic
//!   -> Traffic::snapshot(now): per pipeline, the per-second series and the last minute's totals
//!      with p50 / p99 (the upper bound of the bucket the percentile falls in)
//! ```
//!
//! Bounded: [`WINDOW`] seconds per pipeline and at most [`MAX_PIPELINES`] names (a reload that
//! renames pipelines evicts the one idle longest). Process-wide, so it survives reloads; each
//! instance of a deployment shows its own traffic.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Seconds of history kept per pipeline: what the charts draw, nothing more.
pub const WINDOW: usize = SHOWN as usize;
/// Pipelines tracked at most.
pub const MAX_PIPELINES: usize = 256;
/// Upper bounds of the latency buckets, in microseconds (the last bucket is everything above).
pub const BOUNDS_US: [u64; 16] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000,
];

/// One second of one pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Second {
    at: i64,
    ok: u32,
    client_errors: u32,
    server_errors: u32,
    verify_failures: u32,
    limited: u32,
    latency: [u32; BOUNDS_US.len() + 1],
}

/// The answers of one second (or a sum of seconds), as the console shows them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AnswerCounts {
    /// Unix seconds (the first second of a sum).
    pub t: i64,
    pub requests: u64,
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub verify_failures: u64,
    pub limited: u64,
    /// Upper bound of the bucket holding the median, in milliseconds; `None` without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One pipeline's recent traffic.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Series {
    pub pipeline: String,
    /// The last [`SHOWN`] seconds, oldest first, every second present (zeros when idle).
    pub seconds: Vec<AnswerCounts>,
    /// The last minute together; its rates are per second.
    pub minute: AnswerCounts,
    pub requests_per_sec: f64,
}

/// Seconds drawn by the console's charts.
pub const SHOWN: i64 = 120;

/// Every pipeline's per-second buckets.
#[derive(Default)]
pub struct Traffic {
    pipelines: Mutex<HashMap<String, VecDeque<Second>>>,
}

impl Traffic {
    /// Count one answered request of `pipeline` at unix second `now`.
    pub fn record(
        &self,
        pipeline: &str,
        now: i64,
        status: u16,
        verify_failed: bool,
        took: Duration,
    ) {
        let mut all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if !all.contains_key(pipeline) {
            // a name seen for the first time (boot, a reload): the only allocation
            if all.len() >= MAX_PIPELINES {
                let idlest = all
                    .iter()
                    .min_by_key(|(_, s)| s.back().map_or(i64::MIN, |b| b.at))
                    .map(|(k, _)| k.clone());
                if let Some(k) = idlest {
                    all.remove(&k);
                }
            }
            all.insert(pipeline.to_string(), VecDeque::new());
        }
        let Some(seconds) = all.get_mut(pipeline) else {
            return;
        };
        if seconds.back().is_none_or(|b| b.at != now) {
            seconds.push_back(Second {
                at: now,
                ..Second::default()
            });
            while seconds.len() > WINDOW
                || seconds.front().is_some_and(|f| f.at <= now - WINDOW as i64)
            {
                seconds.pop_front();
            }
        }
        let Some(b) = seconds.back_mut() else { return };
        match status {
            200..=399 => b.ok += 1,
            429 => {
                b.limited += 1;
                b.client_errors += 1;
            }
            400..=499 => b.client_errors += 1,
            _ => b.server_errors += 1,
        }
        if verify_failed {
            b.verify_failures += 1;
        }
        let us = took.as_micros() as u64;
        let i = BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BOUNDS_US.len());
        b.latency[i] += 1;
    }

    /// Every pipeline's last [`SHOWN`] seconds and last minute at unix second `now`, by name;
    /// `names` first in their order (the configured pipelines, idle ones included).
    pub fn snapshot(&self, names: &[&str], now: i64) -> Vec<Series> {
        let all = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .map(|name| {
                let empty = VecDeque::new();
                let seconds = all.get(*name).unwrap_or(&empty);
                series(name, seconds, now)
            })
            .collect()
    }
}

fn series(name: &str, seconds: &VecDeque<Second>, now: i64) -> Series {
    let shown = (now - SHOWN + 1..=now)
        .map(|t| match seconds.iter().find(|s| s.at == t) {
            Some(s) => counts(t, [s]),
            None => AnswerCounts {
                t,
                ..AnswerCounts::default()
            },
        })
        .collect();
    let last = seconds.iter().filter(|s| s.at > now - 60 && s.at <= now);
    let minute = counts(now - 59, last);
    Series {
        pipeline: name.to_string(),
        seconds: shown,
        requests_per_sec: minute.requests as f64 / 60.0,
        minute,
    }
}

/// The sum of `seconds`, with percentiles from their merged histogram.
fn counts<'a>(t: i64, seconds: impl IntoIterator<Item = &'a Second>) -> AnswerCounts {
    let mut c = AnswerCounts {
        t,
        ..AnswerCounts::default()
    };
    let mut latency = [0u64; BOUNDS_US.len() + 1];
    for s in seconds {
        c.ok += u64::from(s.ok);
        c.client_errors += u64::from(s.client_errors);
        c.server_errors += u64::from(s.server_errors);
        c.verify_failures += u64::from(s.verify_failures);
        c.limited += u64::from(s.limited);
        for (sum, n) in latency.iter_mut().zip(s.latency) {
            *sum += u64::from(n);
        }
    }
    c.requests = c.ok + c.client_errors + c.server_errors;
    c.p50_ms = percentile(&latency, 0.50);
    c.p99_ms = percentile(&latency, 0.99);
    c
}

/// The upper bound (ms) of the bucket holding quantile `q`; the last bucket reports the highest
/// bound (its values are "above" it).
fn percentile(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = BOUNDS_US.get(i).or(BOUNDS_US.last()).copied()?;
            return Some(bound as f64 / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_per_second_and_summed_over_the_minute() {
        let t = Traffic::default();
        let ms = Duration::from_millis;
        for _ in 0..98 {
            t.record("vapi", 1_000, 200, false, ms(1));
        }
        t.record("vapi", 1_000, 401, true, ms(3));
        t.record("vapi", 1_001, 429, false, Duration::from_secs(3));
        t.record("vapi", 1_001, 503, false, ms(1));
        let s = &t.snapshot(&["vapi", "idle"], 1_001);
        assert_eq!(s[0].seconds.len(), SHOWN as usize);
        let last = &s[0].seconds[SHOWN as usize - 1];
        assert_eq!(
            (last.t, last.requests, last.limited, last.server_errors),
            (1_001, 2, 1, 1)
        );
        let m = &s[0].minute;
        assert_eq!(
            (
                m.requests,
                m.ok,
                m.client_errors,
                m.server_errors,
                m.verify_failures,
                m.limited
            ),
            (101, 98, 2, 1, 1, 1)
        );
        assert_eq!(m.p50_ms, Some(1.0));
        assert_eq!(
            m.p99_ms,
            Some(5.0),
            "the 100th of 101 took 3 ms: the 5 ms bucket"
        );
        assert_eq!(s[1].minute.requests, 0);
        assert_eq!(s[1].minute.p99_ms, None);
        // a minute later the old seconds are out of the minute, and out of the window later
        assert_eq!(t.snapshot(&["vapi"], 1_061)[0].minute.requests, 0);
    }

    #[test]
    fn history_and_names_are_bounded() {
        let t = Traffic::default();
        for s in 0..(WINDOW as i64 * 2) {
            t.record("p", s, 200, false, Duration::ZERO);
        }
        assert_eq!(t.pipelines.lock().unwrap()["p"].len(), WINDOW);
        for i in 0..MAX_PIPELINES + 10 {
            t.record(
                &format!("p{i}"),
                10_000 + i as i64,
                200,
                false,
                Duration::ZERO,
            );
        }
        assert_eq!(t.pipelines.lock().unwrap().len(), MAX_PIPELINES);
    }

    #[test]
    fn percentiles_name_their_bucket() {
        let mut h = [0u64; BOUNDS_US.len() + 1];
        h[BOUNDS_US.len()] = 1;
        assert_eq!(percentile(&h, 0.5), Some(10_000.0));
        h[0] = 99;
        assert_eq!(percentile(&h, 0.5), Some(0.1));
        assert_eq!(percentile(&h, 0.99), Some(0.1));
        assert_eq!(percentile(&h, 0.999), Some(10_000.0));
    }
}
