//! The integration tests: one binary, one module per area, the real server on port 0 against
//! real Redis and Postgres (`common`). One binary links the engine once instead of once per
//! file. Tests that read process-wide state (Slack alerts, Sentry, the metrics recorder's
//! counters) live in `tests/reporting.rs`, a binary of their own, so no other test's traffic
//! reaches what they count.

mod common;

mod architecture;
mod attacks;

mod cli;
mod conformance;
mod connections;
mod console;
mod console_browser;
mod delivery;
mod events;
mod failover;
mod faults;
mod hostile;
mod migrate;
mod network;
mod oauth;
mod operations;
mod overload;
mod queue;
mod rate_limit;
mod recipes;
mod redis_full;
mod replay;
mod replication;
mod secrets;
mod server;
mod sink;
mod table_check;
mod traces;
mod transform;
mod validate;
mod verify;
mod worker;
