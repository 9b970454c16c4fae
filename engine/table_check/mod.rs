//! The table check: does each postgres sink's table take what its pipeline writes, before any
//! traffic arrives?
//!
//! A Supabase project moving from the old backend already has `call_logs` and friends, and
//! `CREATE TABLE IF NOT EXISTS` keeps them as they are. Without this check every event would be
//! dead-lettered on its first write (`column "assistant_id" does not exist`) while `/ready` says
//! all is well.
//!
//! ```text
//! what the pipeline writes: the maps its scripts return (keys), `columns:`, `encrypt:`, the key,
//!   `update:`, event_id, row_index, the OAuth row; and, where fixtures are found beside the
//!   pipelines, their rows run in process (replay::rows_written) with real values
//! what the table is:        information_schema (columns, types, NOT NULL, defaults) and
//!                           pg_index (unique indexes)
//!   -> missing table | missing column | value of an incompatible type | NOT NULL column nothing
//!      fills | conflict key without a unique index | encrypted field into a non-text column
//!   -> each fixture row inserted in a transaction that is rolled back (CHECK constraints,
//!      triggers, anything else the table refuses)
//! ```
//!
//! A deployment seldom carries `fixtures/`, so what the pipeline writes comes from the pipeline
//! first: the keys of the maps its transform scripts return (read from the compiled AST,
//! `transform::fields`), the sink's `columns:`, `key`, `update` and `encrypt`, and the row an
//! OAuth connection stores; fixtures, where present, add real values (types, constraints). Only
//! what is proven is an error; what neither source can tell (a NOT NULL column a script that
//! builds its rows at run time may or may not fill) is a warning that says what would tell.
//!
//! The whole check runs on one connection inside one transaction that is rolled back: fixture
//! rows are written to a savepoint and undone, and `engine validate --database-url` and `engine
//! migrate --check` first apply the pending migrations in it ([`pending`]), so the tables are
//! judged as `engine migrate` will leave them.
//!
//! Run by `engine validate --database-url`, by `engine migrate` after it applies migrations, and
//! by `engine serve` / `engine worker` at a production boot (which refuses to start on a
//! problem). Every problem names the table, the column, what was expected and what was found,
//! and what to do; none quotes a value.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tokio_postgres::types::Type;

pub mod memo;
mod pending;
mod types;

use crate::config::sink::PostgresConfig;
use crate::config::transform::Convert;
use crate::sink::postgres::PostgresSink;
use crate::sink::{Batch, SinkError};
use crate::transform::fields::Fields;
use types::{Types, conversions_refused, missing_column};

/// One column as the database has it.
#[derive(Debug, Clone)]
struct Column {
    /// `data_type` as information_schema words it (`uuid`, `text`, `ARRAY`, ...).
    data_type: String,
    not_null: bool,
    /// A default, an identity or a generated column: an insert may leave it out.
    fills_itself: bool,
}

/// What a pipeline is known to write into one sink.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    /// Rows produced for real: the fixtures' (run in process) and the OAuth row a connection
    /// stores. Their values are tried against the column types and the table's constraints.
    pub batches: Vec<Batch>,
    /// The fields the transform steps' scripts return, read without running them.
    pub fields: Fields,
    /// The steps whose rows could not be read whole (for the warning that says so).
    pub unread: Vec<String>,
    /// `batches` holds fixture rows: what they lack, the rows of those events lack.
    pub from_fixtures: bool,
}

/// One finding of the check: an error is proven (the table refuses what the pipeline writes); a
/// warning is what the check cannot tell, and what would let it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub warning: bool,
}

impl Problem {
    fn error(message: String) -> Problem {
        Problem {
            message,
            warning: false,
        }
    }
}

/// Why a table check could not run (what it found are its problems, not errors). Database
/// errors are told in Postgres's words; none carries the URL.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connecting")]
    Connect(#[source] crate::db::DbError),
    #[error("{}", crate::db::describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("reading the migrations")]
    Migrations(#[source] crate::migrate::MigrateError),
    #[error("a row its sink would write")]
    Rows(#[source] crate::sink::SinkError),
    #[error("the fixtures")]
    Fixtures(#[source] crate::replay::ReplayError),
    #[error(
        "cannot start a thread to run the fixtures: free memory or threads, or pass --fixtures to a smaller directory"
    )]
    Thread(#[source] std::io::Error),
    #[error(
        "the fixtures' run stopped before it finished (a case crashed it): run `engine replay` on them to see which"
    )]
    Crashed,
}

