//! Schema migrations: the SQL files in `migrations/` (`V<n>__<name>.sql`), applied in order, each
//! in its own transaction, and recorded in refinery's history table (`refinery_schema_history`).
//!
//! Several instances may start at once (a deploy with two web services and a worker): the run
//! holds a Postgres advisory lock, so one applies and the others wait, then find nothing to do.

use std::path::Path;

use tokio_postgres::types::Type;

/// Advisory lock key ("engine" in ASCII).
const LOCK: i64 = 0x656e_6769_6e65;

/// One migration and whether it has been applied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub name: String,
    pub applied_on: Option<String>,
}

/// Why migrations could not be read or applied. Database errors are told in Postgres's words
/// ([`crate::db::describe`]); none carries the URL.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{dir}")]
    Load {
        dir: String,
        #[source]
        source: refinery::Error,
    },
    #[error("connecting")]
    Connect(#[source] crate::db::DbError),
    #[error("{}", crate::db::describe(.0))]
    Database(tokio_postgres::Error),
    #[error("applying")]
    Apply(#[source] refinery::Error),
}

fn load(dir: &Path) -> Result<Vec<refinery::Migration>, MigrateError> {
    refinery::load_sql_migrations(dir).map_err(|source| MigrateError::Load {
        dir: dir.display().to_string(),
        source,
    })
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Migrations applied now (version, name).
    pub applied: Vec<(i64, String)>,
    /// Tables a migration applied now creates `IF NOT EXISTS` but that existed before it ran:
    /// kept exactly as they were, whatever their shape (table, version, name).
    pub left_alone: Vec<(String, i64, String)>,
}

/// The URL migrations connect with: Supabase's transaction pooler (`*.pooler.supabase.com:6543`)
/// cannot hold the session-level migration lock across refinery's transactions, so its session
/// pooler on port 5432 of the same host, with the same credentials, is used instead. Any other
/// URL is used as it is.
pub fn session_url(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut u)
            if u.port() == Some(6543)
                && u.host_str()
                    .is_some_and(|h| h.ends_with(".pooler.supabase.com")) =>
        {
            let _ = u.set_port(Some(5432));
            u.to_string()
        }
        _ => database_url.to_string(),
    }
}

/// Apply the pending migrations.
pub async fn run(database_url: &str, dir: &Path) -> Result<Migrated, MigrateError> {
    let migrations = load(dir)?;
    let mut client = crate::db::connect(&session_url(database_url))
        .await
        .map_err(MigrateError::Connect)?;
    client
        .execute_typed("SELECT pg_advisory_lock($1)", &[(&LOCK, Type::INT8)])
        .await
        .map_err(MigrateError::Database)?;
    // what existed before is read first; if it cannot be, nothing is applied
    let outcome = match pending_creates(&mut client, &migrations).await {
        Ok(existing) => {
            let pg: &mut tokio_postgres::Client = &mut client;
            let report = refinery::Runner::new(&migrations)
                .set_abort_divergent(true)
                .run_async(pg)
                .await;
            Ok((existing, report))
        }
        Err(e) => Err(e),
    };
    let _ = client
        .execute_typed("SELECT pg_advisory_unlock($1)", &[(&LOCK, Type::INT8)])
        .await;
    let (existing, report) = outcome?;
    let report = report.map_err(MigrateError::Apply)?;
    let applied: Vec<(i64, String)> = report
        .applied_migrations()
        .iter()
        .map(|m| (i64::from(m.version()), m.name().to_string()))
        .collect();
    let left_alone = existing
        .into_iter()
        .filter(|(_, v, _)| applied.iter().any(|(a, _)| a == v))
        .collect();
    Ok(Migrated {
        applied,
        left_alone,
    })
}

/// Tables that the not-yet-applied migrations create `IF NOT EXISTS` and that exist already.
async fn pending_creates(
    client: &mut tokio_postgres::Client,
    migrations: &[refinery::Migration],
) -> Result<Vec<(String, i64, String)>, MigrateError> {
    let applied = refinery::Runner::new(migrations)
        .get_applied_migrations_async(&mut *client)
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in migrations {
        if applied.iter().any(|a| a.version() == m.version()) {
            continue;
        }
        for table in created_if_not_exists(m.sql().unwrap_or_default()) {
            let exists = client
                .query_typed(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[(&table, Type::TEXT)],
                )
                .await
                .map_err(MigrateError::Database)?
                .first()
                .is_some_and(|r| r.get::<_, bool>(0));
            if exists {
                out.push((table, i64::from(m.version()), m.name().to_string()));
            }
        }
    }
    Ok(out)
}

