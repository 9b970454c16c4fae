//! The in-process queue, used when no REDIS_URL is set (development). Events live in a bounded
//! channel and are lost when the process stops: the engine warns at boot, and production requires
//! REDIS_URL. A full channel refuses new events (503), so memory stays bounded.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::redis::{DeadLetter, Delivery, QueueError};
use super::{Outcomes, QueueFuture};

/// Events waiting at most.
pub const CAPACITY: usize = 10_000;

pub struct MemoryQueue {
    name: String,
    tx: mpsc::Sender<Delivery>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    dead: Mutex<Vec<DeadLetter>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl MemoryQueue {
    pub fn new(name: &str) -> MemoryQueue {
        let (tx, rx) = mpsc::channel(CAPACITY);
        MemoryQueue {
            name: name.to_string(),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            dead: Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Append an event (no dedupe across restarts: there is no "across restarts" here).
    pub fn enqueue(&self, event: crate::transform::EventInput) -> Result<(), QueueError> {
        let id = format!(
            "mem-{}",
            self.next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.tx
            .try_send(Delivery {
                id,
                event,
                attempts: 0,
            })
            .map_err(|_| QueueError(format!("in-process queue `{}` is full", self.name)))
    }

    /// The next event, or `None` after `wait`.
    pub async fn next(&self, wait: Duration) -> Option<Delivery> {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// Dead letters so far (kept in memory, also logged).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
            self.dead
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(DeadLetter {
                    id: d.id.clone(),
                    event_id: d.event.id.clone(),
                    reason: reason.to_string(),
                    attempts: d.attempts + 1,
                    event: Some(d.event.clone()),
                });
            Ok(())
        })
    }
}