/// Check one sink's table. `sink` is the sink built on the database's pool, `written` what the
/// pipeline writes into it. Returns the problems, each a sentence; `Err` when the database cannot
/// be asked.
pub async fn check(
    client: &tokio_postgres::Client,
    cfg: &PostgresConfig,
    sink: &PostgresSink,
    written: &Writes,
) -> Result<Vec<Problem>, CheckError> {
    let t = &cfg.table;
    let (schema, table) = match t.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, t.clone()),
    };
    let found = columns(client, schema.as_deref(), &table).await?;
    if found.is_empty() {
        return Ok(vec![Problem::error(format!(
            "table `{t}` does not exist; run `engine migrate`, or write a migration that creates it"
        ))]);
    }
    let mut problems = Vec::new();
    let key = sink.key();

    let values = samples(sink, written)?;
    // Proven written: what a fixture's row carried, what a script's returned map names, and what
    // the sink's own configuration names.
    let column_of = |field: &String| cfg.columns.column(field).to_string();
    let mut needed: BTreeSet<String> = values.keys().cloned().collect();
    needed.extend(written.fields.known.iter().map(column_of));
    needed.extend(["event_id".to_string(), "row_index".to_string()]);
    needed.extend(key.iter().cloned());
    needed.extend(cfg.update.iter().cloned());
    needed.extend(cfg.columns.targets().map(str::to_string));
    needed.extend(cfg.encrypt.iter().map(column_of));
    // The columns a map step converts into (`as:`), by column.
    let converts: BTreeMap<String, Convert> = written
        .fields
        .converts
        .iter()
        .map(|(field, to)| (column_of(field), *to))
        .collect();
    // Whether `needed` is all the rows can carry: every script's rows were read whole, a
    // `columns:` list names the fields, or a fixture's rows show what the others lack.
    let whole = written.fields.complete || cfg.columns.is_list() || written.from_fixtures;

    let types = Types {
        converts: &converts,
        values: &values,
    };
    problems.extend(
        needed
            .iter()
            .filter(|c| !found.contains_key(*c))
            .map(|c| missing_column(t, cfg, c, &types)),
    );

    problems.extend(conversions_refused(t, cfg, &converts, &found));

    for (c, samples) in &values {
        let Some(col) = found.get(c) else { continue };
        for (from, value) in samples.iter().filter(|(_, v)| !v.is_null()) {
            if let Some(why) = sink.refuses(client, c, value).await {
                problems.push(Problem::error(format!(
                    "table `{t}`, column `{c}`: expected a column that takes {} ({from} writes one), found type {}: {why}; change the column's type with a migration, or convert the value in the transform",
                    crate::schema::value_kind(value),
                    col.data_type
                )));
                break;
            }
        }
    }

    problems.extend(not_null_unfilled(t, &found, &needed, whole, written));

    for field in &cfg.encrypt {
        let column = cfg.columns.column(field);
        match found.get(column).map(|c| c.data_type.as_str()) {
            Some("text" | "character varying") | None => {}
            Some(other) => problems.push(Problem::error(format!(
                "table `{t}`, column `{column}`: expected text (field `{field}` is stored encrypted), found type {other}; change the column to text with a migration"
            ))),
        }
    }

    if key.iter().all(|k| found.contains_key(k))
        && !has_unique_index(client, schema.as_deref(), &table, key).await?
    {
        problems.push(Problem::error(format!(
            "table `{t}`: expected a unique index on ({k}) for the sink's conflict key, found none; add one with a migration (`CREATE UNIQUE INDEX ON {t} ({k});`), or change the sink's `key:`",
            k = key.join(", ")
        )));
    }

    // What the catalog cannot tell (CHECK constraints, triggers, a value too long): each fixture
    // row written for real, and rolled back. Only once the shape is right, so one cause is not
    // reported twice.
    if problems.iter().all(|p| p.warning) {
        problems.extend(rows_refused(client, sink, t, written).await?);
    }
    Ok(problems)
}

/// Every column the pipeline writes, with up to 8 sample values each and the event that wrote
/// it (mapped and encrypted as the sink would store them).
fn samples(
    sink: &PostgresSink,
    written: &Writes,
) -> Result<BTreeMap<String, Vec<(String, Value)>>, CheckError> {
    let mut values: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for batch in &written.batches {
        let (rows, _) = sink
            .rows(std::slice::from_ref(batch))
            .map_err(CheckError::Rows)?;
        for row in rows {
            let Value::Object(fields) = row else { continue };
            for (column, value) in fields {
                let samples = values.entry(column).or_default();
                if samples.len() < 8 && !samples.iter().any(|(_, v)| v == &value) {
                    samples.push((batch.event_id.clone(), value));
                }
            }
        }
    }
    Ok(values)
}

