//! `engine migrate`: apply `migrations/` (or `--status`, `--check`), then check the sink tables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{Deployment, project, runtime};
use crate::diagnostics::{self, Format};

/// What `engine migrate` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MigrateStep {
    Apply,
    Check,
    Status,
}

pub(super) fn migrate(
    database_url: Option<String>,
    dir: &Path,
    step: MigrateStep,
    fixtures: &[PathBuf],
    target: &Deployment,
) -> ExitCode {
    // The pipelines give DATABASE_URL when --database-url is not passed, and the table check
    // needs them; `--status` with --database-url needs neither, so they are not even read.
    let wanted = database_url.is_none() || step != MigrateStep::Status;
    let loaded = if wanted && target.pipelines.is_dir() {
        Some(project(&target.pipelines, target.env_file.as_deref()))
    } else {
        None
    };
    let url = match (database_url, &loaded) {
        (Some(u), _) => u,
        (None, Some(Ok(p))) => match &p.settings.database_url {
            Some(u) => u.clone(),
            None => {
                eprintln!("engine: no database: pass --database-url or set DATABASE_URL");
                return ExitCode::from(2);
            }
        },
        (None, Some(Err(code))) => return *code,
        (None, None) => {
            eprintln!(
                "engine: {}: not a directory (pass --pipelines, or --database-url)",
                target.pipelines.display()
            );
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(r) => r,
        Err(c) => return c,
    };
    // what comes before the table check: the pending list (--check), or the migrations applied
    // and the tokens resealed
    let ready = match step {
        MigrateStep::Status => return migrate_status(&rt, &url, dir, target.json),
        MigrateStep::Check => print_pending(&rt, &url, dir),
        MigrateStep::Apply => match rt.block_on(crate::migrate::run(&url, dir)) {
            Ok(report) => {
                print_applied(&report);
                match &loaded {
                    Some(Ok(project)) if !reseal_tokens(&rt, project, &url) => {
                        Err(ExitCode::from(1))
                    }
                    _ => Ok(()),
                }
            }
            Err(e) => {
                let e = crate::diagnostics::chain(&e);
                eprintln!("engine: migration failed: {e}");
                Err(ExitCode::from(1))
            }
        },
    };
    if let Err(code) = ready {
        return code;
    }
    migrate_table_check(
        &rt,
        loaded.as_ref(),
        &url,
        (fixtures, dir),
        step,
        &target.pipelines,
    )
}

/// `--check`'s first lines: the migrations not applied yet.
fn print_pending(rt: &tokio::runtime::Runtime, url: &str, dir: &Path) -> Result<(), ExitCode> {
    let list = rt.block_on(crate::migrate::status(url, dir)).map_err(|e| {
        eprintln!("engine: {}", crate::diagnostics::chain(&e));
        ExitCode::from(1)
    })?;
    let pending: Vec<_> = list.iter().filter(|m| m.applied_on.is_none()).collect();
    for m in &pending {
        println!("pending V{} {}", m.version, m.name);
    }
    println!(
        "{} migration{} pending",
        pending.len(),
        if pending.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// What a run applied, and the tables it left as they were.
fn print_applied(report: &crate::migrate::Migrated) {
    for (v, n) in &report.applied {
        println!("applied V{v} {n}");
    }
    println!(
        "{} migration{} applied",
        report.applied.len(),
        if report.applied.len() == 1 { "" } else { "s" }
    );
    for (table, v, n) in &report.left_alone {
        println!(
            "left alone: table `{table}` existed before V{v} {n}, whose CREATE TABLE IF NOT EXISTS keeps an existing table exactly as it is (its columns are checked below)"
        );
    }
}

/// OAuth tokens sealed before they were bound to their row (tenant, provider) are sealed to it
/// (`connection::token::Postgres::reseal_all`); nothing to do without ENCRYPTION_KEY or tokens.
/// False when a token could not be opened with the keyring.
fn reseal_tokens(
    rt: &tokio::runtime::Runtime,
    project: &crate::config::Project,
    url: &str,
) -> bool {
    if !project.pipelines.iter().any(|p| p.config.oauth.is_some()) {
        return true;
    }
    let Some(Ok(keyring)) = project.ops.keyring() else {
        return true;
    };
    let pool = match crate::db::pool(url, 1) {
        Ok(pool) => pool,
        Err(e) => {
            let e = crate::diagnostics::chain(&e);
            eprintln!("engine: oauth_tokens: cannot connect to reseal the tokens: {e}");
            return false;
        }
    };
    let store = crate::connection::token::PostgresTokens { pool, keyring };
    match rt.block_on(store.reseal_all()) {
        Ok((n, failed)) => {
            if n > 0 {
                println!(
                    "resealed the OAuth tokens of {n} row{} to their tenant and provider",
                    if n == 1 { "" } else { "s" }
                );
            }
            for f in &failed {
                eprintln!(
                    "engine: oauth_tokens: {f}: not resealed, left as it was. If it was written under another key, set that key as ENCRYPTION_KEY_PREVIOUS and run `engine migrate` again; a row that opens under no key is not that tenant's: delete it, and the tenant connects again"
                );
            }
            failed.is_empty()
        }
        Err(e) => {
            let e = crate::diagnostics::chain(&e);
            eprintln!(
                "engine: oauth_tokens: cannot reseal the tokens ({e}); the migrations are applied: run `engine migrate` again once the database answers"
            );
            false
        }
    }
}

pub(super) fn migrate_status(
    rt: &tokio::runtime::Runtime,
    url: &str,
    dir: &Path,
    json: bool,
) -> ExitCode {
    match rt.block_on(crate::migrate::status(url, dir)) {
        Ok(list) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&list).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(list) => {
            for m in list {
                println!(
                    "V{:<4} {:<40} {}",
                    m.version,
                    m.name,
                    m.applied_on.as_deref().unwrap_or("pending")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("engine: {}", crate::diagnostics::chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The table check after `migrate`: exit 1 when a sink's table does not take what its pipeline
/// writes, so a pre-deploy step stops the deploy before traffic arrives. A check that could not
/// run never passes: pipelines that did not load exit non-zero with their problems (printed by
/// the loader), and `--check` without a pipelines directory exits 2. The tables are judged as
/// they will be after the pending migrations in `migrations` (with `--check`, all of them).
pub(super) fn migrate_table_check(
    rt: &tokio::runtime::Runtime,
    loaded: Option<&Result<crate::config::Project, ExitCode>>,
    url: &str,
    (fixtures, migrations): (&[PathBuf], &Path),
    step: MigrateStep,
    dir: &Path,
) -> ExitCode {
    let project = match loaded {
        Some(Ok(project)) => project,
        Some(Err(code)) => {
            eprintln!(
                "engine: table check not run: the pipelines in {} did not load (the problems above); fix them and run it again",
                dir.display()
            );
            return *code;
        }
        None if step == MigrateStep::Check => {
            eprintln!(
                "engine: table check not run: {} is not a pipelines directory (pass --pipelines DIR)",
                dir.display()
            );
            return ExitCode::from(2);
        }
        None => {
            println!(
                "table check not run: {} is not a pipelines directory (migrations only; pass --pipelines DIR to check the tables)",
                dir.display()
            );
            return ExitCode::SUCCESS;
        }
    };
    let options = crate::table_check::CheckOptions {
        fixtures,
        memo: crate::table_check::Memo::Record,
        migrations: Some(migrations),
    };
    match rt.block_on(crate::table_check::check_project(project, url, &options)) {
        Ok(problems) => {
            let errors = problems.iter().filter(|d| !d.is_warning()).count();
            eprint!("{}", diagnostics::render(&problems, Format::Text));
            if errors == 0 {
                println!(
                    "tables: every postgres sink's table takes what its pipeline is known to write{}",
                    if step == MigrateStep::Check {
                        " (judged as the pending migrations will leave them)"
                    } else {
                        ""
                    }
                );
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "engine: {errors} table problem{}: the pipelines would dead-letter these events",
                if errors == 1 { "" } else { "s" }
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("engine: table check: {}", crate::diagnostics::chain(&e));
            ExitCode::from(1)
        }
    }
}
