//! Schema migrations: the SQL files in `migrations/` (`V<n>__<name>.sql`), applied in order, each
//! in its own transaction, and recorded in refinery's history table (`refinery_schema_history`).
//!
//! Several instances may start at once (a deploy with two web services and a worker): the run
//! holds a Postgres advisory lock, so one applies and the others wait, then find nothing to do.

use std::path::Path;

/// Advisory lock key ("engine" in ASCII).
const LOCK: i64 = 0x656e_6769_6e65;

/// One migration and whether it has been applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub version: i64,
    pub name: String,
    pub applied_on: Option<String>,
}

fn load(dir: &Path) -> Result<Vec<refinery::Migration>, String> {
    refinery::load_sql_migrations(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Apply the pending migrations; returns those applied now (version, name).
pub async fn run(database_url: &str, dir: &Path) -> Result<Vec<(i64, String)>, String> {
    let migrations = load(dir)?;
    let mut client = crate::db::connect(database_url).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await
        .map_err(|e| e.to_string())?;
    let pg: &mut tokio_postgres::Client = &mut client;
    let report = refinery::Runner::new(&migrations)
        .set_abort_divergent(true)
        .run_async(pg)
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    let report = report.map_err(|e| e.to_string())?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| (i64::from(m.version()), m.name().to_string()))
        .collect())
}

/// Every migration in `dir`, with when it was applied.
pub async fn status(database_url: &str, dir: &Path) -> Result<Vec<Status>, String> {
    let migrations = load(dir)?;
    let mut client = crate::db::connect(database_url).await?;
    let pg: &mut tokio_postgres::Client = &mut client;
    let applied = refinery::Runner::new(&migrations)
        .get_applied_migrations_async(pg)
        .await
        .unwrap_or_default();
    let mut out: Vec<Status> = migrations
        .iter()
        .map(|m| Status {
            version: i64::from(m.version()),
            name: m.name().to_string(),
            applied_on: applied
                .iter()
                .find(|a| a.version() == m.version())
                .and_then(|a| a.applied_on().map(|t| t.to_string())),
        })
        .collect();
    out.sort_by_key(|s| s.version);
    Ok(out)
}