/// NOT NULL columns without a default that the pipeline never writes: errors when `needed` is
/// all the rows can carry (`whole`), else one warning naming what would tell.
fn not_null_unfilled(
    t: &str,
    found: &BTreeMap<String, Column>,
    needed: &BTreeSet<String>,
    whole: bool,
    written: &Writes,
) -> Vec<Problem> {
    let unfilled: Vec<&String> = found
        .iter()
        .filter(|(c, col)| col.not_null && !col.fills_itself && !needed.contains(*c))
        .map(|(c, _)| c)
        .collect();
    if whole {
        return unfilled
            .into_iter()
            .map(|c| Problem::error(format!(
                "table `{t}`, column `{c}`: NOT NULL without a default, and the pipeline never writes it; give it a default or drop NOT NULL with a migration, or write it from the transform"
            )))
            .collect();
    }
    if unfilled.is_empty() {
        return Vec::new();
    }
    let list = unfilled
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![Problem {
        message: format!(
            "table `{t}`: cannot tell whether the pipeline fills NOT NULL column{s} {list}: the rows of {steps} are built at run time, not returned as a map literal; add a fixture whose event reaches this sink, or list the fields the rows carry in the sink's `columns:` (e.g. `columns: [{example}]`)",
            s = if unfilled.len() == 1 { "" } else { "s" },
            steps = written.unread.join(", "),
            example = needed
                .iter()
                .filter(|c| *c != "event_id" && *c != "row_index")
                .chain(unfilled.iter().copied())
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        ),
        warning: true,
    }]
}

/// Each written row tried for real in a transaction rolled back: the first refusal of each
/// batch, said with the event it came from.
async fn rows_refused(
    client: &tokio_postgres::Client,
    sink: &PostgresSink,
    t: &str,
    written: &Writes,
) -> Result<Vec<Problem>, CheckError> {
    let mut problems = Vec::new();
    for batch in &written.batches {
        for row in &batch.rows {
            let one = Batch {
                rows: vec![row.clone()],
                ..batch.clone()
            };
            match sink.trial(client, std::slice::from_ref(&one)).await {
                Ok(()) => {}
                Err(e @ SinkError::Retry(_)) => return Err(CheckError::Rows(e)),
                Err(SinkError::Permanent(e)) => {
                    let e = crate::diagnostics::chain(&e);
                    problems.push(Problem::error(format!(
                        "table `{t}`: a row from {} is refused: {}; fix the table with a migration, or the transform",
                        batch.event_id,
                        e.strip_prefix(&format!("{t}: ")).unwrap_or(&e)
                    )));
                    break;
                }
            }
        }
    }
    Ok(problems)
}

/// Whether a passed check is remembered in the database ([`memo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memo {
    /// Check, remember nothing (`engine validate`).
    Off,
    /// Check, and remember a pass (`engine migrate`).
    Record,
    /// Take a remembered pass of the same fingerprint; otherwise check and remember (a boot).
    Reuse,
}

/// What a check looks at besides the pipelines and the database.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions<'a> {
    /// Where the pipelines' fixtures are (optional: what the scripts and the configuration say
    /// the pipeline writes is checked without them, and what neither can tell is a warning).
    pub fixtures: &'a [std::path::PathBuf],
    pub memo: Memo,
    /// The migrations directory: the tables are judged as they will be once its pending
    /// migrations are applied ([`pending`]); `None` judges them as they are (a boot).
    pub migrations: Option<&'a std::path::Path>,
}

