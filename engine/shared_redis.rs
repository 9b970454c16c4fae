//! One Redis connection shared by every request in flight.
//!
//! The request path talks to Redis once or twice per request (the rate-limit check, the
//! enqueue). A pooled connection checked out per command carries one command at a time: a write
//! and a read system call for every command, and a wake-up of the connection's task for each. A
//! multiplexed connection shared by all requests pipelines them instead: commands issued while
//! others are in flight leave in one write and their answers arrive in one read, so the cost per
//! command falls as load rises (figures in docs/benchmarks.md, "Whole process").
//!
//! An `App` opens one [`SharedRedis`] and hands clones to the rate limiter, every Redis queue and
//! `/ready`, so readiness probes the very connection requests use. Workers and admin commands
//! keep pooled connections (a blocking read must not hold up the shared one).
//!
//! redis's `ConnectionManager` replaces the connection when Redis goes away (a restart, a
//! failover); commands in flight at that moment fail and the callers' own bounds (a timeout, the
//! rate limit's `fail` mode, a 503 for an enqueue) decide what the client sees. The connection is
//! made on first use, so the engine starts, and reports not-ready, while Redis is down.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

/// A lazily connected, self-reconnecting, shared connection; clones share it.
#[derive(Clone)]
pub struct SharedRedis {
    client: redis::Client,
    conn: Arc<OnceCell<ConnectionManager>>,
}

impl SharedRedis {
    pub fn new(client: redis::Client) -> SharedRedis {
        SharedRedis {
            client,
            conn: Arc::new(OnceCell::new()),
        }
    }

    /// A shared connection to `url` (not connected yet).
    pub fn open(url: &str) -> Result<SharedRedis, String> {
        redis::Client::open(url)
            .map(SharedRedis::new)
            .map_err(|_| "REDIS_URL is not a valid Redis URL".to_string())
    }

    /// The shared connection (a cheap clone), connecting first if no connection was made yet.
    /// Callers bound the wait with their own timeout.
    pub async fn get(&self) -> redis::RedisResult<ConnectionManager> {
        self.conn
            .get_or_try_init(|| {
                // One attempt per (re)connection, no backoff: redis's retries wait a second or
                // more between attempts, longer than a request or `/ready` should hang on a Redis
                // that refuses. A failed attempt fails the commands waiting on it at once, and
                // the next command makes the next attempt.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(1))
                    .set_number_of_retries(0);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
    }
}
