//! The in-process queue, used when no REDIS_URL is set (development). Events live in a bounded
//! channel and are lost when the process stops: the engine warns at boot, and production requires
//! REDIS_URL. A full channel refuses new events (503), so memory stays bounded. Dedupe keys are
//! remembered for their window, as on Redis, so development answers repeats the way production does
//! ([`SEEN_MAX`] at most), and the last [`DEAD_MAX`] dead letters are kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{DeadLetter, Delivery, Enqueued, QueueError};
use super::{Outcomes, QueueFuture};

/// Events waiting at most.
pub const CAPACITY: usize = 10_000;

/// Dedupe keys remembered at most: expired ones are swept when this many are held, and if none
/// has expired, the half whose windows end soonest is forgotten (a repeat of one of those would be
/// queued again: this queue is for development).
pub const SEEN_MAX: usize = 100_000;

/// Dead letters kept at most; the oldest go first (each is also logged when it is made).
pub const DEAD_MAX: usize = 1_000;

pub struct MemoryQueue {
    name: String,
    tx: mpsc::Sender<Delivery>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    dead: Mutex<VecDeque<DeadLetter>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Dedupe key -> when its window ends.
    seen: Mutex<HashMap<String, Instant>>,
    duplicates: std::sync::atomic::AtomicU64,
}