/// The tables a migration's SQL creates with `CREATE TABLE IF NOT EXISTS`.
fn created_if_not_exists(sql: &str) -> Vec<String> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)create\s+table\s+if\s+not\s+exists\s+([A-Za-z_][A-Za-z0-9_.]*)")
            .expect("valid regex")
    });
    RE.captures_iter(sql).map(|c| c[1].to_string()).collect()
}

/// The migrations in `dir` that the database behind `client` has not applied, in order.
pub async fn pending(
    client: &mut tokio_postgres::Client,
    dir: &Path,
) -> Result<Vec<refinery::Migration>, MigrateError> {
    let mut migrations = load(dir)?;
    // no history table yet: every migration is pending
    let applied = refinery::Runner::new(&migrations)
        .get_applied_migrations_async(client)
        .await
        .unwrap_or_default();
    migrations.retain(|m| !applied.iter().any(|a| a.version() == m.version()));
    migrations.sort_by_key(|m| m.version());
    Ok(migrations)
}

/// Whether a migration's SQL ends or opens transactions itself (`COMMIT;`, `BEGIN;`, ...): it
/// cannot be tried inside a transaction that is rolled back.
pub fn controls_transaction(sql: &str) -> bool {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?im)^\s*(commit|rollback|abort|begin|start\s+transaction)(\s+(work|transaction))?\s*;",
        )
        .expect("valid regex")
    });
    RE.is_match(sql)
}

/// Every migration in `dir`, with when it was applied.
pub async fn status(database_url: &str, dir: &Path) -> Result<Vec<MigrationStatus>, MigrateError> {
    let migrations = load(dir)?;
    let mut client = crate::db::connect(&session_url(database_url))
        .await
        .map_err(MigrateError::Connect)?;
    let pg: &mut tokio_postgres::Client = &mut client;
    let applied = refinery::Runner::new(&migrations)
        .get_applied_migrations_async(pg)
        .await
        .unwrap_or_default();
    let mut out: Vec<MigrationStatus> = migrations
        .iter()
        .map(|m| MigrationStatus {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supabase_transaction_pooler_becomes_its_session_pooler() {
        assert_eq!(
            session_url(
                "postgresql://postgres.ref:pw@aws-0-us-west-1.pooler.supabase.com:6543/postgres?sslmode=require"
            ),
            "postgresql://postgres.ref:pw@aws-0-us-west-1.pooler.supabase.com:5432/postgres?sslmode=require"
        );
        for same in [
            "postgresql://postgres:pw@db.ref.supabase.co:5432/postgres",
            "postgres://postgres@127.0.0.1:6543/test",
        ] {
            assert_eq!(session_url(same), same);
        }
    }

    #[test]
    fn a_migration_that_commits_cannot_be_tried() {
        assert!(controls_transaction("ALTER TABLE t ADD c int;\nCOMMIT;\n"));
        assert!(controls_transaction(
            "begin;\nalter table t add c int;\nend;"
        ));
        assert!(controls_transaction("START TRANSACTION;"));
        // a DO block's BEGIN ... END; is PL/pgSQL, not a transaction
        assert!(!controls_transaction(
            "DO $$\nBEGIN\n  PERFORM 1;\nEND;\n$$;\nALTER TABLE t ADD c int;"
        ));
    }

    #[test]
    fn finds_tables_created_if_not_exists() {
        let sql = "CREATE TABLE IF NOT EXISTS call_logs (id int);\ncreate table if not exists public.transcripts(\n x int);\nCREATE TABLE plain (x int);\nCREATE INDEX IF NOT EXISTS i ON call_logs (id);";
        assert_eq!(
            created_if_not_exists(sql),
            ["call_logs", "public.transcripts"]
        );
    }
}