/// Every postgres sink of `project` checked against the database at `url`, each problem located
/// at the sink's `table` in its pipeline file. The whole check runs in one transaction that is
/// rolled back: pending migrations tried in it, fixture rows written in it, nothing kept.
pub async fn check_project(
    project: &crate::config::Project,
    url: &str,
    options: &CheckOptions<'_>,
) -> Result<Vec<crate::diagnostics::Diagnostic>, CheckError> {
    let mut client = crate::db::connect(url).await.map_err(CheckError::Connect)?;
    let pending = match options.migrations {
        Some(dir) if dir.is_dir() => crate::migrate::pending(&mut client, dir)
            .await
            .map_err(CheckError::Migrations)?,
        _ => Vec::new(),
    };
    // a pass judged after pending migrations is not the tables' as they are: not remembered
    let memo = if pending.is_empty() {
        options.memo
    } else {
        Memo::Off
    };
    let fixtures = options.fixtures;
    let fingerprint = match memo {
        Memo::Off => None,
        // A fingerprint that cannot be taken only means the whole check runs.
        Memo::Record | Memo::Reuse => memo::fingerprint(&client, project, fixtures)
            .await
            .inspect_err(
                |e| tracing::debug!(error = %crate::db::describe(e), "table check: no fingerprint"),
            )
            .ok(),
    };
    if let (Memo::Reuse, Some(f)) = (memo, &fingerprint)
        && memo::passed(&client, f).await
    {
        tracing::debug!(fingerprint = %f, "table check: passed before with these pipelines, fixtures and tables");
        return Ok(Vec::new());
    }
    let written = fixture_rows(project, fixtures).await?;
    // The sinks are built on a pool the check never takes from: every statement goes through
    // `client`, inside the one transaction.
    let pool = crate::db::pool(url, 1).map_err(CheckError::Connect)?;
    client.batch_execute("BEGIN").await?;
    let dir = options.migrations.unwrap_or(std::path::Path::new("."));
    let judged = pending::judge(&pending, dir, &client, || {
        stage(project, &pool, &client, &written)
    })
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    let found = judged?;
    if let Some(f) = &fingerprint
        && found.is_empty()
    {
        memo::remember(&client, f).await;
    }
    Ok(found)
}

/// The rows each pipeline's fixtures write, per pipeline and sink (none without fixtures).
///
/// The fixtures' own requests (a revoked grant, a Calendar 503, a 429...) are not this process's
/// traffic, and nothing of a check may read like an event in its log. So they run on a runtime of
/// their own, in a thread of their own, where every thread (workers, blocking script threads)
/// has the no-op subscriber as its default: `with_subscriber` alone would only cover this
/// future's own polls, not the tasks and blocking calls it starts.
async fn fixture_rows(
    project: &crate::config::Project,
    fixtures: &[std::path::PathBuf],
) -> Result<crate::replay::Written, CheckError> {
    if !fixtures.iter().any(|f| f.exists()) {
        return Ok(Default::default());
    }
    let dir = project.dir.clone();
    let fixtures = fixtures.to_vec();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let quiet = || tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
    std::thread::Builder::new()
        .name("table-check-fixtures".into())
        .spawn(move || {
            let _quiet = quiet();
            let written = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                // the guard lives as long as the thread: forgetting it keeps the thread quiet
                .on_thread_start(move || std::mem::forget(quiet()))
                .build()
                .map_err(CheckError::Thread)
                .and_then(|rt| {
                    rt.block_on(crate::replay::rows_written(&dir, &fixtures))
                        .map_err(CheckError::Fixtures)
                });
            let _ = tx.send(written);
        })
        .map_err(CheckError::Thread)?;
    rx.await.map_err(|_| CheckError::Crashed)?
}

/// The problems of the tables as they are at this point of the transaction.
async fn stage(
    project: &crate::config::Project,
    pool: &deadpool_postgres::Pool,
    client: &tokio_postgres::Client,
    written: &crate::replay::Written,
) -> Result<Vec<crate::diagnostics::Diagnostic>, CheckError> {
    let mut found = archive_table(project, client).await?;
    found.extend(check_sinks(project, pool, client, written).await?);
    Ok(found)
}

/// The event archive's table, when a queued pipeline archives: without it every batch's
/// outcomes fail to be recorded and the queue holds them (docs/events.md).
async fn archive_table(
    project: &crate::config::Project,
    client: &tokio_postgres::Client,
) -> Result<Vec<crate::diagnostics::Diagnostic>, CheckError> {
    let Some(p) = project
        .pipelines
        .iter()
        .find(|p| !p.config.transform.is_empty() && p.config.archive.kept().is_some())
    else {
        return Ok(Vec::new());
    };
    let there = client
        .query_typed("SELECT to_regclass('engine_events') IS NOT NULL", &[])
        .await?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    if there {
        return Ok(Vec::new());
    }
    // at the `archive` section, or the file's start when the default applies
    Ok(vec![crate::diagnostics::Diagnostic::new(
        &p.file,
        p.doc.value_pos("/archive"),
        "/archive",
        "the event archive's table `engine_events` is missing from the database; run `engine migrate` (migrations/V7__event_archive.sql), or set `archive: off` on every pipeline",
    )])
}

