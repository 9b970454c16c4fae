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
pub mod table_check;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::sink::Sink as SinkConfig;
use crate::worker::Sink;

/// Where a running engine's sinks write.
#[derive(Clone, Default)]
pub enum Target {
    /// The sinks the pipelines configure.
    #[default]
    Configured,
    /// Every sink captured in memory (`engine replay`).
    Capture(Arc<capture::Captured>),
}

/// Build a pipeline's sinks. `pool` is the Postgres pool when DATABASE_URL is set; without it,
/// postgres sinks write JSON lines under `data_dir`.
pub fn build(
    sinks: &std::collections::BTreeMap<String, SinkConfig>,
    pool: Option<&deadpool_postgres::Pool>,
    keyring: Option<&crate::crypto::Keyring>,
    data_dir: &str,
    statement_timeout: std::time::Duration,
) -> Result<HashMap<String, Arc<dyn Sink>>, String> {
    let mut out: HashMap<String, Arc<dyn Sink>> = HashMap::new();
    for (name, cfg) in sinks {
        let sink: Arc<dyn Sink> = match cfg {
            SinkConfig::Postgres(p) => match pool {
                Some(pool) => Arc::new(
                    postgres::PostgresSink::new(p, pool.clone(), keyring.cloned())?
                        .with_statement_timeout(statement_timeout),
                ),
                None => Arc::new(jsonl::JsonLines::file(
                    std::path::Path::new(data_dir).join(format!("{}.jsonl", p.table)),
                )),
            },
            SinkConfig::Http(h) => {
                Arc::new(http::HttpSink::new(h).map_err(|e| format!("sink `{name}`: {e}"))?)
            }
            SinkConfig::File(f) => Arc::new(jsonl::JsonLines::file(f.path.clone().into())),
            SinkConfig::Stdout(_) => Arc::new(jsonl::JsonLines::stdout()),
        };
        out.insert(name.clone(), sink);
    }
    Ok(out)
}
