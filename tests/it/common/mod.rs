//! Helpers shared by the integration tests, by what they help with:
//!
//! - `dirs`: a pipelines directory in a temp dir and the engine binary to run on it;
//! - `app`: the real server on port 0 and requests to it;
//! - `services`: the shared Redis and Postgres (started on first need, not for every test) and a
//!   fresh schema or database per test;
//! - `private`: servers a test owns (Redis, a Redis Cluster, Postgres, PgBouncer) to kill or slow;
//! - `stub`: a local HTTP server standing in for a provider or a receiver;
//! - `process`, `proxy`: a child engine process, a TCP proxy that can cut or slow a link.

mod app;
mod dirs;
pub mod private;
pub mod process;
pub mod proxy;
mod services;
mod stub;

use std::time::Duration;

pub use app::*;
pub use dirs::*;
pub use private::*;
pub use services::*;
pub use stub::*;

/// Poll `check` every 100 ms until it gives a value or `within` has passed.
pub async fn eventually_async<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
