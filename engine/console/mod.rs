//! The operator console: `/console`, served by the engine itself (HTML drawn here, one small
//! script and one stylesheet embedded in the binary; nothing fetched from elsewhere).
//!
//! ```text
//! dispatch: path /console... -> server::console::serve (the HTTP side: routes, forms, answers)
//!   off (no CONSOLE_TOKEN)                  -> 404, as any unknown path
//!   GET  /console/login, POST /console/login (token; rate-limited per client IP)
//!        -> session cookie (session.rs)
//!   no valid session                        -> 303 to /console/login (JSON API: 401)
//!   GET  /console/pipelines | traffic | queues | dead-letters | events   (pages.rs)
//!   GET  /console/api/traffic               -> the traffic charts' data (traffic.rs)
//!   POST /console/dead-letters/replay|purge, /console/logout (this session, or every one)
//!        -> CSRF token checked -> the queue's own operation / the sign-out (revoked.rs: shared
//!        through Redis) -> logged with the request id and client IP -> 303 back to the page
//! dispatch, every pipeline answer while on -> Console::samples (traffic.record, recent.keep):
//!   owned by the app's console, carried over a reload, never process-wide
//! ```
//!
//! Every answer carries a Content-Security-Policy that allows only the console's own script
//! and stylesheet, and `Cache-Control: no-store`. Secrets are never shown: a pipeline's
//! configuration is summarised, not dumped, and events appear as the queue keeps them
//! (credential headers removed) with the pipeline's `redact` applied.

pub mod archive;
pub mod pages;
pub mod recent;
pub mod revoked;
pub mod session;
pub mod traffic;

use std::time::Duration;

use crate::config::operations::Secret;
use crate::config::rate_limit::RateLimit;
use crate::rate_limit::Rule;
use session::Keys;

/// Login attempts allowed per client IP per minute.
pub const LOGIN_ATTEMPTS_PER_MINUTE: u32 = 10;
/// Dead letters shown on a page.
pub const DEAD_LETTERS_SHOWN: usize = 100;

/// The console of a running app: its session keys, signed-out sessions and sign-in limit.
pub struct Console {
    /// What the console shows of the traffic (its sample of recent requests, its per-second
    /// counts), kept by the request path's side line (`server::aside`) and carried over a
    /// reload (`AppContext::console_samples`), so a reload does not empty the pages.
    pub samples: std::sync::Arc<Samples>,
    pub keys: Keys,
    /// Sessions signed out before they expired.
    pub revoked: revoked::Revoked,
    /// Sign-in attempts per client IP.
    pub login: Rule,
}

impl Console {
    /// The console, when CONSOLE_TOKEN is set. `redis` (the deployment's, with its key prefix)
    /// shares sign-outs between instances.
    pub fn new(
        token: Option<&Secret>,
        redis: Option<(crate::redis_conn::group_commit::GroupCommit, String)>,
        samples: std::sync::Arc<Samples>,
    ) -> Option<Console> {
        let token = token?;
        // per client IP, failing open: the token is the lock and the limit only slows guessing,
        // so a Redis outage must not lock operators out when they need the console most
        let per_ip = RateLimit::per_ip(LOGIN_ATTEMPTS_PER_MINUTE, Duration::from_secs(60));
        Some(Console {
            samples,
            keys: Keys::new(token),
            revoked: revoked::Revoked::new(redis),
            login: Rule::new("console-login", &per_ip),
        })
    }
}

/// The console's view of the traffic: bounded in size (per pipeline, a few samples and a
/// minute of counts).
#[derive(Default)]
pub struct Samples {
    pub recent: recent::Recent,
    pub traffic: traffic::Traffic,
}

/// One queue's line on the queues page.
pub struct QueueRow {
    pub pipeline: String,
    pub queue: String,
    pub backend: &'static str,
    pub stats: Result<crate::queue::Stats, String>,
    /// Workers each engine process runs for it (`queue.concurrency`).
    pub per_instance: u32,
    /// Engine processes whose workers read it now (Redis, any instance); `None` in process.
    pub instances: Option<u64>,
}