impl MemoryQueue {
    pub fn new(name: &str) -> MemoryQueue {
        let (tx, rx) = mpsc::channel(CAPACITY);
        MemoryQueue {
            name: name.to_string(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            dead: Mutex::new(VecDeque::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            seen: Mutex::new(HashMap::new()),
            duplicates: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Append an event, unless `dedupe` names a key seen within its window.
    pub fn enqueue(
        &self,
        event: crate::transform::EventInput,
        dedupe: Option<(&str, Duration)>,
    ) -> Result<Enqueued, QueueError> {
        if let Some((key, window)) = dedupe
            && !self.mark_seen(key, window)
        {
            return Ok(Enqueued::Duplicate);
        }
        self.push(event).map(Enqueued::Added).inspect_err(|_| {
            // not stored: the provider's retry must not be taken for a repeat
            if let Some((key, _)) = dedupe {
                self.forget_seen(key);
            }
        })
    }

    /// Queue `event` as a new delivery (no attempts yet): its id, or `Full`.
    fn push(&self, event: crate::transform::EventInput) -> Result<String, QueueError> {
        let id = format!("mem-{}", self.fresh());
        self.tx
            .try_send(Delivery {
                id: id.clone(),
                event,
                attempts: 0,
                stored: None,
            })
            .map(|()| id)
            .map_err(|_| QueueError::Full(self.name.clone()))
    }

    /// A number no delivery or dead letter of this queue had before.
    fn fresh(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Remember `key` for `window`: `false` when it is already remembered (a repeat).
    pub fn mark_seen(&self, key: &str, window: Duration) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(key).is_some_and(|until| *until > now) {
            self.duplicates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        if seen.len() >= SEEN_MAX {
            seen.retain(|_, until| *until > now);
            if seen.len() >= SEEN_MAX {
                let mut ends: Vec<Instant> = seen.values().copied().collect();
                let (_, middle, _) = ends.select_nth_unstable(SEEN_MAX / 2);
                let cut = *middle;
                seen.retain(|_, until| *until > cut);
            }
        }
        seen.insert(key.to_string(), now + window);
        true
    }

    /// Forget `key`, so the next event with it is taken.
    pub fn forget_seen(&self, key: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How many dead letters are kept.
    pub fn dead_count(&self) -> usize {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Repeats refused so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    /// The next event, or `None` after `wait`.
    pub async fn next(&self, wait: Duration) -> Option<Delivery> {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// The next event if one is waiting now (never waits).
    pub async fn try_next(&self) -> Option<Delivery> {
        self.rx.lock().await.try_recv().ok()
    }

    /// Put dead letters back on the queue with a fresh attempt count (all when `ids` is empty).
    /// Each leaves the dead letters only once it is queued again; a full queue stops the replay
    /// with the rest still dead.
    pub fn replay_dead(&self, ids: &[String]) -> Result<u64, QueueError> {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        let mut i = 0;
        while i < dead.len() {
            if !ids.is_empty() && !ids.contains(&dead[i].id) {
                i += 1;
                continue;
            }
            let Some(event) = dead[i].event.clone() else {
                i += 1;
                continue;
            };
            self.push(event)?;
            dead.remove(i);
            n += 1;
        }
        Ok(n)
    }

    /// Delete dead letters (all when `ids` is empty); how many.
    pub fn purge_dead(&self, ids: &[String]) -> u64 {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        let before = dead.len();
        dead.retain(|l| !ids.is_empty() && !ids.contains(&l.id));
        (before - dead.len()) as u64
    }

    /// Dead letters so far (kept in memory, also logged).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl Outcomes for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn ack<'a>(&'a self, _d: &'a Delivery) -> QueueFuture<'a> {
        Box::pin(async { Ok(()) })
    }

    fn retry<'a>(&'a self, d: &'a Delivery, delay: Duration) -> QueueFuture<'a> {
        let tx = self.tx.clone();
        let again = Delivery {
            attempts: d.attempts + 1,
            ..d.clone()
        };
        Box::pin(async move {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(again).await;
            });
            Ok(())
        })
    }

    fn dead_letter<'a>(&'a self, d: &'a Delivery, reason: &'a str) -> QueueFuture<'a> {
        Box::pin(async move {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            if dead.len() >= DEAD_MAX {
                dead.pop_front();
            }
            // its own id: a delivery's id may be empty (`ack: processed`) and a replayed event
            // gets a new delivery id
            dead.push_back(DeadLetter {
                id: format!("dead-{}", self.fresh()),
                at_ms: chrono::Utc::now().timestamp_millis(),
                event_id: d.event.id.clone(),
                reason: reason.to_string(),
                attempts: d.attempts + 1,
                event: Some(d.event.clone()),
            });
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keys_are_bounded_even_within_their_window() {
        let q = MemoryQueue::new("bounded");
        let day = Duration::from_secs(86_400);
        for i in 0..SEEN_MAX + 10 {
            assert!(q.mark_seen(&format!("key-{i}"), day));
        }
        let held = q.seen.lock().unwrap().len();
        assert!(held <= SEEN_MAX && held > SEEN_MAX / 4, "{held}");
        // the newest keys are still remembered
        assert!(!q.mark_seen(&format!("key-{}", SEEN_MAX + 9), day));
    }

    #[tokio::test]
    async fn the_last_dead_letters_are_kept() {
        let q = MemoryQueue::new("dead");
        for i in 0..DEAD_MAX + 5 {
            let d = Delivery {
                id: format!("mem-{i}"),
                event: crate::transform::event::sample("application/json", "{}"),
                attempts: 0,
                stored: None,
            };
            q.dead_letter(&d, &format!("reason {i}")).await.unwrap();
        }
        let dead = q.dead_letters();
        assert_eq!(dead.len(), DEAD_MAX);
        assert_eq!(dead[0].reason, "reason 5");
    }

    #[tokio::test]
    async fn dead_letters_are_replayed_or_purged_by_id_or_all() {
        let q = MemoryQueue::new("dlq");
        for i in 0..4 {
            let mut event = crate::transform::event::sample("application/json", "{}");
            event.id = format!("evt-{i}");
            let d = Delivery {
                id: String::new(),
                event,
                attempts: 3,
                stored: None,
            };
            q.dead_letter(&d, "sink refused").await.unwrap();
        }
        let ids: Vec<String> = q.dead_letters().iter().map(|l| l.id.clone()).collect();
        assert_eq!(ids.len(), 4);
        assert!(ids.iter().all(|id| !id.is_empty()), "{ids:?}");
        assert_eq!(q.replay_dead(std::slice::from_ref(&ids[1])).unwrap(), 1);
        let back = q.try_next().await.unwrap();
        assert_eq!((back.event.id.as_str(), back.attempts), ("evt-1", 0));
        assert_eq!(q.purge_dead(std::slice::from_ref(&ids[0])), 1);
        assert_eq!(
            q.purge_dead(std::slice::from_ref(&ids[0])),
            0,
            "already gone"
        );
        assert_eq!(q.replay_dead(&[]).unwrap(), 2, "all that is left");
        assert_eq!(q.dead_count(), 0);
        assert_eq!(q.len(), 2);
    }
}
