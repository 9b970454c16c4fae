//! The `queue` section: how events of a pipeline with `transform` steps are stored and retried.
//!
//! ```yaml
//! queue:
//!   event_id: [{header: x-github-delivery}]     # the provider's id (default: minted at ingest)
//!   dedupe:
//!     key: [{json: /message/call/id}, {json: /message/type}]
//!     window: 24h
//!   max_attempts: 10
//!   backoff: {initial: 1s, max: 10m}
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::Span;
use super::verify::KeySource;

/// Queue settings of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Queue")]
pub struct QueueConfig {
    /// Queue name (default: the pipeline name). Pipelines naming the same queue share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,62}$"))]
    pub name: Option<String>,
    /// Request fields forming the event id (the provider's delivery id), joined with `:`.
    /// Default: an id minted once at ingest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_id: Vec<KeySource>,
    /// Request headers stored with the event (names, any case). Default: every header except
    /// credentials (`authorization`, signature headers, cookies, the verifier's own header),
    /// which are never stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_headers: Vec<String>,
    /// Drop repeats of the same provider event within a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<Dedupe>,
    /// Attempts before an event is dead-lettered (the first delivery counts).
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_attempts: u32,
    /// Retry delays: `initial`, doubling, capped at `max`, with jitter.
    #[serde(default)]
    pub backoff: Backoff,
    /// How long an event may be in a worker's hands before another worker takes it over.
    #[serde(default = "default_lease")]
    pub lease: Span,
    /// When the caller gets its 2xx: `queued` (default: once the event is stored in the queue)
    /// or `processed` (once its rows are written; a sink failure answers 503 so the provider
    /// retries). `processed` trades latency for callers that need the write done.
    #[serde(default)]
    pub ack: Ack,
    /// Most events a worker takes at once; rows of the events for one Postgres sink are written in
    /// one statement.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: u32,
    /// How long a worker that got fewer than `batch_size` events under sustained load (events
    /// already waiting for its reads) waits for more before writing (default 2ms; `0s`: never).
    /// Never when a read had to wait for its first event: a lone event is processed at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_wait: Option<Span>,
    /// Workers per engine process (per partition, at least one). The first reads always; the
    /// others join only while it finds a backlog (its reads come back full), so a steady flow is
    /// written in whole batches by one worker and a backlog is drained by all of them.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: u32,
    /// Redis streams the queue is split into (default 1), so one busy pipeline spreads over
    /// several Redis Cluster nodes. An event's partition follows its dedupe key (else its event
    /// id), so the dedupe check and the append stay one atomic step; each engine process runs at
    /// least one worker per partition. Raise it with the queue drained or not: partition 0 keeps
    /// the single-stream keys; lower it only once the partitions given up are empty.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 64))]
    pub partitions: u32,
    /// What a 2xx promises: `local` (default: the Redis master has the event; a master that
    /// dies before its replica copied it loses it on failover) or `replicated` (the master and
    /// `replication.replicas` replicas have it, confirmed with Redis's `WAIT` within
    /// `replication.timeout`; otherwise 503, and the provider retries).
    #[serde(default)]
    pub durability: Durability,
    /// With `durability: replicated`: how many replicas must confirm, and how long to wait.
    #[serde(default)]
    pub replication: Replication,
}

/// What a 2xx promises about where the event is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Stored on the Redis master.
    #[default]
    Local,
    /// Stored on the master and confirmed by `replication.replicas` replicas.
    Replicated,
}

/// The replicas `durability: replicated` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// Replicas that must have the event before the 2xx (default 1).
    #[schemars(range(min = 1, max = 16))]
    pub replicas: u32,
    /// How long to wait for them (default `500ms`, at most `1500ms`: the request path's Redis
    /// budget is 2 s). Replication normally takes well under a millisecond on one network.
    pub timeout: Span,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            replicas: 1,
            timeout: Span(std::time::Duration::from_millis(500)),
        }
    }
}

/// When the 2xx is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    #[default]
    Queued,
    Processed,
}

/// Deduplication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dedupe {
    /// Request fields that identify a provider event; a repeat within `window` answers 2xx and
    /// is not stored again. When a field is missing the request is not deduplicated.
    #[schemars(length(min = 1))]
    pub key: Vec<KeySource>,
    /// How long a key is remembered.
    #[serde(default = "default_window")]
    pub window: Span,
}

/// Retry backoff.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    pub initial: Span,
    pub max: Span,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Span(std::time::Duration::from_secs(1)),
            max: Span(std::time::Duration::from_secs(600)),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: None,
            event_id: Vec::new(),
            keep_headers: Vec::new(),
            dedupe: None,
            max_attempts: default_attempts(),
            backoff: Backoff::default(),
            ack: Ack::Queued,
            batch_size: default_batch_size(),
            batch_wait: None,
            lease: default_lease(),
            concurrency: default_concurrency(),
            partitions: default_partitions(),
            durability: Durability::Local,
            replication: Replication::default(),
        }
    }
}

fn default_attempts() -> u32 {
    10
}
fn default_lease() -> Span {
    Span(std::time::Duration::from_secs(60))
}
fn default_concurrency() -> u32 {
    4
}
fn default_partitions() -> u32 {
    1
}
fn default_batch_size() -> u32 {
    64
}
fn default_window() -> Span {
    Span(std::time::Duration::from_secs(86_400))
}
