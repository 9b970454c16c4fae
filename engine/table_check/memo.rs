//! A passed table check, remembered in the database, so that a production boot whose pipelines,
//! fixtures and tables are what `engine migrate` (the pre-deploy step) just checked spends one
//! catalog query instead of replaying every fixture again.
//!
//! ```text
//! fingerprint = sha256( engine build, every file under the pipelines directory and the fixture
//!                       directories, the postgres sinks as configured (after ${VAR}),
//!                       the sink tables as the catalog has them now: columns, types, NOT NULL,
//!                       defaults, indexes, constraints, triggers )
//! boot:    fingerprint in engine_table_checks? -> take traffic
//!          otherwise the whole check; passed with nothing to report -> remember it
//! migrate: the whole check; passed with nothing to report -> remember it
//! ```
//!
//! A table altered by hand changes the catalog part, so a drifted table is checked again (and
//! refuses the boot) however recently the check passed. No value of a secret goes into the
//! fingerprint: files are read as they are (`${VAR}` unexpanded) and the sinks' configuration
//! names tables and columns only. Without the `engine_table_checks` table (migration V5 not
//! applied) nothing is remembered and every boot runs the whole check.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;

use crate::config::Project;

/// Bumped whenever what the check looks at changes, so an older pass is not taken for a newer.
const CHECK_FORMAT: u32 = 2;

/// How many passes are kept (several versions of a deploy may run against one database).
const KEPT: i64 = 32;

/// The fingerprint of what a check of `project` against this database would look at.
pub async fn fingerprint(
    client: &tokio_postgres::Client,
    project: &Project,
    fixtures: &[PathBuf],
) -> Result<String, tokio_postgres::Error> {
    let mut h = Sha256::new();
    h.update(format!(
        "table-check {CHECK_FORMAT} {}\n",
        env!("CARGO_PKG_VERSION")
    ));
    // The same version number can be two builds (a fix deployed without a release): the
    // executable's size and modification time tell them apart.
    if let Some(meta) = std::env::current_exe()
        .ok()
        .and_then(|e| std::fs::metadata(e).ok())
    {
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(format!("exe {} {modified}\n", meta.len()));
    }
    for dir in std::iter::once(project.dir.as_path()).chain(fixtures.iter().map(PathBuf::as_path)) {
        hash_tree(&mut h, dir);
    }
    let mut tables = Vec::new();
    for p in &project.pipelines {
        for (name, sink) in &p.config.sinks {
            if let crate::config::sink::SinkConfig::Postgres(cfg) = sink {
                h.update(format!("sink {} {name} ", p.config.name));
                h.update(serde_json::to_vec(cfg).unwrap_or_default());
                h.update(b"\n");
                tables.push(cfg.table.clone());
            }
        }
    }
    for row in client
        .query_typed(CATALOG, &[(&tables, Type::TEXT_ARRAY)])
        .await?
    {
        let text: Option<String> = row.get(0);
        h.update(text.unwrap_or_else(|| "missing".into()));
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether a check with this fingerprint passed (false when nothing is remembered here).
pub async fn passed(client: &tokio_postgres::Client, fingerprint: &str) -> bool {
    client
        .query_typed(
            "SELECT 1 FROM engine_table_checks WHERE fingerprint = $1",
            &[(&fingerprint, Type::TEXT)],
        )
        .await
        .is_ok_and(|rows| !rows.is_empty())
}

/// Remember a passed check; the oldest passes beyond [`KEPT`] are forgotten. A database without
/// the table (or a read-only role) remembers nothing, which only costs the next boot the whole
/// check.
pub async fn remember(client: &tokio_postgres::Client, fingerprint: &str) {
    let result = client
        .execute_typed(
            "WITH kept AS (INSERT INTO engine_table_checks (fingerprint) VALUES ($1) \
             ON CONFLICT (fingerprint) DO UPDATE SET checked_at = now() RETURNING fingerprint) \
             DELETE FROM engine_table_checks WHERE fingerprint NOT IN (SELECT fingerprint FROM kept) \
             AND fingerprint NOT IN (SELECT fingerprint FROM engine_table_checks \
                                     ORDER BY checked_at DESC LIMIT $2)",
            &[(&fingerprint, Type::TEXT), (&(KEPT - 1), Type::INT8)],
        )
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %crate::db::describe(&e), "table check not remembered");
    }
}

/// One line per sink table, in the order given: what the check reads of it (NULL: no table).
/// Unqualified names are looked up in `current_schema()`, as the check does.
const CATALOG: &str = "\
SELECT CASE WHEN c.oid IS NULL THEN NULL ELSE concat_ws(' | ', t.name, \
  (SELECT string_agg(format('%s %s %s %s %s%s', a.attname, format_type(a.atttypid, a.atttypmod), \
          a.attnotnull, a.atthasdef, a.attidentity, a.attgenerated), ', ' ORDER BY a.attnum) \
     FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
  (SELECT string_agg(pg_get_indexdef(i.indexrelid) || coalesce(pg_get_expr(i.indpred, i.indrelid), ''), \
          '; ' ORDER BY 1) FROM pg_index i WHERE i.indrelid = c.oid), \
  (SELECT string_agg(k.conname || ' ' || pg_get_constraintdef(k.oid), '; ' ORDER BY 1) \
     FROM pg_constraint k WHERE k.conrelid = c.oid), \
  (SELECT string_agg(pg_get_triggerdef(g.oid) || ' ' || g.tgenabled::text, '; ' ORDER BY 1) \
     FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal)) END \
FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n) \
LEFT JOIN pg_class c ON c.oid = to_regclass(CASE WHEN strpos(t.name, '.') > 0 \
  THEN format('%I.%I', split_part(t.name, '.', 1), split_part(t.name, '.', 2)) \
  ELSE format('%I.%I', current_schema(), t.name) END) \
ORDER BY t.n";

/// Every file below `dir` (sorted, so the order is the same on every machine), path and bytes.
fn hash_tree(h: &mut Sha256, dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                // a linked file is hashed as what it points to (a script shared by symlink must
                // change the fingerprint when it changes); linked directories are not followed,
                // so a link loop cannot stall a boot
                Ok(t) if t.is_file() || (t.is_symlink() && path.is_file()) => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(&f);
        h.update(format!("file {}\n", rel.display()));
        h.update(std::fs::read(&f).unwrap_or_default());
    }
}
