//! Sinks: where the worker writes a pipeline's rows.
//!
//! Built once from the `sinks` section ([`build`]): `postgres` (a table, through DATABASE_URL),
//! `http` (JSON to a URL), `file` and `stdout` (JSON lines). Without DATABASE_URL outside production, a `postgres` sink
//! writes JSON lines to `<data_dir>/<table>.jsonl` instead (announced at boot), so the engine runs with
//! no database at all in development. `engine replay` replaces every sink with a [`capture`] one.

pub mod capture;
pub mod http;
pub mod jsonl;
pub mod postgres;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::sink::SinkConfig;

/// Rows one event produced for one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub event_id: String,
    pub pipeline: String,
    pub sink: String,
    pub step: String,
    pub rows: Vec<serde_json::Value>,
}

/// Why a sink could not write: whether trying again can help, and why in words a dead letter
/// and a log line show (`diagnostics::chain` adds the error underneath).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// Try again later: connection lost, timeout, serialization failure.
    #[error(transparent)]
    Retry(WriteFailure),
    /// Retrying cannot help: constraint violation, a value that does not fit its column.
    #[error(transparent)]
    Permanent(WriteFailure),
}

impl SinkError {
    /// A failure that may pass later.
    pub fn retry(why: impl Into<String>) -> SinkError {
        SinkError::Retry(WriteFailure {
            why: why.into(),
            cause: None,
        })
    }

    /// A failure no retry can help.
    pub fn permanent(why: impl Into<String>) -> SinkError {
        SinkError::Permanent(WriteFailure {
            why: why.into(),
            cause: None,
        })
    }

    /// The same failure, caused by the library error `cause` (kept as its source).
    pub fn caused_by(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> SinkError {
        let (SinkError::Retry(f) | SinkError::Permanent(f)) = &mut self;
        f.cause = Some(Arc::new(cause));
        self
    }
}

/// What went wrong in a write: the sink's own words and, where a library said more, its error.
/// A cause is kept only where its text cannot hold row values or a URL's token (Postgres's data
/// errors quote the value; the sinks cut it and keep no cause).
#[derive(Debug, Clone)]
pub struct WriteFailure {
    why: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl std::error::Error for WriteFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// Why a sink could not be built from its configuration (at boot, before any write). Header
/// values are never repeated (they may hold secrets).
#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    #[error("`{0}` is not a table name")]
    BadTable(String),
    #[error("sink for `{0}` encrypts fields: set ENCRYPTION_KEY")]
    NoEncryptionKey(String),
    #[error("`{0}` is not a header name")]
    BadHeaderName(String),
    #[error("header `{0}` has a value that cannot be sent")]
    BadHeaderValue(String),
    #[error("the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("sink `{name}`")]
    Named {
        name: String,
        #[source]
        source: Box<SinkBuildError>,
    },
}

/// The future a sink returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Where rows go. Writing the same batch twice must leave the same result as writing it once
/// (rows keyed by the event id): the queue delivers at least once.
pub trait Sink: Send + Sync {
    fn write<'a>(&'a self, batch: &'a Batch) -> SinkFuture<'a>;

    /// Whether [`Sink::write_many`] writes several events at once (else the worker writes them one
    /// by one).
    fn batches(&self) -> bool {
        false
    }

    /// Whether writing an event's rows again leaves the same rows (keyed upserts: Postgres), so
    /// a replay need not know what it wrote before; append sinks (files, stdout, HTTP) are not.
    fn idempotent(&self) -> bool {
        false
    }

    /// Write the rows of several events together, all or nothing.
    fn write_many<'a>(&'a self, batches: &'a [Batch]) -> SinkFuture<'a> {
        Box::pin(async move {
            for b in batches {
                self.write(b).await?;
            }
            Ok(())
        })
    }
}

/// A postgres sink's settings for a replay: `on_conflict: nothing` becomes an update of every
/// column outside the key.
fn overwriting(
    p: &crate::config::sink::PostgresConfig,
    replay: bool,
) -> crate::config::sink::PostgresConfig {
    let mut p = p.clone();
    if replay && p.on_conflict == crate::config::sink::OnConflict::Nothing {
        p.on_conflict = crate::config::sink::OnConflict::Update;
        p.update.clear();
    }
    p
}

/// Where a running engine's sinks write.
#[derive(Clone, Default)]
pub enum SinkTarget {
    /// The sinks the pipelines configure.
    #[default]
    Configured,
    /// Every sink captured in memory (`engine replay`).
    Capture(Arc<capture::Captured>),
}

/// Build a pipeline's sinks. `pool` is the Postgres pool when DATABASE_URL is set; without it,
/// postgres sinks write JSON lines under `data_dir`. For a `replay` of archived events a
/// postgres sink with `on_conflict: nothing` overwrites the rows an event wrote before (keyed by
/// the same event id and row index), so a fixed pipeline corrects them.
pub fn build(
    sinks: &std::collections::BTreeMap<String, SinkConfig>,
    pool: Option<&deadpool_postgres::Pool>,
    keyring: Option<&crate::crypto::Keyring>,
    data_dir: &str,
    statement_timeout: std::time::Duration,
    replay: bool,
) -> Result<HashMap<String, Arc<dyn Sink>>, SinkBuildError> {
    let mut out: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    for (name, cfg) in sinks {
        let sink: Arc<dyn Sink> = match cfg {
            SinkConfig::Postgres(p) => match pool {
                Some(pool) => Arc::new(
                    postgres::PostgresSink::new(
                        &overwriting(p, replay),
                        pool.clone(),
                        keyring.cloned(),
                    )?
                    .with_statement_timeout(statement_timeout),
                ),
                None => Arc::new(jsonl::JsonLines::file(
                    std::path::Path::new(data_dir).join(format!("{}.jsonl", p.table)),
                )),
            },
            SinkConfig::Http(h) => {
                Arc::new(http::HttpSink::new(h).map_err(|e| SinkBuildError::Named {
                    name: name.clone(),
                    source: Box::new(e),
                })?)
            }
            SinkConfig::File(f) => Arc::new(jsonl::JsonLines::file(f.path.clone().into())),
            SinkConfig::Stdout(_) => Arc::new(jsonl::JsonLines::stdout()),
        };
        out.insert(name.clone(), sink);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write's failure says why in the sink's words and keeps the library's error under it:
    /// the dead letter's reason (`diagnostics::chain`) has both, each once.
    #[test]
    fn write_failures_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device");
        let e = SinkError::retry("cannot write calls.jsonl").caused_by(io);
        assert!(matches!(e, SinkError::Retry(_)));
        assert_eq!(e.to_string(), "cannot write calls.jsonl");
        assert_eq!(
            crate::diagnostics::chain(&e),
            "cannot write calls.jsonl: no space left on device"
        );
        let e = SinkError::permanent("a row is not a map");
        assert!(matches!(e, SinkError::Permanent(_)));
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(crate::diagnostics::chain(&e), "a row is not a map");
    }
}