async fn check_sinks(
    project: &crate::config::Project,
    pool: &deadpool_postgres::Pool,
    client: &tokio_postgres::Client,
    written: &crate::replay::Written,
) -> Result<Vec<crate::diagnostics::Diagnostic>, CheckError> {
    // Without ENCRYPTION_KEY (validate in CI) encrypted fields are tried with a throwaway key:
    // what is checked is the table's shape, and ciphertext is text whatever the key.
    let keyring = project
        .ops
        .keyring()
        .and_then(Result::ok)
        .or_else(|| crate::crypto::Keyring::new(&"00".repeat(32), &[]).ok());
    let mut out = Vec::new();
    for p in &project.pipelines {
        // What the scripts return is read from their compiled AST. A project that loaded has
        // compiling scripts; should one not compile, its rows are unknown, never "none".
        let program = crate::transform::Program::compile(&p.config, &p.file, &project.dir);
        for (name, sink) in &p.config.sinks {
            let crate::config::sink::SinkConfig::Postgres(cfg) = sink else {
                continue;
            };
            let pointer = format!("/sinks/{}/postgres/table", crate::yaml::escape_token(name));
            let pos = p.doc.value_pos(&pointer);
            let at = |message: String| {
                crate::diagnostics::Diagnostic::new(&p.file, pos, &pointer, message)
            };
            let sink = match PostgresSink::new(cfg, pool.clone(), keyring.clone()) {
                Ok(s) => s,
                Err(e) => {
                    out.push(at(e.to_string()));
                    continue;
                }
            };
            let batches: Vec<Batch> = written
                .get(&p.config.name)
                .and_then(|s| s.get(name))
                .cloned()
                .unwrap_or_default();
            let (fields, unread) = match &program {
                // no step routes to this sink: its scripts write nothing to it
                Ok(prog) => prog
                    .fields(name)
                    .unwrap_or_else(|| (Fields::none(), Vec::new())),
                Err(_) => (
                    Fields::default(),
                    vec!["the pipeline's transform (its scripts did not compile)".to_string()],
                ),
            };
            let mut writes = Writes {
                from_fixtures: !batches.is_empty(),
                batches,
                fields,
                unread,
            };
            if p.config.oauth.as_ref().is_some_and(|o| &o.sink == name) {
                writes
                    .batches
                    .push(crate::oauth::example_batch(&p.config.name, name));
            }
            for problem in check(client, cfg, &sink, &writes).await? {
                let d = at(problem.message);
                out.push(if problem.warning { d.warning() } else { d });
            }
        }
    }
    Ok(out)
}

/// The fixtures the table check reads by default: `fixtures/` beside the pipelines directory.
pub fn default_fixtures(pipelines: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = pipelines
        .canonicalize()
        .unwrap_or_else(|_| pipelines.to_path_buf());
    dir.parent()
        .map(|p| vec![p.join("fixtures")])
        .unwrap_or_default()
}

/// The migrations `engine validate --database-url` tries first: `migrations/` beside the
/// pipelines directory, when there is one.
pub fn default_migrations(pipelines: &std::path::Path) -> Option<std::path::PathBuf> {
    let dir = pipelines
        .canonicalize()
        .unwrap_or_else(|_| pipelines.to_path_buf());
    Some(dir.parent()?.join("migrations")).filter(|m| m.is_dir())
}

async fn columns(
    client: &tokio_postgres::Client,
    schema: Option<&str>,
    table: &str,
) -> Result<BTreeMap<String, Column>, CheckError> {
    let rows = client
        .query_typed(
            "SELECT column_name::text, data_type::text, is_nullable = 'NO', \
             (column_default IS NOT NULL OR is_identity = 'YES' OR is_generated <> 'NEVER') \
             FROM information_schema.columns \
             WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2",
            &[(&schema, Type::TEXT), (&table, Type::TEXT)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Column {
                    data_type: r.get(1),
                    not_null: r.get(2),
                    fills_itself: r.get(3),
                },
            )
        })
        .collect())
}

async fn has_unique_index(
    client: &tokio_postgres::Client,
    schema: Option<&str>,
    table: &str,
    key: &[String],
) -> Result<bool, CheckError> {
    let mut sorted = key.to_vec();
    sorted.sort();
    let row = client
        .query_typed(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE t.relname = $2 AND n.nspname = COALESCE($1, current_schema()) AND i.indisunique \
             AND i.indpred IS NULL \
             AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) FROM pg_attribute a \
                  WHERE a.attrelid = t.oid AND a.attnum = ANY(i.indkey)) = $3::text[])",
            &[
                (&schema, Type::TEXT),
                (&table, Type::TEXT),
                (&sorted, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(row.first().is_some_and(|r| r.get(0)))
}
